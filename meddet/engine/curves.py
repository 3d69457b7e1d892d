"""A run's validation learning curve, read back from its ``results.csv``, and whether it has
reached a plateau.

A run is on a plateau when its validation mAP50 gains less than :data:`PLATEAU_POINTS` points
over the last quarter of its schedule: from the latest evaluation at or before 75 % of the
iterations run to the last evaluation. The CLIs print this after training and the study
records it per row, so a table can say which of its rows were still learning.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PLATEAU_POINTS", "LastQuarter", "ValPoint", "last_quarter", "training_cost",
           "val_curve"]

#: Largest gain of validation mAP50 (in points, i.e. percent) over the last quarter of a run
#: that still counts as a plateau.
PLATEAU_POINTS = 1.0


@dataclass(frozen=True)
class ValPoint:
    """One validation of a run: after ``iter`` iterations (end of ``epoch``)."""

    epoch: int
    iter: int
    mAP50: float
    mAP: float | None = None


@dataclass(frozen=True)
class LastQuarter:
    """Validation mAP50 from the start of a run's last quarter to its end."""

    start_iter: int
    end_iter: int
    start: float
    end: float

    @property
    def gain_points(self) -> float:
        """The gain in mAP50 points (percent)."""
        return 100.0 * (self.end - self.start)

    @property
    def plateau(self) -> bool:
        """Whether the gain is under :data:`PLATEAU_POINTS`."""
        return self.gain_points < PLATEAU_POINTS

    def describe(self) -> str:
        """One line, e.g. ``val mAP50 over the last quarter (it 1500 -> 2000): 0.770 -> 0.806,
        +3.6 points: not a plateau (a plateau gains under 1 point)``."""
        verdict = "a plateau" if self.plateau else "not a plateau"
        return (f"val mAP50 over the last quarter (it {self.start_iter} -> {self.end_iter}): "
                f"{self.start:.3f} -> {self.end:.3f}, {self.gain_points:+.1f} points: {verdict} "
                f"(a plateau gains under {PLATEAU_POINTS:g} point)")

    def to_dict(self) -> dict[str, float | int | bool]:
        """JSON-ready; :meth:`from_dict` reads it back."""
        return {"start_iter": self.start_iter, "end_iter": self.end_iter,
                "start_mAP50": self.start, "end_mAP50": self.end,
                "gain_points": round(self.gain_points, 4), "plateau": self.plateau}

    @classmethod
    def from_dict(cls, d: dict) -> LastQuarter:
        return cls(start_iter=int(d["start_iter"]), end_iter=int(d["end_iter"]),
                   start=float(d["start_mAP50"]), end=float(d["end_mAP50"]))


def _float(v: str | None) -> float | None:
    if v in (None, ""):
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def val_curve(results_csv: str | os.PathLike) -> list[ValPoint]:
    """Every validation recorded in a run's ``results.csv``, by iteration.

    Rows without a validation (``eval_every`` > 1) are skipped; when an iteration appears twice
    (an epoch re-run after a resume), its last row counts. A missing file gives ``[]``.
    """
    path = Path(results_csv)
    if not path.is_file():
        return []
    points: dict[int, ValPoint] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            m50 = _float(row.get("mAP50") or row.get("val_mAP50"))
            it, ep = _float(row.get("iter")), _float(row.get("epoch"))
            if m50 is None or it is None:
                continue
            points[int(it)] = ValPoint(epoch=int(ep or 0), iter=int(it), mAP50=m50,
                                       mAP=_float(row.get("mAP") or row.get("val_mAP")))
    return [points[k] for k in sorted(points)]


def last_quarter(curve: list[ValPoint]) -> LastQuarter | None:
    """The curve's last quarter: from the latest validation at or before 75 % of the last
    validation's iteration, to the last validation. ``None`` when no validation precedes that
    point (too few validations to tell)."""
    if len(curve) < 2:
        return None
    end = curve[-1]
    cut = 0.75 * end.iter
    before = [p for p in curve[:-1] if p.iter <= cut]
    if not before:
        return None
    start = before[-1]
    return LastQuarter(start_iter=start.iter, end_iter=end.iter, start=start.mAP50,
                       end=end.mAP50)


def training_cost(run_dir: str | os.PathLike) -> dict[str, float | int] | None:
    """What a run's training cost: ``{"train_seconds", "train_images"}``.

    ``train_seconds`` sums the epochs' wall-clock in ``results.csv`` (training and the
    validations; the last row of an epoch re-run after a resume counts, so time lost to an
    interruption is not), ``train_images`` is the last iteration times ``train.batch_size`` of
    the run's ``config.yaml`` (images per step and process; one process). ``None`` when either
    file or a value is missing.
    """
    import yaml

    run = Path(run_dir)
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        batch = int(cfg["train"]["batch_size"])
        with (run / "results.csv").open(newline="") as fh:
            epochs = {row["epoch"]: row for row in csv.DictReader(fh)}
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
    secs = [_float(r.get("seconds")) for r in epochs.values()]
    iters = [_float(r.get("iter")) for r in epochs.values()]
    if not epochs or None in secs or None in iters:
        return None
    return {"train_seconds": round(sum(secs), 1), "train_images": int(max(iters)) * batch}


def trained_with(run_dir: str | os.PathLike) -> dict | None:
    """How a run was trained, from its ``config.yaml``: the command, model, schedule, input,
    precision and seed (``None`` without the file). Recorded beside a study row that resumed a
    run trained elsewhere, whose own commands say only ``--resume``."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
        t, d = cfg["train"], cfg["data"]
        return {"command": cfg.get("command"), "model": cfg["model"]["name"],
                "epochs": t["epochs"], "max_iters": t.get("max_iters"),
                "batch_size": t["batch_size"], "img_size": d["img_size"],
                "crop": (d.get("augmentation") or {}).get("crop"),
                "cpu_amp": bool(t.get("cpu_amp")), "seed": t.get("seed")}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return None


def describe_training(t: dict) -> str:
    """:func:`trained_with`'s record in words, e.g. ``pretrain-teacher gfl_r50, 160 epochs
    of batch 8, 128 px crops of 256 px images, bfloat16 autocast, seed 0``."""
    sched = (f"{t['max_iters']} iterations" if t.get("max_iters") else f"{t['epochs']} epochs")
    size = (f"{t['crop']} px crops of {t['img_size']} px images" if t.get("crop")
            else f"{t['img_size']} px images")
    return (f"{t.get('command') or 'trained'} {t['model']}, {sched} of batch "
            f"{t['batch_size']}, {size}, {'bfloat16 autocast' if t.get('cpu_amp') else 'float32'}"
            f", seed {t.get('seed')}")
