"""Frozen teachers: loading, checking and choosing the checkpoints a student learns from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from meddet.engine.checkpoint import build_model_from_checkpoint, load_checkpoint
from meddet.engine.hooks import recorded_best
from meddet.errors import MedDetError

__all__ = ["Teacher", "load_teachers", "pick_best_teacher", "select_teachers"]


@dataclass
class Teacher:
    """A frozen teacher and where it came from."""

    model: nn.Module
    path: str
    model_name: str
    val_map50: float | None


def load_teachers(paths: Sequence[str | Path], class_names: Sequence[str],
                  device: torch.device, *, channels_last: bool = False) -> list[Teacher]:
    """Load teacher detectors, frozen and in eval mode.

    Raises:
        MedDetError: a file is missing or not a meddet detector checkpoint, or a teacher was
            trained on other classes than ``class_names``.
    """
    teachers = []
    for p in paths:
        ckpt = load_checkpoint(p)
        meta = ckpt["meta"]
        kind = meta.get("kind", "detector")
        if kind != "detector":
            raise MedDetError(f"teacher {p} holds a {kind!r}, not a detector; pass checkpoints "
                              "written by `meddet pretrain-teacher`")
        if list(meta.get("class_names", [])) != list(class_names):
            raise MedDetError(f"teacher {p} was trained on classes {list(meta.get('class_names', []))}"
                              f" but the dataset has {list(class_names)}; use teachers trained on "
                              "this dataset's classes")
        model, meta = build_model_from_checkpoint(ckpt, device)
        model.eval().requires_grad_(False)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        teachers.append(Teacher(model, str(p), str(meta["model_name"]), recorded_best(ckpt)))
    return teachers


def pick_best_teacher(teachers: Sequence[Teacher]) -> Teacher:
    """The teacher with the best recorded val mAP50 (the first one when none is recorded)."""
    scored = [t for t in teachers if t.val_map50 is not None]
    return max(scored, key=lambda t: t.val_map50) if scored else teachers[0]


def select_teachers(method: str, num_teachers: int | None,
                    teachers: Sequence[Teacher]) -> tuple[list[Teacher], list[str]]:
    """The teachers a method takes (every one, or the best recorded one) and a note on the
    choice for the user.

    Args:
        method: the method's name (for the note).
        num_teachers: the method's :attr:`~meddet.distill.methods.DistillMethod.num_teachers`
            (``None`` or ``1``; a method without teachers loads none).
        teachers: the loaded teachers.

    Returns:
        ``(teachers used, notes)``.
    """
    if num_teachers == 1 and len(teachers) > 1:
        best = pick_best_teacher(teachers)
        score = "no recorded val mAP50" if best.val_map50 is None else \
            f"val mAP50 {best.val_map50:.4f}"
        return [best], [f"{method} uses one teacher: {best.path} ({best.model_name}, {score})"]
    return list(teachers), []
