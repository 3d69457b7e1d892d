"""Turn a :class:`~meddet.config.Config` into a ready trainer: data, model, optimiser, hooks.

This is the one place where config values become constructor arguments for the engine
(the trainer and hooks take plain values). :func:`assemble_trainer` builds every training run
(seed, model, loader, learning rate, optimiser and schedule, checkpoint metadata, evaluation,
hooks, :class:`~meddet.engine.trainer.Trainer`); :func:`run_training` starts it and returns
the summary. :func:`pretrain` (``meddet pretrain-teacher``) is those two calls; the distillation
trainer (:mod:`meddet.distill.trainer`) makes the same two calls with a
:class:`TrainerExtension` that adds its method's modules and step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meddet.config import Config, ModelConfig
from meddet.engine import distributed as du
from meddet.engine.checkpoint import (
    load_checkpoint,
    make_meta,
    seed_everything,
    spacing_meta,
    unwrap_model,
)
from meddet.engine.curves import last_quarter, val_curve
from meddet.engine.ema import ModelEMA
from meddet.engine.evaluate import evaluate_model
from meddet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    LogFileHook,
    LRSchedulerHook,
    ProgressHook,
    ResultsHook,
)
from meddet.engine.schedule import build_optimizer, build_scheduler, scaled_lr
from meddet.engine.tensorboard import tensorboard_hook
from meddet.engine.trainer import HookBase, Trainer
from meddet.errors import MedDetError

#: ``ModelConfig`` fields that are ``build_detector`` overrides: all but the zoo name (each is
#: one of ``meddet.models.zoo.OVERRIDES``; a test checks it).
MODEL_OVERRIDE_FIELDS = tuple(f for f in ModelConfig.model_fields if f != "name")


def require_split(root: str | Path | None, split: str) -> Path:
    """Check that ``root`` is a dataset folder with ``split``; return ``root`` as a Path.

    Raises:
        MedDetError: no root given, the folder is missing, or ``annotations/<split>.json`` is.
    """
    if root is None:
        raise MedDetError("no dataset given; pass --data DATASET_DIR (made by `meddet data synth` "
                          "or any COCO dataset with images/<split>/ and annotations/<split>.json)")
    root = Path(root)
    if root.is_file() or root.suffix.lower() in (".yaml", ".yml", ".json"):
        raise MedDetError(f"--data {root} is not a folder; pass a meddet dataset folder (images/ + "
                          "annotations/). A YOLO data.yaml, Pascal VOC or COCO set is converted "
                          f"with `meddet data import {root.parent} OUT`, then --data OUT")
    if not root.is_dir():
        raise MedDetError(f"dataset folder {root} does not exist; create one with "
                          "`meddet data synth --out DIR` or pass the right --data")
    ann = root / "annotations" / f"{split}.json"
    if not ann.is_file():
        have = sorted(p.stem for p in (root / "annotations").glob("*.json")) \
            if (root / "annotations").is_dir() else []
        raise MedDetError(f"dataset {root} has no {split!r} split ({ann} is missing); available: "
                          + (", ".join(have) if have else "none (not a meddet dataset folder: "
                             f"convert a YOLO, VOC or COCO set with `meddet data import {root} OUT`)"))
    return root


def require_boxes(dataset: Any, purpose: str) -> None:
    """Refuse a split without images or without a single (non-crowd) box.

    Training on it learns nothing and COCO metrics on it are undefined (-1), so both are
    reported as a data problem instead of running.

    Args:
        dataset: a :class:`~meddet.data.CocoDetection`.
        purpose: what the split was for, e.g. ``"train on"`` or ``"evaluate on"``.

    Raises:
        MedDetError: naming the annotation file.
    """
    ann_file = getattr(dataset, "ann_file", dataset)
    if len(dataset) == 0:
        raise MedDetError(f"{ann_file} lists no images: nothing to {purpose}; check the file")
    boxes = sum(1 for a in dataset.coco.anns.values() if not a.get("iscrowd", 0))
    if boxes == 0:
        dropped = getattr(dataset, "num_skipped", 0)
        why = (f" ({dropped} invalid box(es) were skipped by data.on_bad_box: skip)" if dropped
               else "")
        raise MedDetError(f"{ann_file} has no annotated boxes in its {len(dataset)} images{why}: "
                          f"nothing to {purpose}; check the annotation file")


def model_overrides(cfg: Config) -> dict[str, Any]:
    """The ``build_detector`` keywords set in ``cfg.model`` (unset ones left out)."""
    m = cfg.model
    return {k: getattr(m, k) for k in MODEL_OVERRIDE_FIELDS if getattr(m, k) is not None}


def build_datasets(cfg: Config, *, splits: tuple[str, ...] = ("train", "val")) -> dict[str, Any]:
    """The training dataset (augmented) and evaluation datasets named in ``splits``."""
    from meddet.data import CocoDetection

    root = cfg.data.root
    for split in splits:
        require_split(root, split)
    out = {}
    for split in splits:
        # CocoDetection's `train` flag only switches augmentation on.
        augment = split == "train" and cfg.data.augment
        out[split] = CocoDetection(
            root, split, img_size=cfg.data.img_size, train=augment,
            augment=cfg.data.augmentation if augment else None,
            on_bad_box=cfg.data.on_bad_box, seed=cfg.train.seed)
    if "train" in out:
        require_boxes(out["train"], "train on")
    return out


def build_train_loader(dataset: Any, *, batch_size: int, workers: int, seed: int,
                       device: torch.device) -> tuple[torch.utils.data.DataLoader, int]:
    """A resumable, rank-sharded training loader and its iterations per epoch.

    Returns:
        ``(loader, iters_per_epoch)``; the last batch of an epoch may be smaller.
    """
    from meddet.data import collate

    sampler = du.ResumableSampler(len(dataset), shuffle=True, seed=seed, rank=du.get_rank(),
                                  world_size=du.get_world_size())
    # No persistent workers: they would carry their RNG state across epochs, so a run resumed
    # at an epoch boundary would augment differently from an uninterrupted one.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
        collate_fn=collate, pin_memory=device.type == "cuda", drop_last=False,
        generator=torch.Generator(), prefetch_factor=4 if workers > 0 else None)
    return loader, math.ceil(sampler.num_samples() / batch_size)


def build_eval_fn(dataset: Any, *, batch_size: int, workers: int,
                  score_thr: float | None = None) -> Callable[[Trainer], dict[str, Any]]:
    """``eval_fn(trainer)`` for :class:`~meddet.engine.hooks.EvalHook`: COCO metrics on ``dataset``.

    Evaluates :attr:`~meddet.engine.trainer.Trainer.eval_model` (the weight EMA when the run
    keeps one). Every rank predicts its share; rank 0 computes the metrics and broadcasts them.
    """

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        _, metrics = evaluate_model(trainer.eval_model, dataset, device=trainer.device,
                                    batch_size=batch_size, workers=workers,
                                    score_thr=score_thr or 0.0,
                                    channels_last=trainer.channels_last)
        return du.broadcast_object(metrics)

    return eval_fn


def _standard_hooks(run_dir: Path | None, meta: Mapping[str, Any], *,
                    eval_fn: Callable | None, eval_every: int, checkpoint_every: int,
                    checkpoint_every_iters: int | None, console: Any,
                    log_header: str, val_dataset: Any = None
                    ) -> tuple[list[HookBase], CheckpointHook | None]:
    hooks: list[HookBase] = [LRSchedulerHook()]
    checkpoint = None
    if eval_fn is not None:
        hooks.append(EvalHook(eval_fn, every=eval_every))
    if run_dir is not None and du.is_main_process():
        hooks.append(ResultsHook(run_dir))
        checkpoint = CheckpointHook(run_dir, meta, every_epochs=checkpoint_every,
                                    every_iters=checkpoint_every_iters)
        hooks.append(checkpoint)
        if console is not None:
            hooks.append(ProgressHook(console))
        hooks.append(LogFileHook(Path(run_dir) / "train.log", header=log_header))
        board = tensorboard_hook(run_dir, dataset=val_dataset,
                                 class_names=getattr(val_dataset, "class_names", ()))
        if board is not None:  # after the writers: it reads the finished row
            hooks.append(board)
    return hooks, checkpoint


def default_hooks(run_dir: Path | None, meta: Mapping[str, Any], *, eval_fn: Callable | None,
                  eval_every: int = 1, checkpoint_every: int = 1,
                  checkpoint_every_iters: int | None = None,
                  console: Any = None, log_header: str = "") -> list[HookBase]:
    """The standard hooks in their required order (see ``meddet.engine.hooks``).

    Writers (results, checkpoints, progress, log) are only created on rank 0 and only when
    ``run_dir`` is given.
    """
    return _standard_hooks(run_dir, meta, eval_fn=eval_fn, eval_every=eval_every,
                           checkpoint_every=checkpoint_every,
                           checkpoint_every_iters=checkpoint_every_iters, console=console,
                           log_header=log_header)[0]


def prepare_model(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.nn.Module:
    """Move to ``device``, use channels_last on CUDA if configured, wrap in DDP under torchrun."""
    model = model.to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if du.get_world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # Frozen backbone stages have no gradients; everything else is used each step.
            find_unused_parameters=False)
    return model


def resolve_resume(resume: str | Path) -> Path:
    """A run directory (its ``last.pt``) or a checkpoint file, as the checkpoint path."""
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise MedDetError(f"nothing to resume: {path} does not exist")
    return path


@dataclass
class TrainerExtension:
    """What a recipe adds to the standard detector training (e.g. a distillation method).

    Attributes:
        params: trained by the main optimiser together with the model (after its parameters).
        step_fn: replaces the trainer's step (``None``: the detector's own loss).
        checkpointables: saved under the checkpoint's ``extra`` and restored on resume.
    """

    params: list[torch.nn.Parameter] = field(default_factory=list)
    step_fn: Callable[[Trainer], None] | None = None
    checkpointables: dict[str, Any] = field(default_factory=dict)


@dataclass
class AssembledTrainer:
    """A training run ready to start (see :func:`assemble_trainer`).

    Attributes:
        trainer: the loop, its hooks registered.
        meta: the metadata every checkpoint of the run carries.
        run_dir: where the writers go (``None``: no files).
        title: what is trained, e.g. ``gfl_r50`` or ``distill meddet -> meddet from 3 teacher(s)``.
        header: the run's description (the first line of ``train.log``).
        checkpoint: the hook that writes ``last.pt`` / ``best.pt`` and holds the best val
            mAP50 (``None`` without ``run_dir`` and on ranks other than 0).
    """

    trainer: Trainer
    meta: dict[str, Any]
    run_dir: Path | None
    title: str
    header: str
    checkpoint: CheckpointHook | None


def assemble_trainer(cfg: Config, run_dir: Path | None, *, model_name: str,
                     datasets: Mapping[str, Any], device: torch.device, title: str | None = None,
                     console: Any = None, meta_extra: Mapping[str, Any] | None = None,
                     extend: Callable[[torch.nn.Module], TrainerExtension] | None = None,
                     ) -> AssembledTrainer:
    """Build a detector and everything that trains it, as ``cfg`` says.

    In order: seed, model (moved, channels_last, DDP under torchrun), the recipe's extension
    (built from the prepared model, so its modules draw their initial weights after the
    model's), loader, learning rate (linear scaling by the total batch), optimiser over the
    model and the extension's parameters, schedule, the weight EMA (``train.ema``), checkpoint
    metadata (``"ema": true`` with an EMA), evaluation on ``datasets["val"]``, the standard
    hooks, :class:`~meddet.engine.trainer.Trainer`.

    Args:
        cfg: the resolved config (``train``, ``data`` and ``model`` sections are read).
        run_dir: where results, checkpoints and the log go (``None``: no files).
        model_name: the zoo name to build (``cfg.model.name`` or the distillation student).
        datasets: ``{"train": ..., "val": ...}`` from :func:`build_datasets`.
        device: where to train.
        title: what is trained, for the log and console (default ``model_name``).
        console: rich console for the progress bar (rank 0).
        meta_extra: further checkpoint metadata (e.g. the teachers of a distilled student).
        extend: ``extend(model) -> TrainerExtension`` adds modules, a step and state.

    Returns:
        The assembled run; start it with :func:`run_training`.
    """
    from meddet.models import build_detector

    tc = cfg.train
    title = title or model_name
    train_ds, val_ds = datasets["train"], datasets["val"]
    class_names = list(train_ds.class_names)
    # Seed before building the model so that initial weights are reproducible.
    seed_everything(tc.seed)
    overrides = model_overrides(cfg)
    model = build_detector(model_name, num_classes=len(class_names), **overrides)
    model = prepare_model(model, cfg, device)
    ext = extend(model) if extend is not None else TrainerExtension()

    world = du.get_world_size()
    loader, ipe = build_train_loader(train_ds, batch_size=tc.batch_size, workers=cfg.data.workers,
                                     seed=tc.seed, device=device)
    planned = tc.epochs * ipe
    max_iters = min(planned, tc.max_iters) if tc.max_iters else planned
    lr = scaled_lr(tc.lr, tc.batch_size * world, tc.base_batch_size)
    params = [p for p in unwrap_model(model).parameters() if p.requires_grad] + list(ext.params)
    optimizer = build_optimizer(params, lr=lr, momentum=tc.momentum,
                                weight_decay=tc.weight_decay, kind=tc.optimizer)
    # The schedule spans the planned epochs; --max-iters only stops early, so a capped run is a
    # prefix of the full one and can be resumed into it.
    scheduler = build_scheduler(optimizer, total_iters=planned, lr_steps=tc.lr_steps,
                                warmup_iters=tc.warmup_iters, warmup_ratio=tc.warmup_ratio)
    stored_overrides = {k: v for k, v in overrides.items() if k != "pretrained"}
    meta_extra = dict(meta_extra or {})
    ema = None
    if tc.ema:
        # A copy of the initial weights (no random draws: the run is the same without it).
        ema = ModelEMA(model, decay=tc.ema_decay, warmup=tc.ema_warmup)
        meta_extra["ema"] = True  # the checkpoints' `model` is the average
    meta = make_meta(model_name=model_name, num_classes=len(class_names),
                     class_names=class_names, img_size=cfg.data.img_size,
                     model_overrides=stored_overrides, config=cfg.model_dump(mode="json"),
                     **spacing_meta(train_ds, cfg.data.img_size), **meta_extra)
    eval_fn = build_eval_fn(val_ds, batch_size=tc.batch_size, workers=cfg.data.workers)
    ema_note = (f"weight EMA (decay {tc.ema_decay:g}, warm-up {tc.ema_warmup}), "
                if ema is not None else "")
    amp_note = ("bfloat16 autocast, " if tc.cpu_amp and torch.device(device).type == "cpu"
                else "")
    header = (f"{title} on {cfg.data.root} ({len(train_ds)} train / {len(val_ds)} val "
              f"images, {cfg.data.img_size} px), batch {tc.batch_size} x {world} process(es), "
              f"lr {lr:g}, {ema_note}{amp_note}device {device}: ")
    hooks, checkpoint = _standard_hooks(
        run_dir, meta, eval_fn=eval_fn, eval_every=tc.eval_every,
        checkpoint_every=tc.checkpoint_every, checkpoint_every_iters=tc.checkpoint_every_iters,
        console=console, log_header=header, val_dataset=val_ds)
    trainer = Trainer(model, optimizer, loader, iters_per_epoch=ipe, max_iters=max_iters,
                      scheduler=scheduler, hooks=hooks, device=device, seed=tc.seed,
                      amp=tc.amp, cpu_amp=tc.cpu_amp, channels_last=tc.channels_last,
                      grad_clip=tc.grad_clip,
                      max_nonfinite=tc.max_nonfinite, step_fn=ext.step_fn,
                      checkpointables=ext.checkpointables, ema=ema)
    return AssembledTrainer(trainer, meta, run_dir, title, header, checkpoint)


def run_training(run: AssembledTrainer, *, console: Any = None,
                 notes: tuple[str, ...] | list[str] = (),
                 started: float | None = None) -> dict[str, Any]:
    """Print what is about to run, train to the end, and summarise.

    Load a resume checkpoint into ``run.trainer`` before calling this.

    Args:
        run: from :func:`assemble_trainer`.
        console: rich console for the notes and the start line (rank 0 prints).
        notes: lines printed before the start line (e.g. which teacher a method uses).
        started: ``time.perf_counter()`` when the job began (default: now), for ``seconds``.

    Returns:
        ``{"run_dir", "last", "best", "best_mAP50", "history", "iters", "seconds",
        "last_quarter"}``: the checkpoint paths, the best val mAP50 (``None`` when never
        evaluated or without a run directory), the ``results.csv`` rows, the iterations done,
        the wall time, and val mAP50 over the last quarter of the run
        (:meth:`meddet.engine.curves.LastQuarter.to_dict`, ``None`` with too few validations).
    """
    started = time.perf_counter() if started is None else started
    trainer = run.trainer
    if console is not None and du.is_main_process():
        from rich.markup import escape

        for note in notes:
            console.print(escape(note))
        what = run.header[len(run.title):].rstrip(": ")
        console.print(f"[bold]{escape(run.title)}[/]" + escape(
            f"{what}; {trainer.max_iters} iterations ({trainer.iters_per_epoch} per epoch) "
            f"-> {run.run_dir}"))
    trainer.train()
    du.barrier()
    run_dir = Path(run.run_dir) if run.run_dir is not None else Path(".")
    quarter = (last_quarter(val_curve(run_dir / "results.csv"))
               if run.run_dir is not None else None)
    return {
        "run_dir": str(run.run_dir),
        "last_quarter": quarter.to_dict() if quarter is not None else None,
        "last": str(run_dir / "last.pt"),
        "best": str(run_dir / "best.pt"),
        "best_mAP50": run.checkpoint.best if run.checkpoint is not None else None,
        "history": trainer.storage.history,
        "iters": trainer.iter,
        "seconds": time.perf_counter() - started,
    }


def pretrain(cfg: Config, run_dir: Path, *, resume: str | Path | None = None,
             console: Any = None, device: torch.device | None = None) -> dict[str, Any]:
    """Train one detector as configured; the body of ``meddet pretrain-teacher``.

    Args:
        cfg: the resolved config (``data.root`` and ``model.name`` set).
        run_dir: where config, results, checkpoints, plots and the log go (rank 0 writes).
        resume: a checkpoint (or run directory) to continue from.
        console: rich console for the progress bar and summary lines (rank 0).
        device: defaults to ``cfg.train.device`` (with the local rank's GPU under torchrun).

    Returns:
        ``{"run_dir", "last", "best", "best_mAP50", "history", "iters", "seconds",
        "steps_per_rank"}`` (see :func:`run_training`; ``steps_per_rank``: iterations each
        process ran).

    Raises:
        MedDetError: missing dataset/split, unknown model, incompatible resume checkpoint,
            training stopped on non-finite losses.
    """
    t0 = time.perf_counter()
    device = device or du.resolve_device(cfg.train.device)
    ckpt = load_checkpoint(resolve_resume(resume)) if resume is not None else None
    datasets = build_datasets(cfg)
    if ckpt is not None:
        meta = ckpt["meta"]
        class_names = list(datasets["train"].class_names)
        if meta["model_name"] != cfg.model.name:
            raise MedDetError(f"cannot resume: the checkpoint is a {meta['model_name']} run, "
                              f"not {cfg.model.name}; pass --model {meta['model_name']}")
        if list(meta["class_names"]) != class_names:
            raise MedDetError(f"cannot resume: checkpoint classes {meta['class_names']} differ "
                              f"from the dataset's {class_names}")
    run = assemble_trainer(cfg, run_dir, model_name=cfg.model.name, datasets=datasets,
                           device=device, console=console)
    if ckpt is not None:
        run.trainer.load_state_dict(ckpt)
        del ckpt  # a large model's optimiser state: not kept for the whole run
    summary = run_training(run, console=console, started=t0)
    summary["steps_per_rank"] = run.trainer.steps_per_rank
    return summary
