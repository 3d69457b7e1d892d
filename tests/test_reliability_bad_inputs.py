"""Every row of docs/bad-inputs.md, through the CLI.

Each bad input must give exit code 2 and exactly one ``Error: ...`` line on stderr (no
traceback without ``--debug``), and leave no partial outputs behind. Inputs that are not bad
(grey/RGB/RGBA/16-bit/large images, a 4-D NIfTI) must simply work.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import torch
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from meddet.cli import main
from meddet.engine.checkpoint import make_meta, save_checkpoint

PYDICOM_DATA = Path(pydicom.data.__file__).parent / "test_files"
CLASSES = ["protrusion", "non-protrusion"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default run directories (runs/...) land here


@pytest.fixture
def ckpt(random_mbv2_ckpt) -> Path:
    return random_mbv2_ckpt


def fails(argv: list, needle: str, capsys, *, no_outputs: list[Path] = ()) -> str:
    """Run the CLI; check exit 2, one clean error line containing ``needle``, and no outputs."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    assert err.startswith("Error:") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and needle in err, err
    runs = Path("runs")
    left = [p for p in runs.rglob("*") if p.is_file()] if runs.exists() else []
    left += [p for p in no_outputs if p.exists()]
    assert not left, f"partial outputs left behind: {left}"
    return err


def dataset(tiny_dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    return root


def edit_json(root: Path, split: str, fn) -> None:
    path = root / "annotations" / f"{split}.json"
    doc = json.loads(path.read_text())
    fn(doc)  # edits in place
    path.write_text(json.dumps(doc))


def first_image(root: Path, split: str = "test") -> Path:
    doc = json.loads((root / "annotations" / f"{split}.json").read_text())
    return root / "images" / split / doc["images"][0]["file_name"]


def huge_png(path: Path, side: int = 100_000) -> Path:
    """An 8x8 PNG whose header claims ``side x side`` pixels (a decompression bomb)."""
    Image.new("L", (8, 8)).save(path)
    b = bytearray(path.read_bytes())
    b[16:24] = struct.pack(">II", side, side)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(b))
    return path


def set_box(doc, bbox):
    doc["annotations"][0]["bbox"] = bbox


# --------------------------------------------------------------------------- COCO data
# (row id, mutation of the test split, expected text). Evaluated with `--predictions []`, so
# the dataset check runs without a model.
COCO_ROWS = [
    ("malformed-json", lambda r: (r / "annotations/test.json").write_text('{"images": [1, 2,]}'),
     "is not valid JSON (line 1"),
    ("truncated-json", lambda r: (r / "annotations/test.json").write_text(
        (r / "annotations/test.json").read_text()[:300]), "is not valid JSON"),
    ("json-top-level-list", lambda r: (r / "annotations/test.json").write_text("[]"),
     "top level must be a JSON object"),
    ("json-annotations-not-a-list", lambda r: edit_json(
        r, "test", lambda d: d.update(annotations={})), "missing or non-list 'annotations'"),
    ("json-image-without-size", lambda r: edit_json(
        r, "test", lambda d: d["images"][0].pop("width")), "needs positive 'width' and 'height'"),
    ("missing-image-file", lambda r: first_image(r).unlink(), "does not exist; restore it"),
    ("unknown-category-id", lambda r: edit_json(
        r, "test", lambda d: d["annotations"][0].update(category_id=7)),
     "has category_id 7, which is not in 'categories'"),
    ("zero-area-box", lambda r: edit_json(r, "test", lambda d: set_box(d, [10, 10, 0, 5])),
     "non-positive box size"),
    ("negative-box", lambda r: edit_json(r, "test", lambda d: set_box(d, [10, 10, -4, 5])),
     "non-positive box size"),
    ("out-of-image-box", lambda r: edit_json(r, "test", lambda d: set_box(d, [100, 100, 90, 90])),
     "outside the 128x128 image"),
    ("no-annotations-at-all", lambda r: edit_json(r, "test", lambda d: d.update(annotations=[])),
     "has no annotated boxes"),
]


@pytest.mark.parametrize("mutate, needle", [r[1:] for r in COCO_ROWS],
                         ids=[r[0] for r in COCO_ROWS])
def test_coco_annotation_problems(mutate, needle, tiny_dataset, tmp_path, capsys):
    root = dataset(tiny_dataset, tmp_path)
    mutate(root)
    empty = tmp_path / "none.json"
    empty.write_text("[]")
    err = fails(["eval", "--predictions", empty, "--data", root, "--split", "test"], needle,
                capsys)
    assert str(root) in err  # says where


@pytest.mark.parametrize("kind, needle", [
    ("garbage.png", "cannot read image"),
    ("zero-byte.png", "cannot read image"),
    ("bomb.png", "too large to decode safely"),
])
def test_unreadable_dataset_images_stop_eval(kind, needle, tiny_dataset, tmp_path, ckpt, capsys):
    root = dataset(tiny_dataset, tmp_path)
    img = first_image(root)
    if kind == "garbage.png":
        img.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "zero-byte.png":
        img.write_bytes(b"")
    else:
        huge_png(img)
    err = fails(["eval", ckpt, "--data", root, "--split", "test", "--out", tmp_path / "ev"],
                needle, capsys, no_outputs=[tmp_path / "ev"])
    assert img.name in err


def test_training_on_a_dataset_without_boxes_is_refused(tiny_dataset, tmp_path, capsys):
    root = dataset(tiny_dataset, tmp_path)
    edit_json(root, "train", lambda d: d.update(annotations=[]))
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", root, "--img-size", "64"],
          "train.json has no annotated boxes in its 4 images", capsys)


def test_a_broken_train_image_leaves_no_half_made_run(tiny_dataset, tmp_path, capsys):
    root = dataset(tiny_dataset, tmp_path)
    for p in (root / "images" / "train").iterdir():
        p.write_bytes(b"")
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", root, "--img-size", "64",
           "--max-iters", "1", "--out", tmp_path / "run"], "cannot read image", capsys,
          no_outputs=[tmp_path / "run"])


# --------------------------------------------------------------------------- image kinds
def _image(kind: str, path: Path) -> Path:
    rng = np.random.default_rng(0)
    if kind == "grey8":
        Image.fromarray(rng.integers(0, 255, (90, 70), dtype=np.uint8)).save(path)
    elif kind == "rgb":
        Image.fromarray(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(path)
    elif kind == "rgba":
        Image.fromarray(rng.integers(0, 255, (90, 70, 4), dtype=np.uint8)).save(path)
    elif kind == "grey16":
        Image.fromarray(rng.integers(0, 60000, (90, 70), dtype=np.uint16)).save(path)
    elif kind == "large":  # 12 Mpx: resized like any other image
        Image.fromarray(np.full((3000, 4000), 128, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("kind", ["grey8", "rgb", "rgba", "grey16", "large"])
def test_image_kinds_are_read_as_grey(kind, tmp_path):
    from meddet.data.transforms import load_image
    from meddet.inference.readers import Slice, discover_inputs, iter_slices, parse_slices

    path = _image(kind, tmp_path / f"{kind}.png")
    arr = load_image(path)  # the dataset (training / eval) reader
    assert arr.ndim == 2 and arr.dtype == np.float32 and np.isfinite(arr).all()
    (item,) = [i for s in discover_inputs([path]) for i in iter_slices(s, parse_slices("all"))]
    assert isinstance(item, Slice) and item.array.shape == arr.shape  # the predict reader


def test_predict_reads_every_image_kind(ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for kind in ("grey8", "rgb", "rgba", "grey16", "large"):
        _image(kind, folder / f"{kind}.png")
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(folder), "--out", str(out)]) == 0, \
        capsys.readouterr().err
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["summary"]["images"] == 5 and not doc["skipped"]


# --------------------------------------------------------------------------- predict inputs
def _dicom(name: str) -> Path:
    path = PYDICOM_DATA / name
    if not path.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return path


@pytest.mark.parametrize("make, needle", [
    (lambda d: shutil.copy(_dicom("MR_truncated.dcm"), d / "MR_truncated.dcm"), "pixel data"),
    (lambda d: (d / "notes.dcm").write_text("a text file, not DICOM\n" * 10), "not a DICOM file"),
    (lambda d: (d / "zero.png").write_bytes(b""), "cannot read image"),
    (lambda d: huge_png(d / "bomb.png"), "too large to decode safely"),
], ids=["truncated-dicom", "text-file-named-dcm", "zero-byte-png", "decompression-bomb"])
def test_predict_on_only_unreadable_inputs(make, needle, ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    make(folder)
    (src,) = list(folder.iterdir())
    err = fails(["predict", ckpt, src, "--out", tmp_path / "out"],
                "no image could be read from the 1 input(s); first reason", capsys)
    # The line names the reason and nothing is left behind (a mixed run skips the file, goes on).
    assert needle in err
    assert not (tmp_path / "out").exists()


def test_predict_4d_nifti_uses_the_first_volume(ckpt, tmp_path, capsys):
    path = Path(NIBABEL_DATA) / "example4d.nii.gz"
    if not path.is_file():
        pytest.skip("nibabel does not ship example4d.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(path), "--slices", "mid", "--out", str(out)]) == 0
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["summary"]["images"] == 1 and "first volume" in doc["summary"]["notes"][0]


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_of_another_architecture(ckpt, tiny_dataset, tmp_path, capsys):
    from meddet.models import build_detector

    other = build_detector("gfl_shufflenetv2", num_classes=2).state_dict()
    path = save_checkpoint(tmp_path / "other.pt", {"model": other, "meta": make_meta(
        model_name="gfl_mbv2", num_classes=2, class_names=CLASSES, img_size=64)})
    err = fails(["eval", path, "--data", tiny_dataset], "does not fit the model", capsys)
    assert "missing (e.g. backbone." in err and "unexpected (e.g. backbone." in err
    fails(["predict", path, path], "does not fit the model", capsys)


def test_checkpoint_with_other_classes(ckpt, tiny_dataset, tmp_path, capsys):
    from meddet.engine.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    state["meta"]["class_names"] = ["cat", "dog"]
    path = save_checkpoint(tmp_path / "cats.pt", state)
    err = fails(["eval", path, "--data", tiny_dataset], "do not match the dataset's categories",
                capsys)
    assert "['cat', 'dog']" in err and "['protrusion', 'non-protrusion']" in err
    fails(["distill", "--teachers", path, "--data", tiny_dataset, "--student", "gfl_mbv2",
           "--img-size", "64"], "was trained on classes ['cat', 'dog']", capsys)


@pytest.mark.parametrize("make, needle", [
    (lambda p, c: p.write_bytes(c.read_bytes()[: c.stat().st_size // 2]), "corrupted or truncated"),
    (lambda p, c: p.write_bytes(b""), "corrupted or truncated"),
    (lambda p, c: torch.save({"weight": torch.zeros(2)}, p), "not a meddet checkpoint"),
    (lambda p, c: p.write_text("just text"), "corrupted or truncated"),
], ids=["truncated", "zero-byte", "plain-state-dict", "text-file"])
def test_bad_checkpoint_files(make, needle, ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    make(bad, ckpt)
    img = _image("grey8", tmp_path / "x.png")
    fails(["predict", bad, img, "--out", tmp_path / "o"], needle, capsys,
          no_outputs=[tmp_path / "o"])


# --------------------------------------------------------------------------- predictions file
@pytest.mark.parametrize("content, needle", [
    ([{"image_id": 99999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}],
     "image ids not in this split (first: 99999)"),
    (None, "unknown category ids (first: 42)"),
    ({"not": "a list"}, "must be a JSON list"),
    ("{broken", "cannot read predictions"),
    ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, -5, 5], "score": 0.5}], "invalid bbox"),
], ids=["unknown-image-id", "unknown-category-id", "not-a-list", "malformed", "negative-box"])
def test_bad_predictions_files(content, needle, tiny_dataset, tmp_path, capsys):
    test = json.loads((tiny_dataset / "annotations" / "test.json").read_text())
    if content is None:
        content = [{"image_id": test["images"][0]["id"], "category_id": 42,
                    "bbox": [0, 0, 5, 5], "score": 0.5}]
    preds = tmp_path / "preds.json"
    preds.write_text(content if isinstance(content, str) else json.dumps(content))
    fails(["eval", "--predictions", preds, "--data", tiny_dataset, "--split", "test"], needle,
          capsys)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("text, needle", [
    ("train:\n  epochz: 3\n", "unknown key 'train.epochz'"),
    ("train:\n  epochs: many\n", "invalid value for 'train.epochs'"),
    ("data:\n  img_size: 100\n", "img_size must be a multiple of 32"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("train: [1,\n", "is not valid YAML"),
], ids=["unknown-key", "wrong-type", "bad-value", "not-a-mapping", "malformed-yaml"])
def test_bad_configs(text, needle, tiny_dataset, tmp_path, capsys):
    cfg = tmp_path / "my.yaml"
    cfg.write_text(text)
    err = fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", tiny_dataset,
                 "--config", cfg], needle, capsys)
    assert str(cfg) in err


# --------------------------------------------------------------------------- paths
def test_paths_that_do_not_exist(ckpt, tiny_dataset, tmp_path, capsys):
    nope = tmp_path / "nope"
    fails(["eval", ckpt, "--data", nope], f"dataset folder {nope} does not exist", capsys)
    fails(["eval", nope / "m.pt", "--data", tiny_dataset], "does not exist", capsys)
    fails(["predict", ckpt, nope / "x.png"], f"input {nope / 'x.png'} does not exist", capsys)
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", tiny_dataset, "--config",
           nope / "c.yaml"], "does not exist", capsys)
    fails(["pretrain-teacher", "--resume", nope], "nothing to resume", capsys)
    fails(["data", "preview", nope], "does not exist", capsys)


def test_paths_that_cannot_be_written(ckpt, tiny_dataset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fails(["eval", ckpt, "--data", tiny_dataset, "--out", blocker / "run"],
          "cannot create run directory", capsys)
    fails(["eval", ckpt, "--data", tiny_dataset, "--json", blocker / "m.json"],
          "cannot be written", capsys)
    fails(["predict", ckpt, ckpt, "--out", blocker / "run"], "cannot create run directory",
          capsys)
    fails(["pretrain-teacher", "--model", "gfl_mbv2", "--data", tiny_dataset,
           "--out", blocker / "run"], "cannot create run directory", capsys)
    fails(["data", "synth", blocker / "ds", "--num-train", "1", "--num-val", "0",
           "--num-test", "0"], "cannot create the dataset folder", capsys)
    assert blocker.read_text() == "x"


def test_debug_shows_the_traceback(tiny_dataset, tmp_path, capsys):
    rc = main(["eval", "--predictions", str(tmp_path / "none.json"), "--data",
               str(tiny_dataset), "--debug"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.strip().endswith("does not exist")


def test_dicom_with_a_malformed_frame_count_is_skipped_not_fatal(tmp_path):
    """pydicom's badVR.dcm has NumberOfFrames '1A': discovery and reading report it as a skip."""
    import shutil

    from pydicom.data import get_testdata_file

    from meddet.inference.readers import Skip, discover_inputs, iter_slices, parse_slices

    src = get_testdata_file("badVR.dcm")
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(src, folder / "bad.dcm")
    sources = discover_inputs([folder])  # grouping reads the header: must not raise
    assert len(sources) == 1
    items = list(iter_slices(sources[0], parse_slices(None)))
    assert len(items) == 1 and isinstance(items[0], Skip)
    assert "NumberOfFrames" in items[0].reason and "'1A'" in items[0].reason
