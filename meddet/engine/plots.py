"""Figures written into run directories (matplotlib, Agg backend, atomic PNG writes)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from meddet._io import atomic_save


def _figure(*args: Any, **kwargs: Any) -> Any:
    # Import lazily and force Agg: training may run on a headless node, and importing pyplot
    # with an interactive backend there fails or opens windows.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _save(fig: Any, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.tight_layout()
        atomic_save(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    finally:
        plt.close(fig)


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def plot_training_curves(history: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
                         path: str | os.PathLike) -> None:
    """Losses (left) and validation metrics (right) against the epoch.

    Args:
        history: ``results.csv`` rows of one run: ``epoch``, ``loss*`` terms, ``mAP``, ``mAP50``,
            ``recall`` (missing/None where not evaluated). Or ``{label: rows}`` of several runs
            on one figure: each run then draws only its total ``loss`` and its val ``mAP50``,
            labelled with its name (every term of every run would be unreadable).
        path: the PNG to write.
    """
    several = isinstance(history, Mapping)
    runs = dict(history) if several else {"": history}
    every_row = [r for rows in runs.values() for r in rows]
    fig, (ax_l, ax_m) = _figure(1, 2, figsize=(10, 4))
    for label, rows in runs.items():
        epochs = [int(r["epoch"]) for r in rows]
        loss_keys = ["loss"] if several else sorted(
            {k for r in rows for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
        for k in loss_keys:
            ax_l.plot(epochs, [_num(r.get(k)) for r in rows], marker="o", label=label or k)
        for k in ("mAP50",) if several else ("mAP", "mAP50", "recall"):
            xs = [e for e, r in zip(epochs, rows) if not math.isnan(_num(r.get(k)))]
            ys = [_num(r.get(k)) for r in rows if not math.isnan(_num(r.get(k)))]
            if xs:
                name = "recall@.5" if k == "recall" else k
                ax_m.plot(xs, ys, marker="o", label=label or f"val {name}")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss (epoch mean)")
    ax_l.set_yscale("log" if all(_num(r.get("loss")) > 0 for r in every_row) and every_row
                    else "linear")
    if ax_l.lines:
        ax_l.legend(fontsize=8)
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel("val mAP50" if several else "validation metric")
    ax_m.set_ylim(0, 1)
    if ax_m.lines:
        ax_m.legend(fontsize=8)
    epochs = sorted({int(r["epoch"]) for r in every_row})
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    _save(fig, path)


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   ap50: Mapping[str, float], path: str | os.PathLike) -> None:
    """One precision-recall curve per class at IoU 0.5 (COCOeval's 101-point interpolation)."""
    fig, ax = _figure(figsize=(5, 5))
    for name, (rec, prec) in curves.items():
        ap = ap50.get(name, -1)
        label = f"{name} (AP50 {ap:.3f})" if ap is not None and ap >= 0 else f"{name} (no GT)"
        ax.plot(rec, prec, label=label)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, *,
                          iou_thr: float, score_thr: float) -> None:
    """Counts of true class (rows, + background) against predicted class (columns, + missed)."""
    rows = list(class_names) + ["background"]
    cols = list(class_names) + ["missed"]
    fig, ax = _figure(figsize=(1.6 * len(cols) + 1.5, 1.4 * len(rows) + 1))
    ax.imshow(cm, cmap="Blues")
    vmax = cm.max() if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            na = i == cm.shape[0] - 1 and j == cm.shape[1] - 1
            ax.text(j, i, "-" if na else str(int(cm[i, j])), ha="center", va="center",
                    color="white" if vmax and cm[i, j] > vmax / 2 else "black")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"IoU {iou_thr:g}, score >= {score_thr:g}")
    _save(fig, path)


def plot_noise_sweep(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                     kind: str) -> None:
    """mAP50 against the noise level of a ``--noise-sweep`` (clean shown as a dashed line).

    Args:
        rows: ``{"level": float | None, "mAP50": float, ...}``; ``level`` None is the clean run.
        kind: the noise kind, used for the axis label (``rician`` → SNR).
    """
    fig, ax = _figure(figsize=(5, 4))
    noisy = [r for r in rows if r.get("level") is not None]
    xs = [float(r["level"]) for r in noisy]
    ax.plot(xs, [r["mAP50"] for r in noisy], marker="o", label="noisy")
    for r in rows:
        if r.get("level") is None:
            ax.axhline(r["mAP50"], linestyle="--", color="grey", label="clean")
    ax.set_xlabel("SNR" if kind == "rician" else f"{kind} level")
    ax.set_ylabel("mAP50")
    ax.set_ylim(0, 1)
    if kind == "rician" and xs:
        ax.invert_xaxis()  # left to right = more noise
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
