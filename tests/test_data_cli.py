"""`meddet data synth`, `meddet data preview` and `meddet data import` (help; the import
itself is tested in test_data_import.py) through the CLI entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from meddet.cli import main

SYNTH = ["data", "synth"]
FAST = ["--num-train", "3", "--num-val", "1", "--num-test", "1", "--size", "128", "--seed", "7"]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_synth_writes_the_layout_and_a_json_summary(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*SYNTH, str(out), *FAST, "--json", str(tmp_path / "s.json")]) == 0
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        assert len(list((out / "images" / split).glob("*.png"))) == n
        assert (out / "annotations" / f"{split}.json").is_file()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["splits"]["train"]["images"] == 3 and summary["size"] == 128
    assert "protrusion" in capsys.readouterr().out


@pytest.mark.parametrize("flags, needle", [
    (["--size", "100"], "--size"),
    (["--size", "96"], "--size"),
    (["--num-train", "-1"], "--num-train"),
    (["--num-test", "-2"], "--num-test"),
    (["--protrusion-rate", "1.2"], "--protrusion-rate"),
    (["--snr-range", "8"], "--snr-range"),
    (["--snr-range", "40,8"], "--snr-range"),
    (["--bit-depth", "12"], "--bit-depth"),
])
def test_synth_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, needle):
    out = tmp_path / "ds"
    assert main([*SYNTH, str(out), *FAST, *flags]) == 2
    assert needle in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_non_empty_out_without_overwrite(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    assert main([*SYNTH, str(tmp_path), *FAST]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_synth_overwrite_replaces_a_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*SYNTH, str(out), *FAST]) == 0
    assert main([*SYNTH, str(out), *FAST, "--num-train", "1"]) == 2
    capsys.readouterr()
    assert main([*SYNTH, str(out), *FAST, "--num-train", "1", "--overwrite"]) == 0
    assert len(list((out / "images" / "train").glob("*.png"))) == 1


def test_preview_draws_boxes(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main([*SYNTH, str(out), *FAST]) == 0
    grid = tmp_path / "grid.png"
    assert main(["data", "preview", str(out), "--split", "train", "--n", "4",
                 "--out", str(grid)]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(grid) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (512, 512, 3)  # 2x2 tiles of 256 px (128 px images enlarged)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)
    green = (rgb[..., 1] > 170) & (rgb[..., 0] < 100) & (rgb[..., 2] < 130)
    assert red.sum() > 50 and green.sum() > 50  # protrusion and non-protrusion boxes are drawn


def test_preview_bad_input_exits_2(tmp_path, capsys):
    assert main(["data", "preview", str(tmp_path / "missing"), "--out", str(tmp_path / "g.png")]) == 2
    assert "does not exist" in _one_error_line(capsys)
    assert main(["data", "preview", str(tmp_path), "--n", "0", "--out", str(tmp_path / "g.png")]) == 2
    assert "--n" in _one_error_line(capsys)
    assert not (tmp_path / "g.png").exists()


def test_data_import_is_listed_with_its_formats(capsys):
    assert main(["data", "--help"]) == 0
    assert "import" in capsys.readouterr().out
    assert main(["data", "import", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--format", "--classes", "--class-map", "--split", "--strict", "--min-area"):
        assert flag in text
