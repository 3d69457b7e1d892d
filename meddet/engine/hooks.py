"""Hooks around the training step: LR schedule, evaluation, checkpoints, results, progress, log.

The order used by :func:`meddet.engine.defaults.default_hooks`, and why:

1. :class:`LRSchedulerHook`  records the rate an iteration used, then advances the schedule.
2. :class:`EvalHook`         puts validation metrics into the epoch's row (all ranks take part).
3. :class:`ResultsHook`      appends the finished row to the history, writes results.csv and
                             curves.png (rank 0).
4. :class:`CheckpointHook`   writes last.pt (with that history) and best.pt (rank 0).
5. :class:`ProgressHook`, :class:`LogFileHook`  print/log the row (rank 0).
6. :class:`~meddet.engine.tensorboard.TensorBoardHook`  writes the row as TensorBoard events
                             (rank 0, when logging is on).

Writers are registered on rank 0 only, so the other ranks never touch the run directory.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from meddet._io import atomic_copy, atomic_write_text
from meddet.engine import distributed as du
from meddet.engine.checkpoint import save_checkpoint, unwrap_model
from meddet.engine.events import HookBase

#: Metric columns of results.csv after the loss terms and lr.
VAL_COLUMNS = ("mAP", "mAP50", "AR100", "recall")
#: Training statistics written after the loss terms when the step reports them: the mean IoU
#: of the positives' boxes with their objects (the epoch's mean of the per-step means), which,
#: unlike the score-weighted GIoU loss, reads the same for every model ("has it left the
#: plateau": it rises from the initial boxes' IoU once box regression progresses).
TRAIN_STAT_COLUMNS = ("pos_iou",)


def _stat_keys(rows: list[Mapping[str, Any]]) -> list[str]:
    return [k for k in TRAIN_STAT_COLUMNS if any(r.get(k) is not None for r in rows)]


def _loss_keys(rows: list[Mapping[str, Any]]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("loss")}
    return sorted(keys, key=lambda k: (k != "loss", k))


def format_row(row: Mapping[str, Any], epochs: int) -> str:
    """The one-line epoch summary shared by the console and the log file."""
    parts = [f"epoch {row.get('epoch')}/{epochs}"]
    losses = _loss_keys([row])
    if "loss" in row:
        parts.append(f"loss {row['loss']:.4f}")
    terms = [f"{k[5:]} {row[k]:.4f}" for k in losses if k != "loss"]
    if terms:
        parts.append("(" + " ".join(terms) + ")")
    if row.get("pos_iou") is not None:
        parts.append(f"pos IoU {row['pos_iou']:.3f}")
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.2e}")
    vals = [f"{k} {row[k]:.4f}" for k in VAL_COLUMNS if row.get(k) is not None]
    if vals:
        parts.append("val " + " ".join(vals))
    if row.get("seconds") is not None:
        parts.append(f"{row['seconds']:.1f}s")
    if row.get("images_per_s") is not None:
        parts.append(f"{row['images_per_s']:.1f} img/s")
    if row.get("data_fraction") is not None:
        parts.append(f"data {100 * row['data_fraction']:.0f}%")
    if row.get("nonfinite"):
        parts.append(f"non-finite steps skipped {row['nonfinite']}")
    return "  ".join(parts)


class LRSchedulerHook(HookBase):
    """Steps an iteration-based scheduler after every iteration and logs the rate used.

    Args:
        scheduler: defaults to ``trainer.scheduler``.
        optimizer: whose first group's rate is logged; defaults to ``trainer.optimizer``.
    """

    def __init__(self, scheduler: Any = None, optimizer: Any = None) -> None:
        self._scheduler = scheduler
        self._optimizer = optimizer

    def after_step(self) -> None:
        opt = self._optimizer or self.trainer.optimizer
        self.trainer.storage.put_epoch(lr=float(opt.param_groups[0]["lr"]))
        sched = self._scheduler or self.trainer.scheduler
        if sched is not None:
            sched.step()


class EvalHook(HookBase):
    """Runs ``eval_fn(trainer) -> dict of metrics`` every ``every`` epochs and at the end.

    ``eval_fn`` is called on every rank (it may gather predictions across ranks) and must
    return the same metrics everywhere. Scalar metrics go into the epoch's row.
    """

    def __init__(self, eval_fn: Callable[[Any], Mapping[str, Any]], every: int = 1) -> None:
        self.eval_fn = eval_fn
        self.every = max(1, int(every))
        self.last_metrics: dict[str, Any] = {}

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.epoch + 1
        if epoch % self.every and t.iter < t.max_iters:
            return
        t0 = time.perf_counter()
        metrics = dict(self.eval_fn(t))
        self.last_metrics = metrics
        t.storage.put_epoch(eval_seconds=time.perf_counter() - t0,
                            **{k: float(v) for k, v in metrics.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})


class ResultsHook(HookBase):
    """Closes the epoch's row (seconds, speed), keeps the history, writes results.csv and curves.

    Args:
        run_dir: where ``results.csv`` and ``curves.png`` go.
        plot: also redraw ``curves.png`` every epoch.
    """

    def __init__(self, run_dir: str | Path, *, plot: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.plot = plot

    def after_epoch(self) -> None:
        t = self.trainer
        st = t.storage
        seconds = time.perf_counter() - t.epoch_start_time
        iters = t.iter - max(t.start_iter, t.epoch * t.iters_per_epoch)
        train_seconds = seconds - float(st.row.get("eval_seconds") or 0.0)
        images = iters * t.last_batch_size * du.get_world_size()
        st.put_epoch(seconds=seconds,
                     images_per_s=images / train_seconds if train_seconds > 0 else None,
                     data_fraction=t.data_time / train_seconds if train_seconds > 0 else None,
                     nonfinite=st.nonfinite_total)
        st.history = [r for r in st.history if r.get("epoch") != st.row.get("epoch")]
        st.history.append(dict(st.row))
        self.write()

    def write(self) -> None:
        """(Re)write results.csv and curves.png from the history."""
        rows = self.trainer.storage.history
        # nonfinite: steps skipped so far in the run for a NaN/inf loss or gradient (cumulative).
        columns = ["epoch", "iter", *_loss_keys(rows), *_stat_keys(rows), "lr", *VAL_COLUMNS,
                   "seconds", "nonfinite"]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        atomic_write_text(self.run_dir / "results.csv", buf.getvalue())
        if self.plot:
            from meddet.engine.plots import plot_training_curves

            plot_training_curves(rows, self.run_dir / "curves.png")


class CheckpointHook(HookBase):
    """Writes ``last.pt`` every ``every_epochs`` epochs and after the last one (and every
    ``every_iters``), ``best.pt`` on a new best.

    Both hold the full training state (either resumes the run); their ``model`` is the
    trainer's :attr:`~meddet.engine.trainer.Trainer.eval_model` (the weight EMA when the run
    keeps one, with the trained weights under ``train_model``). :attr:`best` is the best
    ``metric`` so far; a checkpoint's copy of it is read with :func:`recorded_best`. Fewer ``last.pt`` writes save
    time with large models (a GFL-R152 with AdamW state is ~800 MB) at the price of losing up
    to ``every_epochs - 1`` epochs to a crash.

    Args:
        run_dir: checkpoint folder.
        meta: the checkpoint metadata (:func:`~meddet.engine.checkpoint.make_meta`).
        every_epochs: write ``last.pt`` after every this many epochs.
        every_iters: also write ``last.pt`` every this many iterations.
        metric: row key that selects ``best.pt`` (higher is better).
    """

    # The key old checkpoints were written with (it was the class name): keep it.
    state_key = "CheckpointHook"

    def __init__(self, run_dir: str | Path, meta: Mapping[str, Any], *, every_epochs: int = 1,
                 every_iters: int | None = None, metric: str = "mAP50") -> None:
        if every_epochs < 1:
            raise ValueError(f"every_epochs must be >= 1, got {every_epochs}")
        self.run_dir = Path(run_dir)
        self.meta = dict(meta)
        self.every_epochs = every_epochs
        self.every_iters = every_iters
        self.metric = metric
        self.best: float | None = None
        self.saved: list[str] = []

    @property
    def last_path(self) -> Path:
        """``run_dir/last.pt``."""
        return self.run_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        """``run_dir/best.pt``."""
        return self.run_dir / "best.pt"

    def _healthy(self) -> bool:
        # During a run of non-finite steps the weights were not updated, but BatchNorm running
        # statistics may have absorbed NaNs in the forward pass: keep the last good checkpoint.
        t = self.trainer
        if t.nonfinite_in_a_row > 0:
            return False
        models = {id(m): m for m in (unwrap_model(t.model), t.eval_model)}.values()
        return all(bool(torch.isfinite(v).all()) for m in models for v in m.state_dict().values()
                   if v.is_floating_point())

    def _save(self, path: Path, metrics: Mapping[str, Any], *,
              iters_done: int | None = None) -> None:
        state = self.trainer.state_dict(iters_done=iters_done)
        state["metrics"] = {k: v for k, v in metrics.items()
                            if isinstance(v, (int, float, str)) or v is None}
        state["meta"] = self.meta
        save_checkpoint(path, state)
        self.saved.append(path.name)

    def _save_last(self, metrics: Mapping[str, Any], *, iters_done: int | None = None) -> None:
        self._save(self.last_path, metrics, iters_done=iters_done)

    def _epoch_writes_last(self, epoch: int, done_iters: int) -> bool:
        """Whether the end of (0-based) ``epoch``, at ``done_iters`` iterations, writes last.pt."""
        return (epoch + 1) % self.every_epochs == 0 or done_iters >= self.trainer.max_iters

    def after_step(self) -> None:
        t = self.trainer
        done = t.iter + 1
        if not self.every_iters or done % self.every_iters:
            return
        if ((done % t.iters_per_epoch == 0 or done == t.max_iters)
                and self._epoch_writes_last(t.epoch, done)):
            return  # after_epoch writes this one, with the epoch's metrics
        if not self._healthy():
            return
        # The counter still names this iteration; the checkpoint must say "resume after it".
        self._save_last(t.storage.latest, iters_done=done)

    def after_epoch(self) -> None:
        if not self._healthy():
            return
        row = self.trainer.storage.row
        value = row.get(self.metric)
        is_best = False
        if value is not None and not math.isnan(float(value)):
            is_best = self.best is None or float(value) > self.best
            if is_best:
                self.best = float(value)
        write_last = self._epoch_writes_last(self.trainer.epoch, self.trainer.iter)
        write_best = is_best or not self.best_path.exists()
        if write_last:
            self._save_last(row)
        if write_best and write_last:
            # last.pt's bytes (a hard link where possible): no second serialisation or copy
            # of a large model.
            atomic_copy(self.last_path, self.best_path)
            self.saved.append(self.best_path.name)
        elif write_best:
            self._save(self.best_path, row)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "metric": self.metric}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # With every_epochs > 1, best.pt can be newer than the last.pt being resumed: keep its
        # score so a worse epoch of the resumed run does not overwrite it.
        scores = [v for v in (state.get("best"), self._score_on_disk()) if v is not None]
        self.best = max(scores) if scores else None

    def _score_on_disk(self) -> float | None:
        """The ``metric`` recorded in the existing best.pt (memory-mapped: no tensor is read)."""
        if not self.best_path.is_file():
            return None
        try:
            ckpt = torch.load(self.best_path, map_location="cpu", weights_only=True, mmap=True)
            value = ckpt.get("metrics", {}).get(self.metric)
            return None if value is None or math.isnan(float(value)) else float(value)
        except Exception:  # unreadable: the resumed state decides, as before
            return None


def recorded_best(ckpt: Mapping[str, Any], metric: str = "mAP50") -> float | None:
    """The best ``metric`` a run had reached when ``ckpt`` was written.

    The :class:`CheckpointHook`'s saved score when it tracked ``metric``, else the metrics row
    stored with the weights (a checkpoint written outside the trainer).

    Args:
        ckpt: a loaded checkpoint (:func:`~meddet.engine.checkpoint.load_checkpoint`).
        metric: the row key, e.g. ``"mAP50"``.

    Returns:
        The score, or ``None`` when neither place holds a finite number.
    """
    hooks = (ckpt.get("trainer") or {}).get("hooks") or {}
    state = hooks.get(CheckpointHook.state_key) or {}
    best = state.get("best") if state.get("metric", metric) == metric else None
    if best is None:
        best = (ckpt.get("metrics") or {}).get(metric)
    try:
        return None if best is None or math.isnan(float(best)) else float(best)
    except (TypeError, ValueError):
        return None


class ProgressHook(HookBase):
    """A rich progress bar per epoch (live losses, images/s, ETA) and a summary line after it.

    Args:
        console: a ``rich.console.Console``.
        loss_keys: which scalars to show live (default: every ``loss*``).
    """

    def __init__(self, console: Any, *, loss_keys: tuple[str, ...] | None = None) -> None:
        self.console = console
        self.loss_keys = loss_keys
        self._progress: Any = None
        self._task: Any = None
        self._t0 = 0.0
        self._images = 0

    def before_epoch(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        t = self.trainer
        total = min(t.iters_per_epoch, t.max_iters - t.epoch * t.iters_per_epoch)
        done = t.iter - t.epoch * t.iters_per_epoch
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self._progress.start()
        self._task = self._progress.add_task("train", total=total, completed=done,
                                             epoch=f"{t.epoch + 1}/{t.epochs}", losses="",
                                             speed="")
        self._t0 = time.perf_counter()
        self._images = 0

    def after_step(self) -> None:
        if self._progress is None:
            return
        t = self.trainer
        self._images += t.last_batch_size * du.get_world_size()
        latest = t.storage.latest
        keys = self.loss_keys or tuple(k for k in sorted(latest, key=lambda k: (k != "loss", k))
                                       if k.startswith("loss"))
        losses = " ".join(f"{k}={latest[k]:.3f}" for k in keys if k in latest)
        dt = time.perf_counter() - self._t0
        speed = f"{self._images / dt:.1f} img/s" if dt > 0 else ""
        self._progress.update(self._task, advance=1, losses=losses, speed=speed)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def after_epoch(self) -> None:
        self._stop()
        self.console.print(format_row(self.trainer.storage.row, self.trainer.epochs),
                           markup=False, highlight=False)

    def after_train(self) -> None:
        self._stop()


class LogFileHook(HookBase):
    """Appends plain-text lines to the run's log: a start line, every ``period`` iterations,
    every epoch summary, and how training ended."""

    def __init__(self, path: str | Path, *, period: int = 20, header: str = "") -> None:
        self.path = Path(path)
        self.period = max(1, int(period))
        self.header = header

    def write(self, line: str) -> None:
        """Append one time-stamped line."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")

    def before_train(self) -> None:
        t = self.trainer
        what = "resuming at" if t.start_iter else "starting at"
        self.write(f"{self.header}{what} iteration {t.start_iter}/{t.max_iters} "
                   f"({t.iters_per_epoch} per epoch, {t.epochs} epochs)")

    def after_step(self) -> None:
        t = self.trainer
        if (t.iter + 1) % self.period == 0:
            latest = t.storage.latest
            losses = " ".join(f"{k}={v:.4f}" for k, v in sorted(latest.items()))
            lr = t.storage.row.get("lr")
            self.write(f"iter {t.iter + 1}/{t.max_iters} {losses} lr={lr:.3e}" if lr is not None
                       else f"iter {t.iter + 1}/{t.max_iters} {losses}")

    def after_epoch(self) -> None:
        self.write(format_row(self.trainer.storage.row, self.trainer.epochs))

    def after_train(self) -> None:
        t = self.trainer
        if t.exception is None:
            self.write(f"finished: {t.iter} iterations; steps per rank {t.steps_per_rank}")
        else:
            self.write(f"stopped at iteration {t.iter}: {type(t.exception).__name__}: "
                       f"{t.exception}")
