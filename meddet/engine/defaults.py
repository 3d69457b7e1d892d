"""Turn a :class:`~meddet.config.Config` into a ready trainer: data, model, optimiser, hooks.

This is the one place where config values become constructor arguments for the engine
(the trainer and hooks take plain values). :func:`pretrain` is what ``meddet pretrain-teacher``
runs; the distillation trainer reuses :func:`build_train_loader`, :func:`build_eval_fn`,
:func:`default_hooks` and :func:`prepare_model` around its own step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from meddet.config import Config
from meddet.engine import distributed as du
from meddet.engine.checkpoint import load_checkpoint, make_meta, seed_everything, unwrap_model
from meddet.engine.evaluator import evaluate_coco, predict_dataset
from meddet.engine.hooks import (
    CheckpointHook,
    EvalHook,
    LogFileHook,
    LRSchedulerHook,
    ProgressHook,
    ResultsHook,
)
from meddet.engine.schedule import build_optimizer, build_scheduler, scaled_lr
from meddet.engine.trainer import HookBase, Trainer
from meddet.errors import MedDetError

#: ``ModelConfig`` fields that are ``build_detector`` overrides.
MODEL_OVERRIDE_FIELDS = ("nmode", "pretrained", "score_thr", "nms_iou", "max_per_img",
                         "min_box_size", "lambda_qfl", "mu_dfl")


def require_split(root: str | Path | None, split: str) -> Path:
    """Check that ``root`` is a dataset folder with ``split``; return ``root`` as a Path.

    Raises:
        MedDetError: no root given, the folder is missing, or ``annotations/<split>.json`` is.
    """
    if root is None:
        raise MedDetError("no dataset given; pass --data DATASET_DIR (made by `meddet data synth` "
                          "or any COCO dataset with images/<split>/ and annotations/<split>.json)")
    root = Path(root)
    if not root.is_dir():
        raise MedDetError(f"dataset folder {root} does not exist; create one with "
                          "`meddet data synth --out DIR` or pass the right --data")
    ann = root / "annotations" / f"{split}.json"
    if not ann.is_file():
        have = sorted(p.stem for p in (root / "annotations").glob("*.json")) \
            if (root / "annotations").is_dir() else []
        raise MedDetError(f"dataset {root} has no {split!r} split ({ann} is missing); available: "
                          + (", ".join(have) if have else "none (is this a meddet dataset folder?)"))
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

    Every rank predicts its share; rank 0 computes the metrics and broadcasts them.
    """

    def eval_fn(trainer: Trainer) -> dict[str, Any]:
        model = unwrap_model(trainer.model)
        results = predict_dataset(model, dataset, device=trainer.device, batch_size=batch_size,
                                  workers=workers, score_thr=score_thr or 0.0,
                                  channels_last=trainer.channels_last)
        metrics = None
        if du.is_main_process():
            metrics = evaluate_coco(dataset.coco, results, dataset.class_names, dataset.cat_ids,
                                    img_ids=list(dataset.ids))
        return du.broadcast_object(metrics)

    return eval_fn


def default_hooks(run_dir: Path | None, meta: Mapping[str, Any], *, eval_fn: Callable | None,
                  eval_every: int = 1, checkpoint_every: int = 1,
                  checkpoint_every_iters: int | None = None,
                  console: Any = None, log_header: str = "") -> list[HookBase]:
    """The standard hooks in their required order (see ``meddet.engine.hooks``).

    Writers (results, checkpoints, progress, log) are only created on rank 0 and only when
    ``run_dir`` is given.
    """
    hooks: list[HookBase] = [LRSchedulerHook()]
    if eval_fn is not None:
        hooks.append(EvalHook(eval_fn, every=eval_every))
    if run_dir is not None and du.is_main_process():
        hooks.append(ResultsHook(run_dir))
        hooks.append(CheckpointHook(run_dir, meta, every_epochs=checkpoint_every,
                                    every_iters=checkpoint_every_iters))
        if console is not None:
            hooks.append(ProgressHook(console))
        hooks.append(LogFileHook(Path(run_dir) / "train.log", header=log_header))
    return hooks


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
        "steps_per_rank"}``.

    Raises:
        MedDetError: missing dataset/split, unknown model, incompatible resume checkpoint,
            training stopped on non-finite losses.
    """
    from meddet.models import build_detector

    t0 = time.perf_counter()
    device = device or du.resolve_device(cfg.train.device)
    tc = cfg.train
    ckpt = load_checkpoint(resolve_resume(resume)) if resume is not None else None
    datasets = build_datasets(cfg)
    train_ds, val_ds = datasets["train"], datasets["val"]
    if ckpt is not None:
        meta = ckpt["meta"]
        if meta["model_name"] != cfg.model.name:
            raise MedDetError(f"cannot resume: the checkpoint is a {meta['model_name']} run, "
                              f"not {cfg.model.name}; pass --model {meta['model_name']}")
        if list(meta["class_names"]) != list(train_ds.class_names):
            raise MedDetError(f"cannot resume: checkpoint classes {meta['class_names']} differ "
                              f"from the dataset's {list(train_ds.class_names)}")

    # Seed before building the model so that initial weights are reproducible.
    seed_everything(tc.seed)
    overrides = model_overrides(cfg)
    model = build_detector(cfg.model.name, num_classes=len(train_ds.class_names), **overrides)
    model = prepare_model(model, cfg, device)

    world = du.get_world_size()
    loader, ipe = build_train_loader(train_ds, batch_size=tc.batch_size, workers=cfg.data.workers,
                                     seed=tc.seed, device=device)
    planned = tc.epochs * ipe
    max_iters = min(planned, tc.max_iters) if tc.max_iters else planned
    lr = scaled_lr(tc.lr, tc.batch_size * world, tc.base_batch_size)
    optimizer = build_optimizer(unwrap_model(model), lr=lr, momentum=tc.momentum,
                                weight_decay=tc.weight_decay, kind=tc.optimizer)
    # The schedule spans the planned epochs; --max-iters only stops early, so a capped run is a
    # prefix of the full one and can be resumed into it.
    scheduler = build_scheduler(optimizer, total_iters=planned, lr_steps=tc.lr_steps,
                                warmup_iters=tc.warmup_iters, warmup_ratio=tc.warmup_ratio)
    stored_overrides = {k: v for k, v in overrides.items() if k != "pretrained"}
    meta = make_meta(model_name=cfg.model.name, num_classes=len(train_ds.class_names),
                     class_names=list(train_ds.class_names), img_size=cfg.data.img_size,
                     model_overrides=stored_overrides, config=cfg.model_dump(mode="json"))
    eval_fn = build_eval_fn(val_ds, batch_size=tc.batch_size, workers=cfg.data.workers)
    header = (f"{cfg.model.name} on {cfg.data.root} ({len(train_ds)} train / {len(val_ds)} val "
              f"images, {cfg.data.img_size} px), batch {tc.batch_size} x {world} process(es), "
              f"lr {lr:g}, device {device}: ")
    hooks = default_hooks(run_dir, meta, eval_fn=eval_fn, eval_every=tc.eval_every,
                          checkpoint_every=tc.checkpoint_every,
                          checkpoint_every_iters=tc.checkpoint_every_iters, console=console,
                          log_header=header)
    trainer = Trainer(model, optimizer, loader, iters_per_epoch=ipe, max_iters=max_iters,
                      scheduler=scheduler, hooks=hooks, device=device, seed=tc.seed,
                      amp=tc.amp, channels_last=tc.channels_last, grad_clip=tc.grad_clip,
                      max_nonfinite=tc.max_nonfinite)
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
        del ckpt
    if console is not None and du.is_main_process():
        from rich.markup import escape

        console.print(f"[bold]{escape(cfg.model.name)}[/]: " + escape(
            f"{header.rstrip(': ')}; {max_iters} iterations ({ipe} per epoch) -> {run_dir}"))
    trainer.train()
    du.barrier()
    ckpt_hook = next((h for h in trainer.hooks if isinstance(h, CheckpointHook)), None)
    return {
        "run_dir": str(run_dir),
        "last": str(Path(run_dir) / "last.pt"),
        "best": str(Path(run_dir) / "best.pt"),
        "best_mAP50": ckpt_hook.best if ckpt_hook is not None else None,
        "history": trainer.storage.history,
        "iters": trainer.iter,
        "seconds": time.perf_counter() - t0,
        "steps_per_rank": trainer.steps_per_rank,
    }

