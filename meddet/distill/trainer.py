"""The distillation trainer: frozen teachers, one student, the engine's loop and hooks.

:func:`distill` is what ``meddet distill`` runs. It reuses the engine (data loader, schedule,
evaluation, checkpoint, results, progress and log hooks) and replaces only the step
(:class:`DistillStep`). Per iteration:

1. the teachers run in eval mode under ``torch.inference_mode`` (channels_last on CUDA), never
   updated: no optimiser holds their parameters and they have ``requires_grad=False``;
2. the student runs ``forward_raw`` and its own loss (eq. 12, ``L_det``), then the method's
   distillation terms; the engine's :meth:`~meddet.engine.Trainer.apply_losses` steps the SGD
   optimiser (student + the method's student-side modules, e.g. AATM's ``G``) with the
   engine's AMP, clipping and non-finite guard;
3. MedDet with AATM only: D's BCE is back-propagated and the Adam optimiser (``D`` + AFA + fusion,
   see :mod:`meddet.distill.distiller` for why the fusion sits there) steps.

The seconds spent in 1, 2 and 3 are logged per iteration (``time_teacher``, ``time_student``,
``time_disc``) and summed in the returned summary.

``best.pt`` / ``last.pt`` are ordinary engine checkpoints of the student (so ``meddet eval``
reads them too) whose ``extra`` entry holds the distillation modules and D's optimiser for
``--resume``. ``student.pt`` holds only the student's weights (from ``best.pt``) and detector
metadata.

Methods: ``meddet`` (all teachers; eq. 14), ``mgd`` / ``fgd`` / ``ld`` (one teacher, the one
with the best recorded val mAP50; ``L_det`` + the baseline's loss), ``none`` (``L_det`` only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddet.config import Config
from meddet.distill.baselines import FGDLoss, LDLoss, MGDLoss
from meddet.distill.distiller import MedDetDistiller
from meddet.distill.losses import check_loss_weights, total_loss
from meddet.engine import distributed as du
from meddet.engine.checkpoint import (
    build_model_from_checkpoint,
    load_checkpoint,
    make_meta,
    save_checkpoint,
    seed_everything,
    unwrap_model,
)
from meddet.engine.defaults import (
    build_datasets,
    build_eval_fn,
    build_train_loader,
    default_hooks,
    model_overrides,
    prepare_model,
    resolve_resume,
)
from meddet.engine.schedule import build_optimizer, build_scheduler, scaled_lr
from meddet.engine.trainer import Trainer
from meddet.errors import MedDetError

METHODS = ("meddet", "mgd", "ld", "fgd", "none")
#: Methods that distil from a single teacher (Table I baselines).
SINGLE_TEACHER = ("mgd", "ld", "fgd")


@dataclass
class Teacher:
    """A frozen teacher and where it came from."""

    model: nn.Module
    path: str
    model_name: str
    val_map50: float | None


def _recorded_map50(ckpt: Mapping[str, Any]) -> float | None:
    # The best val mAP50 the checkpoint hook saw; else the metrics row stored with the weights.
    hooks = (ckpt.get("trainer") or {}).get("hooks") or {}
    best = (hooks.get("CheckpointHook") or {}).get("best")
    if best is None:
        best = (ckpt.get("metrics") or {}).get("mAP50")
    try:
        return None if best is None or math.isnan(float(best)) else float(best)
    except (TypeError, ValueError):
        return None


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
        teachers.append(Teacher(model, str(p), str(meta["model_name"]), _recorded_map50(ckpt)))
    return teachers


def pick_best_teacher(teachers: Sequence[Teacher]) -> Teacher:
    """The teacher with the best recorded val mAP50 (the first one when none is recorded)."""
    scored = [t for t in teachers if t.val_map50 is not None]
    return max(scored, key=lambda t: t.val_map50) if scored else teachers[0]


class SplitClock:
    """Seconds spent in the phases of each step, without making the host wait for the device.

    On CUDA the phase boundaries are events recorded on the current stream; a step's times are
    read once its last event has completed (checked without blocking at the next step) and
    the rest at :meth:`totals`. On the CPU they are ``time.perf_counter`` readings. A
    ``torch.cuda.synchronize`` per boundary would give the same split but stop the host from
    queueing work while the device runs.

    Args:
        device: where the step runs.
        names: the phases, in order; a step calls :meth:`mark` ``len(names) + 1`` times.
    """

    def __init__(self, device: torch.device, names: Sequence[str]) -> None:
        self.cuda = device.type == "cuda"
        self.names = list(names)
        self.seconds = dict.fromkeys(self.names, 0.0)
        self._marks: list[Any] = []
        self._pending: list[list[Any]] = []

    def mark(self, *, start: bool = False) -> None:
        """A phase boundary of the current step; ``start`` begins a step (dropping the marks of
        one that did not finish, e.g. after an exception)."""
        if start:
            self._marks = []
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._marks.append(ev)
        else:
            self._marks.append(time.perf_counter())
        if len(self._marks) == len(self.names) + 1:
            self._pending.append(self._marks)
            self._marks = []

    def collect(self, *, wait: bool = False) -> list[dict[str, float]]:
        """The per-phase seconds of the finished steps not collected yet (added to
        :attr:`seconds`); with ``wait``, waits for the device to finish them all."""
        done = []
        while self._pending:
            marks = self._pending[0]
            if self.cuda:
                if wait:
                    marks[-1].synchronize()
                elif not marks[-1].query():
                    break
                dt = [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]
            else:
                dt = [b - a for a, b in zip(marks, marks[1:])]
            self._pending.pop(0)
            step = dict(zip(self.names, dt))
            for k, v in step.items():
                self.seconds[k] += v
            done.append(step)
        return done

    def totals(self) -> dict[str, float]:
        """Seconds per phase over all finished steps."""
        self.collect(wait=True)
        return dict(self.seconds)


# The phases of a distillation step that SplitClock times.
PHASES = ("teacher", "student", "disc")


class DistillStep:
    """One distillation iteration, used as the engine trainer's ``step_fn``.

    Args:
        method: one of :data:`METHODS`.
        teachers: frozen teacher detectors (empty for ``none``).
        kd: the method's module (:class:`MedDetDistiller`, :class:`MGDLoss`,
            :class:`FGDLoss`, :class:`LDLoss`) or ``None``.
        sigma, tau: eq. 14 weights (``meddet`` only).
        clip_params: what the engine clips (student + the kd module's student side).
        d_optimizer: Adam over ``D`` + AFA + fusion (``meddet`` with AATM), else ``None``.
        teacher_img_size: resize the batch to this size for the teachers (``None``: as is).
    """

    def __init__(self, *, method: str, teachers: Sequence[nn.Module], kd: nn.Module | None,
                 sigma: float, tau: float, clip_params: Sequence[nn.Parameter],
                 d_optimizer: torch.optim.Optimizer | None,
                 teacher_img_size: int | None = None) -> None:
        self.method = method
        self.teachers = list(teachers)
        self.kd = kd
        self.sigma, self.tau = sigma, tau
        self.clip_params = list(clip_params)
        self.d_optimizer = d_optimizer
        self.teacher_img_size = teacher_img_size
        self.clock: SplitClock | None = None  # made on the first call (needs the device)

    def _run_teachers(self, trainer: Trainer, images: Tensor) -> list[tuple[list[Tensor], list[Tensor]]]:
        x = images
        if self.teacher_img_size and self.teacher_img_size != images.shape[-1]:
            x = F.interpolate(images, size=(self.teacher_img_size,) * 2, mode="bilinear",
                              align_corners=False)
        outs = []
        with torch.inference_mode(), trainer.autocast():
            for t in self.teachers:
                feats, _, bbox = t.forward_raw(x)
                outs.append((feats, bbox))
        # Inference tensors cannot be saved for backward (AFA's conv needs its input): clone
        # into normal tensors, outside inference mode, only what the method uses.
        if self.method == "ld":
            return [([], [b.clone() for b in bbox]) for _, bbox in outs]
        return [([f.clone() for f in feats], []) for feats, _ in outs]

    def __call__(self, trainer: Trainer) -> None:
        """Fetch a batch, step the student (and D), log losses and the time split."""
        if self.clock is None:
            self.clock = SplitClock(trainer.device, PHASES)
        clock = self.clock
        images, targets = trainer.next_batch()
        clock.mark(start=True)
        t_out = self._run_teachers(trainer, images) if self.teachers else []
        clock.mark()
        student = unwrap_model(trainer.model)
        img_shape = (int(images.shape[-2]), int(images.shape[-1]))
        disc: Tensor | None = None
        with trainer.autocast():
            feats, cls_scores, bbox_preds = student.forward_raw(images)
            det = student.loss(cls_scores, bbox_preds, targets, img_shape)
            # The losses are combined in fp32 (autocast may give bf16/fp16 terms): a sum that
            # overflows half precision must not become a spurious non-finite step.
            l_det = det["loss"].float()
            losses: dict[str, Tensor] = {"loss_det": l_det.detach()}
            if self.method == "none":
                loss = l_det
            elif self.method == "meddet":
                out = self.kd([f.float() for f in feats], [tf for tf, _ in t_out])
                loss = total_loss(l_det, out["dist"], out["adv"], sigma=self.sigma,
                                  tau=self.tau)
                losses.update(loss_dist=out["dist"].detach(), loss_adv=out["adv"].detach())
                if self.d_optimizer is not None:
                    disc = out["disc"]
                    losses["loss_disc"] = disc.detach()
            elif self.method == "mgd":
                kd = self.kd(feats, t_out[0][0])
                loss = l_det + kd.float()
                losses["loss_mgd"] = kd.detach()
            elif self.method == "fgd":
                out = self.kd(feats, t_out[0][0], [t["boxes"] for t in targets], img_shape)
                loss = l_det + out["loss"].float()
                losses["loss_fgd"] = out["loss"].detach()
            elif self.method == "ld":
                asg = student.assign(cls_scores, targets, img_shape)
                _, s_reg = student.flatten_outputs(cls_scores, bbox_preds)
                _, t_reg = student.flatten_outputs(cls_scores, t_out[0][1])
                if t_reg.shape != s_reg.shape:
                    raise MedDetError(f"LD needs teacher and student outputs on the same grid, got "
                                      f"{tuple(t_reg.shape)} and {tuple(s_reg.shape)}")
                n = s_reg.shape[0] * s_reg.shape[1]
                # All locations, averaged over the positives only: no boolean gather (whose
                # size the host would have to wait for).
                kd = self.kd(s_reg.reshape(n, -1), t_reg.reshape(n, -1),
                             mask=asg.pos_mask.reshape(n))
                loss = l_det + kd.float()
                losses["loss_ld"] = kd.detach()
            else:  # pragma: no cover - validated in distill()
                raise ValueError(self.method)
        losses["loss"] = loss
        if disc is not None and not bool(torch.isfinite(disc.detach())):
            # D diverged (the adversarial game is the usual culprit): skip the whole step,
            # student included, and count it like any non-finite step (results.csv's
            # `nonfinite`; train.max_nonfinite in a row stops the run).
            trainer.skip_step("discriminator loss")
            stepped = False
        else:
            stepped = trainer.apply_losses(losses, parameters=self.clip_params)
        clock.mark()
        if disc is not None:
            self.d_optimizer.zero_grad(set_to_none=True)
            if stepped:  # disc was found finite above
                # D's loss is fp32 from logits; it needs no loss scaling even under fp16 AMP.
                disc.backward()
                self.d_optimizer.step()
        clock.mark()
        for dt in clock.collect():
            trainer.storage.put_scalars(**{f"time_{k}": v for k, v in dt.items()})

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per phase (teacher, student, disc) over the steps run so far."""
        return self.clock.totals() if self.clock else dict.fromkeys(PHASES, 0.0)


def _fpn_channels(model: nn.Module) -> list[int]:
    m = unwrap_model(model)
    return [int(m.fpn_channels)] * len(m.strides)


def build_kd_module(method: str, *, student: nn.Module, teachers: Sequence[nn.Module],
                    cfg: Config) -> nn.Module | None:
    """The method's trainable distillation module (``None`` for ``none``)."""
    dc = cfg.distill
    s_ch = _fpn_channels(student)
    if method == "none":
        return None
    if method == "meddet":
        return MedDetDistiller(teacher_channels=[_fpn_channels(t) for t in teachers],
                               student_channels=s_ch, fusion=dc.fusion,
                               per_teacher_alpha=dc.per_teacher_alpha, aatm=dc.aatm,
                               disc_mode=dc.disc_mode)
    t_ch = _fpn_channels(teachers[0])
    if method == "mgd":
        return MGDLoss(s_ch, t_ch)
    if method == "fgd":
        return FGDLoss(s_ch, t_ch)
    if method == "ld":
        s_rm, t_rm = unwrap_model(student).reg_max, unwrap_model(teachers[0]).reg_max
        if s_rm != t_rm:
            raise MedDetError(f"LD needs the same reg_max for teacher ({t_rm}) and student ({s_rm})")
        return LDLoss(reg_max=s_rm)
    raise MedDetError(f"unknown distillation method {method!r}; use one of {', '.join(METHODS)}")


@dataclass
class DistillRun:
    """A ready-to-train distillation run (see :func:`build_distill_trainer`)."""

    trainer: Trainer
    step: DistillStep
    teachers: list[Teacher]
    kd: nn.Module | None
    meta: dict[str, Any]
    notes: list[str]


def _validate(cfg: Config, teachers: Sequence[str | Path]) -> None:
    from meddet.models import DETECTORS

    dc = cfg.distill
    check_loss_weights(dc.sigma, dc.tau)
    if dc.method not in METHODS:
        raise MedDetError(f"unknown method {dc.method!r}; use one of {', '.join(METHODS)}")
    if dc.student not in DETECTORS:
        raise MedDetError(f"unknown student {dc.student!r}; use one of: {', '.join(DETECTORS)}")
    if dc.method != "none" and not teachers:
        raise MedDetError(f"--method {dc.method} needs teacher checkpoints; pass --teachers "
                          "T1.pt,T2.pt,... (or --method none for the student alone)")
    if dc.teacher_img_size is not None:
        if dc.teacher_img_size % 32:
            raise MedDetError(f"teacher_img_size must be a multiple of 32, got {dc.teacher_img_size}")
        if dc.method != "meddet":
            raise MedDetError(f"teacher_img_size only applies to --method meddet (AFA pools the "
                              f"teachers' features); {dc.method} runs the teacher at the "
                              "student's size")
    if du.get_world_size() > 1:
        raise MedDetError("meddet distill runs in a single process; launch it without torchrun")


def build_distill_trainer(cfg: Config, run_dir: Path | None, *, teachers: Sequence[str | Path],
                          console: Any = None, device: torch.device | None = None) -> DistillRun:
    """Data, teachers, student, distillation modules, optimisers and hooks, ready to train.

    Args:
        cfg: resolved config (``data.root`` set; ``distill`` section chooses the method).
        run_dir: where the engine's writers go (``None``: no files, e.g. in tests).
        teachers: teacher checkpoint paths (ignored by ``--method none``).
        console: rich console for progress (optional).
        device: default ``cfg.train.device``.

    Raises:
        MedDetError: invalid weights, student name, teachers (not detectors, other classes),
            missing dataset.
    """
    from meddet.models import build_detector

    _validate(cfg, teachers)
    dc, tc = cfg.distill, cfg.train
    device = device or du.resolve_device(tc.device)
    datasets = build_datasets(cfg)
    train_ds, val_ds = datasets["train"], datasets["val"]
    class_names = list(train_ds.class_names)
    on_cuda_cl = device.type == "cuda" and tc.channels_last
    notes: list[str] = []
    loaded: list[Teacher] = []
    if dc.method != "none":
        loaded = load_teachers(teachers, class_names, device, channels_last=on_cuda_cl)
        if dc.method in SINGLE_TEACHER and len(loaded) > 1:
            best = pick_best_teacher(loaded)
            score = "no recorded val mAP50" if best.val_map50 is None else \
                f"val mAP50 {best.val_map50:.4f}"
            notes.append(f"{dc.method} uses one teacher: {best.path} ({best.model_name}, {score})")
            loaded = [best]
    elif teachers:
        notes.append("--method none trains the student alone; the teachers are ignored")

    seed_everything(tc.seed)
    overrides = model_overrides(cfg)
    student = build_detector(dc.student, num_classes=len(class_names), **overrides)
    student = prepare_model(student, cfg, device)
    kd = build_kd_module(dc.method, student=student, teachers=[t.model for t in loaded], cfg=cfg)
    if kd is not None:
        kd = kd.to(device)

    loader, ipe = build_train_loader(train_ds, batch_size=tc.batch_size, workers=cfg.data.workers,
                                     seed=tc.seed, device=device)
    planned = tc.epochs * ipe
    max_iters = min(planned, tc.max_iters) if tc.max_iters else planned
    lr = scaled_lr(tc.lr, tc.batch_size, tc.base_batch_size)
    student_params = [p for p in unwrap_model(student).parameters() if p.requires_grad]
    d_params: list[nn.Parameter] = []
    if isinstance(kd, MedDetDistiller):
        kd_params = list(kd.student_side_parameters())
        d_params = list(kd.teacher_side_parameters())
    elif kd is not None:
        kd_params = list(kd.parameters())
    else:
        kd_params = []
    clip_params = student_params + kd_params
    optimizer = build_optimizer(clip_params, lr=lr, momentum=tc.momentum,
                                weight_decay=tc.weight_decay, kind=tc.optimizer)
    scheduler = build_scheduler(optimizer, total_iters=planned, lr_steps=tc.lr_steps,
                                warmup_iters=tc.warmup_iters, warmup_ratio=tc.warmup_ratio)
    # Adam with β1 = 0.5, the usual choice for GAN discriminators (DCGAN).
    d_opt = torch.optim.Adam(d_params, lr=dc.disc_lr, betas=(0.5, 0.999)) if d_params else None

    stored = {k: v for k, v in overrides.items() if k != "pretrained"}
    meta = make_meta(
        model_name=dc.student, num_classes=len(class_names), class_names=class_names,
        img_size=cfg.data.img_size, model_overrides=stored, config=cfg.model_dump(mode="json"),
        teachers=[{"path": t.path, "model_name": t.model_name, "val_mAP50": t.val_map50}
                  for t in loaded],
        distill={"method": dc.method, "fusion": dc.fusion, "aatm": dc.aatm, "sigma": dc.sigma,
                 "tau": dc.tau, "num_teachers": len(loaded)})
    eval_fn = build_eval_fn(val_ds, batch_size=tc.batch_size, workers=cfg.data.workers)
    header = (f"distill {dc.method} -> {dc.student} from {len(loaded)} teacher(s) on "
              f"{cfg.data.root} ({len(train_ds)} train / {len(val_ds)} val images, "
              f"{cfg.data.img_size} px), batch {tc.batch_size}, lr {lr:g}, device {device}: ")
    hooks = default_hooks(run_dir, meta, eval_fn=eval_fn, eval_every=tc.eval_every,
                          checkpoint_every=tc.checkpoint_every,
                          checkpoint_every_iters=tc.checkpoint_every_iters, console=console,
                          log_header=header)
    step = DistillStep(method=dc.method, teachers=[t.model for t in loaded], kd=kd,
                       sigma=dc.sigma, tau=dc.tau, clip_params=clip_params, d_optimizer=d_opt,
                       teacher_img_size=dc.teacher_img_size)
    checkpointables: dict[str, Any] = {}
    if kd is not None:
        checkpointables["distill"] = kd
    if d_opt is not None:
        checkpointables["disc_optimizer"] = d_opt
    trainer = Trainer(student, optimizer, loader, iters_per_epoch=ipe, max_iters=max_iters,
                      scheduler=scheduler, hooks=hooks, device=device, seed=tc.seed,
                      amp=tc.amp, channels_last=tc.channels_last, grad_clip=tc.grad_clip,
                      max_nonfinite=tc.max_nonfinite, step_fn=step,
                      checkpointables=checkpointables)
    return DistillRun(trainer, step, loaded, kd, meta, notes)


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
        "time_split", "teachers", "notes"}``.

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
    trainer = run.trainer
    if ckpt is not None:
        if list(ckpt["meta"]["class_names"]) != list(run.meta["class_names"]):
            raise MedDetError("cannot resume: the checkpoint's classes differ from the dataset's")
        trainer.load_state_dict(ckpt)
        del ckpt
    if console is not None:
        for note in run.notes:
            console.print(note)
        console.print(f"[bold]distill {cfg.distill.method}[/] -> {cfg.distill.student}: "
                      f"{trainer.max_iters} iterations ({trainer.iters_per_epoch} per epoch) "
                      f"-> {run_dir}")
    trainer.train()
    student_pt = write_student_checkpoint(Path(run_dir))
    from meddet.engine.hooks import CheckpointHook

    ckpt_hook = next((h for h in trainer.hooks if isinstance(h, CheckpointHook)), None)
    return {
        "run_dir": str(run_dir),
        "student": str(student_pt),
        "last": str(Path(run_dir) / "last.pt"),
        "best": str(Path(run_dir) / "best.pt"),
        "best_mAP50": ckpt_hook.best if ckpt_hook is not None else None,
        "history": trainer.storage.history,
        "iters": trainer.iter,
        "seconds": time.perf_counter() - t0,
        "time_split": dict(run.step.seconds),
        "teachers": run.meta["teachers"],
        "notes": run.notes,
    }
