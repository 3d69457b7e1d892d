"""The distillation methods table: one interface, one lookup, and a method added from outside."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meddet.cli import main
from meddet.config import DistillConfig, load_config
from meddet.distill.methods import (
    METHODS,
    DistillMethod,
    MethodLosses,
    StudentPass,
    TeacherPass,
    fpn_channels,
    get_method,
)
from meddet.engine.checkpoint import load_checkpoint
from meddet.errors import MedDetError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Hint(DistillMethod):
    """The worked example of docs/distillation.md: FitNets-style hints from the best teacher."""

    num_teachers = 1
    teacher_outputs = ("feats",)

    def __init__(self, *, student_channels: Sequence[int], teacher_channels: Sequence[int],
                 weight: float = 1.0) -> None:
        self.module = nn.ModuleList(nn.Conv2d(s, t, 1)
                                    for s, t in zip(student_channels, teacher_channels))
        self.weight = weight

    @classmethod
    def from_config(cls, cfg: DistillConfig, *, student: nn.Module,
                    teachers: Sequence[nn.Module]) -> Hint:
        return cls(student_channels=fpn_channels(student),
                   teacher_channels=fpn_channels(teachers[0]))

    def losses(self, student: StudentPass, teachers: Sequence[TeacherPass]) -> MethodLosses:
        hint = sum(F.mse_loss(conv(s).float(), t.float())
                   for conv, s, t in zip(self.module, student.feats, teachers[0].feats))
        return MethodLosses(student.loss_det + self.weight * hint, {"loss_hint": hint.detach()})


def test_every_table_entry_implements_the_interface():
    assert list(METHODS) == ["meddet", "mgd", "ld", "fgd", "none"]
    for name, cls in METHODS.items():
        assert issubclass(cls, DistillMethod), name
        assert cls.num_teachers in (None, 0, 1), name
        assert set(cls.teacher_outputs) <= {"feats", "bbox_preds"}, name
        assert cls.from_config is not DistillMethod.from_config, name
        assert cls.losses is not DistillMethod.losses, name
        assert get_method(name) is cls
    assert DistillConfig().method in METHODS
    with pytest.raises(MedDetError, match="unknown distillation method 'kd'; use one of: "
                                          "meddet, mgd, ld, fgd, none"):
        get_method("kd")


def test_a_method_added_to_the_table_trains_and_is_checkpointed(tiny_dataset, tiny_teachers,
                                                               tmp_path, monkeypatch):
    from meddet.distill.trainer import build_distill_trainer

    monkeypatch.setitem(METHODS, "hint", Hint)
    cfg = load_config(None, {
        "data": {"root": str(tiny_dataset), "img_size": 64, "augment": False, "workers": 0},
        "train": {"batch_size": 2, "epochs": 1, "device": "cpu", "warmup_iters": 0},
        "distill": {"method": "hint", "student": "gfl_mbv2"}})
    run = build_distill_trainer(cfg, tmp_path, teachers=tiny_teachers)
    # one teacher, the best recorded (teacher1, val mAP50 0.3), chosen by num_teachers = 1
    assert [t.path for t in run.teachers] == [str(tiny_teachers[1])]
    assert any("hint uses one teacher" in n for n in run.notes)
    hint_params = list(run.kd.parameters())
    in_sgd = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_sgd for p in hint_params)
    before = [p.detach().clone() for p in hint_params]
    run.trainer.train()
    row = run.trainer.storage.history[-1]
    assert row["loss_hint"] > 0 and row["loss"] == pytest.approx(
        row["loss_det"] + row["loss_hint"], rel=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.kd.parameters()))
    last = load_checkpoint(tmp_path / "last.pt")
    assert set(last["extra"]) == {"distill"}  # no discriminator side
    assert last["meta"]["distill"]["method"] == "hint"


def test_unknown_method_and_misplaced_teacher_size_are_one_line_errors(tiny_dataset,
                                                                        tiny_teachers, tmp_path,
                                                                        capsys):
    base = ["distill", "--data", str(tiny_dataset), "--teachers", str(tiny_teachers[0]),
            "--student", "gfl_mbv2", "--img-size", "128", "--config", "cpu-small",
            "--max-iters", "1"]
    assert main([*base, "--method", "kd", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown distillation method 'kd'" in err
    assert not (tmp_path / "a").exists()  # refused before a run directory was made
    assert main([*base, "--method", "mgd", "--teacher-img-size", "160",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "teacher_img_size only applies" in err
    assert "(meddet)" in err
    assert main([*base, "--method", "meddet", "--teacher-img-size", "100",
                 "--out", str(tmp_path / "c")]) == 2
    assert "multiple of 32" in capsys.readouterr().err
