"""The options ``meddet pretrain-teacher`` and ``meddet distill`` share, defined once.

Each factory returns a fresh Typer option (same flag name, default and help in both commands);
:func:`training_overrides` turns their values into the config sections they set.
"""

from __future__ import annotations

from typing import Any

import typer

from meddet.config import NMODE_PLACEMENTS


def data_option() -> Any:
    """``--data``."""
    return typer.Option(None, "--data", help="Dataset folder (layout of `meddet data synth`).")


def config_option() -> Any:
    """``--config``."""
    return typer.Option(None, "--config", help="Built-in config (paper, cpu-crop, cpu-small, "
                        "default) or a YAML file.")


def epochs_option() -> Any:
    """``--epochs``."""
    return typer.Option(None, "--epochs", min=1, help="Training epochs.")


def batch_size_option() -> Any:
    """``--batch-size``."""
    return typer.Option(None, "--batch-size", min=1, help="Images per step and process.")


def lr_option() -> Any:
    """``--lr``."""
    return typer.Option(None, "--lr", help="SGD lr for train.base_batch_size images (scaled "
                        "linearly with the total batch).")


def img_size_option() -> Any:
    """``--img-size``."""
    return typer.Option(None, "--img-size", help="Input size (multiple of 32).")


def workers_option() -> Any:
    """``--workers``."""
    return typer.Option(None, "--workers", min=0, help="DataLoader workers.")


def max_iters_option() -> Any:
    """``--max-iters``."""
    return typer.Option(None, "--max-iters", min=1,
                        help="Stop after this many iterations in total.")


def eval_every_option() -> Any:
    """``--eval-every``."""
    return typer.Option(None, "--eval-every", min=1, help="Evaluate on val every N epochs.")


def checkpoint_every_option() -> Any:
    """``--checkpoint-every``."""
    return typer.Option(None, "--checkpoint-every", min=1, help="Write last.pt every N epochs "
                        "(and after the last); best.pt is written at every new best. Saves "
                        "time with large models.")


def checkpoint_every_iters_option() -> Any:
    """``--checkpoint-every-iters``."""
    return typer.Option(None, "--checkpoint-every-iters", min=1, help="Also write last.pt "
                        "every N iterations besides the epoch-end writes, so a crash in a long "
                        "epoch loses little.")


def device_option() -> Any:
    """``--device``."""
    return typer.Option(None, "--device", help="cpu or cuda.")


def seed_option() -> Any:
    """``--seed``."""
    return typer.Option(None, "--seed", help="Seed for weights and data order.")


def nmode_option(what: str = "nmODE² placement", note: str = "") -> Any:
    """``--nmode``: ``what`` names the model it places the block in; ``note`` ends the help."""
    return typer.Option(None, "--nmode", help=f"{what}: {' | '.join(NMODE_PLACEMENTS)} "
                        f"(default: the zoo entry's{note}).")


def training_overrides(*, data: Any, img_size: int | None, workers: int | None,
                       epochs: int | None, batch_size: int | None, lr: float | None,
                       max_iters: int | None, device: str | None, seed: int | None,
                       eval_every: int | None, checkpoint_every: int | None,
                       checkpoint_every_iters: int | None) -> dict[str, Any]:
    """The ``data`` and ``train`` config sections set by the shared flags (``None``: unset,
    changes nothing)."""
    return {
        "data": {"root": str(data) if data is not None else None, "img_size": img_size,
                 "workers": workers},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_iters": max_iters,
                  "device": device, "seed": seed, "eval_every": eval_every,
                  "checkpoint_every": checkpoint_every,
                  "checkpoint_every_iters": checkpoint_every_iters},
    }
