"""Every script in examples/ runs, on the synthetic data, at its smallest settings.

The scripts build on each other (01 trains a teacher, 02 distils from teachers, 03 evaluates
the student, 05 predicts with it), so one test runs them in order in one folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str) -> str:
    """Run ``script`` as ``__main__`` with ``args`` in this process (five interpreter start-ups
    would double the test's time) and return what it printed."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [str(EXAMPLES / script), *args]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    except SystemExit as exc:  # argparse errors, explicit exits
        assert exc.code in (0, None), f"{script} exited with {exc.code}:\n{out.getvalue()}"
    finally:
        sys.argv = argv
    return out.getvalue()


def test_every_example_is_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "01_train_teacher.py", "02_distill.py", "03_evaluate.py", "04_benchmark.py",
        "05_predict_dicom.py"]


@pytest.mark.slow
def test_examples_run_in_order(tmp_path, monkeypatch):
    # The scripts pick two torch threads unless OMP_NUM_THREADS is set; keep the worker's.
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    out = str(tmp_path)
    # The paper's teachers are gfl_r50/r101/r152; the smallest zoo model stands in for them
    # here, as in tests/conftest.py::tiny_teachers, to keep the run short.
    text = _run("01_train_teacher.py", "--out", out, "--model", "gfl_mbv2", "--iters", "1")
    teacher = tmp_path / "teachers" / "gfl_mbv2" / "best.pt"
    assert teacher.is_file() and "val mAP" in text

    text = _run("02_distill.py", "--out", out, "--teachers", ",".join([str(teacher)] * 3),
                "--iters", "1")
    assert (tmp_path / "students" / "meddet" / "student.pt").is_file()
    assert "from 3 teachers" in text

    text = _run("03_evaluate.py", "--out", out)
    assert "(clean): mAP" in text and "(rician:10): mAP" in text

    text = _run("04_benchmark.py", "--models", "gfl_mbv2,meddet", "--img-size", "128",
                "--iters", "1")
    assert "meddet" in text and "GFLOPs" in text

    text = _run("05_predict_dicom.py", "--out", out)
    preds = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
    assert preds["summary"]["images"] >= 1
    assert list((tmp_path / "predictions" / "overlays").glob("*.png"))


@pytest.mark.parametrize("script", sorted(p.name for p in (EXAMPLES / "reproduce").glob("*.sh")))
def test_reproduce_scripts_parse(script):
    import subprocess

    res = subprocess.run(["bash", "-n", str(EXAMPLES / "reproduce" / script)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_cpu_study_stages_name_rows_of_the_plan(tmp_path):
    """The CPU study script's stages, run with a stand-in `python` that records each
    `meddet study run`: three stages in the documented order, every --only id a row of its
    --tables/--seeds plan, the teachers in each, bfloat16 passed to every row."""
    import os
    import shlex
    import subprocess

    from meddet.study.tables import plan

    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    log = tmp_path / "calls"
    shim.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$(printf "%q " "$@")" >> {log}\n')
    shim.chmod(0o755)
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "S": str(tmp_path / "s"),
           "DATA": str(tmp_path / "data")}
    res = subprocess.run(["bash", str(EXAMPLES / "reproduce" / "cpu_study.sh")], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calls = [shlex.split(line) for line in log.read_text().splitlines()]
    assert len(calls) == 3 and all(c[:4] == ["-m", "meddet", "study", "run"] for c in calls)
    stages = []
    for c in calls:
        opt = {c[i]: c[i + 1] for i in range(4, len(c) - 1) if c[i].startswith("--")}
        assert opt["--extra"] == "--cpu-amp" and opt["--teacher-epochs"] == "160"
        ids = {r.id for r in plan([int(s) for s in opt["--seeds"].split(",")],
                                  set(opt["--tables"].split(",")), 160)}
        only = opt["--only"].split(",")
        assert set(only) <= ids and {"teacher-gfl_r50", "teacher-gfl_r152"} <= set(only)
        stages.append(set(only))
    assert {"meddet-s2", "mgd-s1", "plain-gfl_mbv2-s0", "alone-meddet-s2"} <= stages[0]
    assert {"abl-base-s2", "abl-nmode-s0", "abl-lwff-s1"} <= stages[1]
    assert {"fusion-sum", "nmode-fpn", "plain-gfl_effb0-s0"} <= stages[2]


def test_cpu_study_refuses_a_teacher_run_still_training(tmp_path):
    """TEACHERS_FROM links finished teacher runs only: one whose results.csv has not reached
    its config's epochs stops the script with one line before any row starts."""
    import os
    import subprocess

    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/usr/bin/env bash\necho "$@" >> {tmp_path / "calls"}\n')
    shim.chmod(0o755)
    (tmp_path / "data" / "annotations").mkdir(parents=True)
    for t, last in (("gfl_r50", 160), ("gfl_r101", 160), ("gfl_r152", 26)):
        d = tmp_path / "teachers" / t
        d.mkdir(parents=True)
        (d / "last.pt").write_bytes(b"")
        (d / "config.yaml").write_text("data:\n  img_size: 256\ntrain:\n  epochs: 160\n")
        (d / "results.csv").write_text("epoch,iter\n" + "".join(
            f"{e},{25 * e}\n" for e in (1, last)))
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "S": str(tmp_path / "s"),
           "DATA": str(tmp_path / "data"), "TEACHERS_FROM": str(tmp_path / "teachers")}
    script = str(EXAMPLES / "reproduce" / "cpu_study.sh")
    res = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stdout.strip() == (
        f"the teacher run in {tmp_path / 'teachers' / 'gfl_r152'} is not finished (epoch 26 of "
        f"160): finish it first (meddet pretrain-teacher --resume "
        f"{tmp_path / 'teachers' / 'gfl_r152'})")
    assert not (tmp_path / "calls").exists()
    # finished: linked as the teacher rows, and the stages run
    (tmp_path / "teachers" / "gfl_r152" / "results.csv").write_text("epoch,iter\n160,4000\n")
    res = subprocess.run(["bash", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "s" / "runs" / "teacher-gfl_r152").resolve() == \
        (tmp_path / "teachers" / "gfl_r152")
    assert len((tmp_path / "calls").read_text().splitlines()) == 3
