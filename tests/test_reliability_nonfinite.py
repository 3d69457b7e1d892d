"""Non-finite losses in distillation: the adversarial part is the usual culprit.

A step whose discriminator or student loss is NaN/inf is skipped (no update anywhere), counted
in ``results.csv`` (``nonfinite``), and ``train.max_nonfinite`` of them in a row stop the run
with one clear line; the last good checkpoint is kept.
"""

from __future__ import annotations

import csv

import pytest
import torch

from meddet.config import load_config
from meddet.distill.distiller import MedDetDistiller
from meddet.distill.trainer import build_distill_trainer
from meddet.engine.checkpoint import load_checkpoint
from meddet.engine.trainer import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trainer(tiny_dataset, tiny_teachers, run_dir, **train):
    cfg = load_config(None, {
        "data": {"root": str(tiny_dataset), "img_size": 64, "augment": False},
        "train": {"batch_size": 2, "epochs": 2, "device": "cpu", **train},
        "distill": {"method": "meddet", "student": "gfl_mbv2"}})
    return build_distill_trainer(cfg, run_dir, teachers=tiny_teachers[:2])


def _poison(monkeypatch, bad_calls: dict[int, str]) -> None:
    """Make the distiller's ``out[key]`` NaN on the given (0-based) calls: ``{call: key}``."""
    real = MedDetDistiller.forward
    calls = {"n": 0}

    def forward(self, *a, **kw):
        out = real(self, *a, **kw)
        key = bad_calls.get(calls["n"])
        if key is not None:
            out[key] = out[key] * float("nan")
        calls["n"] += 1
        return out

    monkeypatch.setattr(MedDetDistiller, "forward", forward)


def test_nonfinite_steps_are_skipped_and_counted_in_results_csv(tiny_dataset, tiny_teachers,
                                                                 tmp_path, monkeypatch):
    run = _trainer(tiny_dataset, tiny_teachers, tmp_path)
    # Iteration 2 (epoch 1): D's loss; iteration 3 (epoch 2): the student's adversarial term.
    _poison(monkeypatch, {1: "disc", 2: "adv"})
    dtypes = {}
    real_apply = run.trainer.apply_losses

    def spy(losses, **kw):
        dtypes.update({k: v.dtype for k, v in losses.items()})
        return real_apply(losses, **kw)

    monkeypatch.setattr(run.trainer, "apply_losses", spy)
    d_before = {k: v.clone() for k, v in run.kd.discriminator.state_dict().items()}
    run.trainer.train()
    assert run.trainer.iter == 4 and run.trainer.storage.nonfinite_total == 2
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["nonfinite"]) for r in rows] == [1, 2]  # cumulative, per epoch row
    for v in run.trainer.model.state_dict().values():
        assert torch.isfinite(v).all()
    for k, v in run.kd.state_dict().items():
        assert torch.isfinite(v).all(), k
    # D still learned on the good steps.
    assert any(not torch.equal(v, d_before[k]) for k, v in run.kd.discriminator.state_dict().items())
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["storage"]["nonfinite_total"] == 2
    # The student's losses are combined in fp32 (on CUDA autocast may give bf16/fp16 terms).
    assert dtypes and all(d == torch.float32 for d in dtypes.values()), dtypes


def test_too_many_in_a_row_stop_with_a_clear_message(tiny_dataset, tiny_teachers, tmp_path,
                                                     monkeypatch):
    run = _trainer(tiny_dataset, tiny_teachers, tmp_path, max_nonfinite=2)
    _poison(monkeypatch, {2: "disc", 3: "disc"})  # epoch 1 is fine, epoch 2 diverges
    with pytest.raises(NonFiniteLossError) as info:
        run.trainer.train()
    msg = str(info.value)
    assert "2 consecutive steps had a non-finite discriminator loss" in msg
    assert len(msg.splitlines()) == 1 and "last good checkpoint is kept" in msg
    assert load_checkpoint(tmp_path / "last.pt")["iter"] == 2  # the epoch-1 checkpoint
