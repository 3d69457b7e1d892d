"""The distillation trainer: frozen teachers, one student, the engine's loop and hooks.

:func:`distill` is what ``meddet distill`` runs. It assembles the run with the engine's
:func:`~meddet.engine.defaults.assemble_trainer` (data loader, schedule, evaluation,
checkpoint, results, progress and log hooks), adding the method named by ``distill.method``
(:data:`~meddet.distill.methods.METHODS`): its modules, its student-side parameters in the
student's optimiser, and the step (:class:`~meddet.distill.step.DistillStep`).

``best.pt`` / ``last.pt`` are ordinary engine checkpoints of the student (so ``meddet eval``
reads them too) whose ``extra`` entry holds the distillation modules and D's optimiser for
``--resume``. ``student.pt`` holds only the student's weights (from ``best.pt``) and detector
metadata.

Methods: ``meddet`` (all teachers; eq. 14), ``mgd`` / ``fgd`` / ``ld`` (one teacher, the one
with the best recorded val mAP50; ``L_det`` + the baseline's loss), ``none`` (``L_det`` only).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meddet.config import Config
from meddet.distill.cache import TeacherCache
from meddet.distill.losses import check_loss_weights
from meddet.distill.methods import METHODS, DistillMethod, build_method, get_method
from meddet.distill.step import PHASES, DistillStep, SplitClock
from meddet.distill.teachers import Teacher, load_teachers, pick_best_teacher, select_teachers
from meddet.engine import distributed as du
from meddet.engine.checkpoint import load_checkpoint, save_checkpoint
from meddet.engine.defaults import (
    AssembledTrainer,
    TrainerExtension,
    assemble_trainer,
    build_datasets,
    resolve_resume,
    run_training,
)
from meddet.engine.trainer import Trainer
from meddet.errors import MedDetError
from meddet.geometry import check_img_size

__all__ = [
    "METHODS", "PHASES", "SINGLE_TEACHER", "DistillRun", "DistillStep", "SplitClock", "Teacher",
    "build_distill_trainer", "build_kd_module", "distill", "load_teachers", "pick_best_teacher",
    "write_student_checkpoint",
]

#: Methods that distil from a single teacher (Table I baselines).
SINGLE_TEACHER = tuple(name for name, m in METHODS.items() if m.num_teachers == 1)


def build_kd_module(method: str, *, student: nn.Module, teachers: Sequence[nn.Module],
                    cfg: Config) -> nn.Module | None:
    """The method's trainable distillation module (``None`` for a method without one).

    Raises:
        MedDetError: unknown method, or student and teachers that do not fit it.
    """
    return build_method(cfg.distill.model_copy(update={"method": method}), student=student,
                        teachers=teachers).module


@dataclass
class DistillRun:
    """A ready-to-train distillation run (see :func:`build_distill_trainer`).

    Attributes:
        assembled: the engine's assembled run (trainer, metadata, checkpoint hook).
        step: the distillation step (its :attr:`~DistillStep.seconds` split the time).
        teachers: the teachers the method uses.
        method: the distillation method.
        notes: lines for the user about choices made (e.g. which teacher a baseline uses).
    """

    assembled: AssembledTrainer
    step: DistillStep
    teachers: list[Teacher]
    method: DistillMethod
    notes: list[str]

    @property
    def trainer(self) -> Trainer:
        """The engine trainer."""
        return self.assembled.trainer

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata every checkpoint of the run carries."""
        return self.assembled.meta

    @property
    def kd(self) -> nn.Module | None:
        """The method's trainable distillation modules (``None`` for ``none``)."""
        return self.method.module


def _validate(cfg: Config, teachers: Sequence[str | Path]) -> type[DistillMethod]:
    from meddet.models import DETECTORS

    dc = cfg.distill
    check_loss_weights(dc.sigma, dc.tau)
    method = get_method(dc.method)
    if dc.student not in DETECTORS:
        raise MedDetError(f"unknown student {dc.student!r}; use one of: {', '.join(DETECTORS)}")
    if method.num_teachers != 0 and not teachers:
        raise MedDetError(f"--method {dc.method} needs teacher checkpoints; pass --teachers "
                          "T1.pt,T2.pt,... (or --method none for the student alone)")
    if dc.teacher_img_size is not None:
        check_img_size(dc.teacher_img_size, what="teacher_img_size", minimum=64)
        if not method.resizes_teachers:
            pooling = ", ".join(n for n, m in METHODS.items() if m.resizes_teachers)
            raise MedDetError(f"teacher_img_size only applies to methods that pool the teachers' "
                              f"features to the student's sizes ({pooling}); --method "
                              f"{dc.method} runs the teacher at the student's size")
    if du.get_world_size() > 1:
        raise MedDetError("meddet distill runs in a single process; launch it without torchrun")
    return method


def build_distill_trainer(cfg: Config, run_dir: Path | None, *, teachers: Sequence[str | Path],
                          console: Any = None, device: torch.device | None = None) -> DistillRun:
    """Data, teachers, student, the method's modules, optimisers and hooks, ready to train.

    Args:
        cfg: resolved config (``data.root`` set; ``distill`` section chooses the method).
        run_dir: where the engine's writers go (``None``: no files, e.g. in tests).
        teachers: teacher checkpoint paths (ignored by ``--method none``).
        console: rich console for progress (optional).
        device: default ``cfg.train.device``.

    Raises:
        MedDetError: invalid weights, method, student name, teachers (not detectors, other
            classes), missing dataset.
    """
    method_cls = _validate(cfg, teachers)
    dc, tc = cfg.distill, cfg.train
    device = device or du.resolve_device(tc.device)
    datasets = build_datasets(cfg)
    class_names = list(datasets["train"].class_names)
    loaded: list[Teacher] = []
    notes: list[str] = []
    if method_cls.num_teachers == 0:
        if teachers:
            notes.append(f"--method {dc.method} trains the student alone; the teachers are "
                         "ignored")
    else:
        loaded = load_teachers(teachers, class_names, device,
                               channels_last=device.type == "cuda" and tc.channels_last)
        loaded, notes = select_teachers(dc.method, method_cls.num_teachers, loaded)
    cache = None
    if dc.teacher_cache and loaded:
        # The cache is exact only if an image's tensor is one of a few fixed ones.
        datasets["train"].aug_variants = dc.teacher_cache_variants
        cache = TeacherCache(wanted=method_cls.teacher_outputs,
                             max_bytes=int(dc.teacher_cache_gb * 2**30),
                             channels_last=device.type == "cuda" and tc.channels_last)
        aug = (f"augmentation drawn from {dc.teacher_cache_variants} fixed variant(s) per "
               "image" if cfg.data.augment else "no augmentation")
        notes.append(f"teacher cache: the teachers' outputs are kept in memory (up to "
                     f"{dc.teacher_cache_gb:g} GB) per training image; {aug}")
    elif dc.teacher_cache:
        notes.append(f"--method {dc.method} runs no teachers; the teacher cache is not used")

    built: dict[str, Any] = {}

    def extend(student: nn.Module) -> TrainerExtension:
        # Built after the student, so its modules draw their initial weights after the student's.
        method = build_method(dc, student=student, teachers=[t.model for t in loaded]).to(device)
        step = DistillStep(method=method, teachers=[t.model for t in loaded],
                           teacher_img_size=dc.teacher_img_size, cache=cache)
        built.update(method=method, step=step)
        return TrainerExtension(params=method.student_parameters(), step_fn=step,
                                checkpointables=method.checkpointables())

    meta_extra = {
        "teachers": [{"path": t.path, "model_name": t.model_name, "val_mAP50": t.val_map50}
                     for t in loaded],
        "distill": {"method": dc.method, "fusion": dc.fusion, "aatm": dc.aatm, "sigma": dc.sigma,
                    "tau": dc.tau, "num_teachers": len(loaded)},
    }
    title = f"distill {dc.method} -> {dc.student} from {len(loaded)} teacher(s)"
    assembled = assemble_trainer(cfg, run_dir, model_name=dc.student, datasets=datasets,
                                 device=device, title=title, console=console,
                                 meta_extra=meta_extra, extend=extend)
    return DistillRun(assembled, built["step"], loaded, built["method"], notes)


def write_student_checkpoint(run_dir: Path) -> Path:
    """``student.pt``: the student's weights of ``best.pt`` (else ``last.pt``) and its meta.

    No optimiser, trainer or distillation state: ``meddet eval`` / ``bench`` / ``predict``
    load it as a plain detector.
    """
    src = run_dir / "best.pt"
    if not src.is_file():
        src = run_dir / "last.pt"
    ckpt = load_checkpoint(src)
    state = {"model": ckpt["model"], "meta": dict(ckpt["meta"], kind="detector"),
             "metrics": ckpt.get("metrics", {}), "epoch": ckpt.get("epoch"),
             "iter": ckpt.get("iter")}
    return save_checkpoint(run_dir / "student.pt", state)


def distill(cfg: Config, run_dir: Path, *, teachers: Sequence[str | Path],
            resume: str | Path | None = None, console: Any = None,
            device: torch.device | None = None) -> dict[str, Any]:
    """Train the student by the configured method; the body of ``meddet distill``.

    Args:
        cfg: resolved config.
        run_dir: the run directory (config, results, checkpoints, log, ``student.pt``).
        teachers: teacher checkpoints (``meddet pretrain-teacher`` outputs).
        resume: a ``last.pt``/``best.pt`` of an earlier distillation run (or its folder).
        console: rich console for progress lines.
        device: default ``cfg.train.device``.

    Returns:
        ``{"run_dir", "student", "last", "best", "best_mAP50", "history", "iters", "seconds",
        "time_split", "teachers", "notes"}`` (see :func:`~meddet.engine.defaults.run_training`;
        ``student``: the ``student.pt`` path, ``time_split``: seconds in the teachers, the
        student and the discriminator), and ``"teacher_cache"`` with ``distill.teacher_cache``
        (:meth:`~meddet.distill.cache.TeacherCache.stats`).

    Raises:
        MedDetError: bad input (see :func:`build_distill_trainer`), a resume checkpoint of
            another method or student, non-finite training.
    """
    t0 = time.perf_counter()
    ckpt = load_checkpoint(resolve_resume(resume)) if resume is not None else None
    if ckpt is not None:
        old = ckpt["meta"].get("distill")
        if not isinstance(old, dict):
            raise MedDetError(f"{resume} is not a distillation checkpoint; resume from a "
                              "last.pt written by `meddet distill`")
        if old.get("method") != cfg.distill.method or \
                ckpt["meta"].get("model_name") != cfg.distill.student:
            raise MedDetError(f"cannot resume: the checkpoint is a {old.get('method')} run of "
                              f"{ckpt['meta'].get('model_name')}; pass --method "
                              f"{old.get('method')} --student {ckpt['meta'].get('model_name')}")
        if not teachers:  # the same teachers as the interrupted run
            teachers = [t["path"] for t in ckpt["meta"].get("teachers", [])]
    run = build_distill_trainer(cfg, run_dir, teachers=teachers, console=console, device=device)
    if ckpt is not None:
        if list(ckpt["meta"]["class_names"]) != list(run.meta["class_names"]):
            raise MedDetError("cannot resume: the checkpoint's classes differ from the dataset's")
        run.trainer.load_state_dict(ckpt)
        del ckpt
    trained = run_training(run.assembled, console=console, notes=run.notes, started=t0)
    summary = {"run_dir": str(run_dir),
               "student": str(write_student_checkpoint(Path(run_dir)))}
    summary.update(trained)
    summary["seconds"] = time.perf_counter() - t0  # student.pt included
    summary.update(time_split=dict(run.step.seconds), teachers=run.meta["teachers"],
                   notes=run.notes)
    if run.step.cache is not None:
        summary["teacher_cache"] = run.step.cache.stats()
    return summary
