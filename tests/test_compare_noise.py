"""meddet.study.compare_runs (and examples/reproduce/compare_noise.py, which prints it): the
paired noise table, on hand-written test.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meddet.errors import MedDetError
from meddet.study import compare_runs

SCRIPT = Path(__file__).parents[1] / "examples" / "reproduce" / "compare_noise.py"


@pytest.fixture(scope="module")
def cn(script_module):
    return script_module


def _run(root: Path, name: str, clean: float, r40: float, r5: float) -> Path:
    d = root / name
    d.mkdir()
    (d / "test.json").write_text(json.dumps({
        "mAP50": clean, "mAP": clean / 2,
        "noise_sweep": [{"noise": None, "mAP50": clean}, {"noise": "rician:40", "mAP50": r40},
                        {"noise": "rician:5", "mAP50": r5}]}))
    return d


def test_table_hand_computed(tmp_path):
    a = [_run(tmp_path, "a0", 0.80, 0.78, 0.60), _run(tmp_path, "a1", 0.70, 0.70, 0.60)]
    b = [_run(tmp_path, "b0", 0.60, 0.50, 0.30), _run(tmp_path, "b1", 0.80, 0.70, 0.40)]
    lines = compare_runs("with", a, "without", b).splitlines()
    assert lines[0] == "| group | clean | rician:40 | rician:5 | drop clean → rician:5 |"
    # with: clean 80, 70 -> 75.0 ± 7.1; r40 78, 70 -> 74.0 ± 5.7; r5 60, 60 -> 60.0 ± 0.0;
    # drops 20, 10 -> 15.0 ± 7.1
    assert lines[2] == "| with | 75.0 ± 7.1 | 74.0 ± 5.7 | 60.0 ± 0.0 | 15.0 ± 7.1 |"
    # without: clean 60, 80; r40 50, 70; r5 30, 40; drops 30, 40 -> 35.0 ± 7.1
    assert lines[3] == "| without | 70.0 ± 14.1 | 60.0 ± 14.1 | 35.0 ± 7.1 | 35.0 ± 7.1 |"
    # paired: clean +20, -10 -> 5.0 ± 21.2; r40 +28, 0 -> 14.0 ± 19.8; r5 +30, +20 -> 25.0 ± 7.1;
    # drop differences -10, -30 -> -20.0 ± 14.1
    assert lines[4] == ("| with − without, paired | 5.0 ± 21.2 | 14.0 ± 19.8 | 25.0 ± 7.1 | "
                        "-20.0 ± 14.1 |")


def test_single_pair_and_mismatch(cn, tmp_path, capsys):
    a = [_run(tmp_path, "a", 0.5, 0.4, 0.25)]
    b = [_run(tmp_path, "b", 0.5, 0.5, 0.5)]
    assert compare_runs("x", a, "y", b).splitlines()[-1] == \
        "| x − y, paired | 0.0 | -10.0 | -25.0 | 25.0 |"
    with pytest.raises(MedDetError, match="same number of runs"):
        compare_runs("x", a + b, "y", b)
    with pytest.raises(MedDetError, match="not found; evaluate the run first"):
        compare_runs("x", [tmp_path], "y", b)
    cn.main(["--a", "x", str(a[0]), "--b", "y", str(b[0])])
    assert capsys.readouterr().out.startswith("| group | clean |")
