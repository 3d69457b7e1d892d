"""Crash-safe training: a training or distillation process killed with SIGKILL at a
random iteration resumes with ``--resume`` from its last checkpoint and, on the deterministic CPU
path, ends with weights identical to an uninterrupted run.

The child process imports everything first and waits for a go-file, so its start-up overlaps
with the uninterrupted reference run done in this process (the suite's time budget is tight).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from meddet.cli import main
from meddet.engine.checkpoint import load_checkpoint

_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import meddet.distill.trainer, meddet.engine.defaults  # the heavy imports, before the wait
    from meddet.cli import main
    go = Path(sys.argv[1])
    while not go.exists():
        time.sleep(0.01)
    sys.exit(main(sys.argv[2:]))
""")

# 4 train images, batch 1: one epoch of 4 iterations; last.pt after every iteration. (Resumes
# across epoch boundaries are covered by tests/test_engine_cli.py and test_engine_trainer.py.)
COMMON = ["--config", "default", "--img-size", "64", "--batch-size", "1", "--epochs", "1",
          "--workers", "0", "--device", "cpu", "--checkpoint-every-iters", "1"]
TOTAL_ITERS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _iter_of(path: Path, seen: dict) -> int:
    """The ``iter`` of ``path`` (re-read only when the file changed)."""
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
    if seen.get("stamp") != stamp:
        seen["stamp"] = stamp
        seen["iter"] = int(load_checkpoint(path)["iter"])
    return seen["iter"]


def kill_resume_compare(argv_for, tmp_path: Path, resume_cmd: str) -> None:
    """Run ``argv_for(out)`` uninterrupted here and in a child killed at a random iteration,
    resume the child's run, and compare the final checkpoints bit for bit."""
    target = random.Random().randint(1, TOTAL_ITERS - 1)
    killed, straight, go = tmp_path / "killed", tmp_path / "straight", tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(go), *argv_for(killed)],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert main(argv_for(straight)) == 0
        go.touch()
        seen: dict = {}
        deadline = time.monotonic() + 120
        while _iter_of(killed / "last.pt", seen) < target:
            assert child.poll() is None, f"child ended early: {child.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.01)
        assert child.poll() is None  # still training when killed
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    at_kill = load_checkpoint(killed / "last.pt")["iter"]
    assert target <= at_kill < TOTAL_ITERS, (target, at_kill)

    assert main([resume_cmd, "--resume", str(killed)]) == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["iter"] == b["iter"] == TOTAL_ITERS
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{k} differs after a kill at iteration {at_kill}"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    for name, sa in a.get("extra", {}).items():  # distillation modules and D's optimiser
        sb = b["extra"][name]
        if "state" in sa:
            sa, sb = sa["state"], sb["state"]
            sa = {f"{i}/{k}": t for i, s in sa.items() for k, t in s.items()}
            sb = {f"{i}/{k}": t for i, s in sb.items() for k, t in s.items()}
        for k, v in sa.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sb[k])), f"{name}.{k}"
    # The results table has the same rows: epoch, iteration and the epoch's loss means (over
    # the iterations before and after the kill).
    rows_a = (straight / "results.csv").read_text().splitlines()
    rows_b = (killed / "results.csv").read_text().splitlines()
    assert [r.split(",")[:4] for r in rows_a] == [r.split(",")[:4] for r in rows_b]


@pytest.mark.slow
def test_sigkilled_training_resumes_to_identical_weights(tiny_dataset, tmp_path):
    def argv(out: Path) -> list[str]:
        return ["pretrain-teacher", "--model", "gfl_mbv2", "--data", str(tiny_dataset),
                *COMMON, "--out", str(out)]

    kill_resume_compare(argv, tmp_path, "pretrain-teacher")


@pytest.mark.slow
def test_sigkilled_distillation_resumes_to_identical_weights(tiny_dataset, tiny_teachers,
                                                             tmp_path):
    def argv(out: Path) -> list[str]:
        return ["distill", "--teachers", ",".join(str(p) for p in tiny_teachers[:2]),
                "--data", str(tiny_dataset), "--method", "meddet", "--student", "gfl_mbv2",
                *COMMON, "--out", str(out)]

    kill_resume_compare(argv, tmp_path, "distill")
