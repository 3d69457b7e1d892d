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
    return typer.Option(None, "--lr", help="Learning rate of the config's optimiser (SGD or "
                        "AdamW, train.optimizer) for train.base_batch_size images, scaled "
                        "linearly with the total batch.")


def img_size_option() -> Any:
    """``--img-size``."""
    return typer.Option(None, "--img-size", help="Input size: a multiple of 32 (inputs are "
                        "padded to the deepest backbone stride) and at least 64 for training "
                        "(export and predict accept 32).")


def workers_option() -> Any:
    """``--workers``."""
    return typer.Option(None, "--workers", min=0, help="DataLoader workers.")


def max_iters_option() -> Any:
    """``--max-iters``."""
    return typer.Option(None, "--max-iters", min=1,
                        help="Stop after this many iterations in total.")


def cpu_amp_option() -> Any:
    """``--cpu-amp/--no-cpu-amp``."""
    return typer.Option(None, "--cpu-amp/--no-cpu-amp", help="bfloat16 autocast of the "
                        "forward pass on the CPU (train.cpu_amp): about 1.6x faster steps on "
                        "CPUs with AVX-512 BF16 or AMX; weights and losses stay float32.")


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
    """``--device`` (default ``auto``)."""
    return typer.Option("auto", "--device", help="auto (cuda when available, else cpu), cpu, "
                        "cuda or cuda:N.")


def pretrained_option() -> Any:
    """``--pretrained``."""
    return typer.Option(None, "--pretrained", help="Backbone initialisation: auto "
                        "(torchvision's ImageNet weights from its cache or a download, else "
                        "random), imagenet (those weights, else an error), none (random) or a "
                        "state_dict file (default: the config's model.pretrained, random).")


def tensorboard_option() -> Any:
    """``--tensorboard/--no-tensorboard``."""
    return typer.Option(None, "--tensorboard/--no-tensorboard", help="Log losses, learning "
                        "rate, validation metrics and predicted val images for TensorBoard "
                        "to RUN_DIR/tensorboard (default: on when the tensorboard package is "
                        "installed; --tensorboard without it is an error).")


def initial_weights_note(model_name: str, pretrained: str) -> str:
    """One line: which weights ``model_name``'s backbone starts from under ``pretrained``
    (resolving them as training will: torchvision's cache, else a download).

    Raises:
        MedDetError: ``imagenet`` weights that can be neither found nor downloaded.
    """
    from meddet.models import DETECTORS
    from meddet.models.pretrained import resolve_pretrained

    backbone = DETECTORS[model_name].keywords["backbone_name"]
    return f"initial weights of {model_name}: " + resolve_pretrained(backbone, pretrained).note


def default_config_line(name: str, device: str) -> str:
    """One line saying which config a command chose for the device, and how to pick another."""
    return (f"config: {name} (the default on {device}; --config chooses another, e.g. "
            "paper for the paper's 512 px SGD schedule)")


def check_pretrained(value: str | None) -> str | None:
    """``--pretrained``'s value, checked: ``auto``, ``imagenet``, ``none`` or an existing file.

    Raises:
        MedDetError: anything else.
    """
    from pathlib import Path

    from meddet.errors import MedDetError

    if value is None or value in ("auto", "imagenet", "none") or Path(value).is_file():
        return value
    raise MedDetError(f"--pretrained {value!r}: use auto, imagenet, none or an existing "
                      "state_dict file")


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
                       checkpoint_every_iters: int | None,
                       cpu_amp: bool | None = None) -> dict[str, Any]:
    """The ``data`` and ``train`` config sections set by the shared flags (``None``: unset,
    changes nothing; ``device`` ``auto`` becomes ``cuda`` or ``cpu`` here, so that the run's
    config.yaml names the device it ran on)."""
    from meddet.device import auto_device

    device = auto_device(device) if device == "auto" else device
    return {
        "data": {"root": str(data) if data is not None else None, "img_size": img_size,
                 "workers": workers},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_iters": max_iters,
                  "device": device, "seed": seed, "eval_every": eval_every,
                  "checkpoint_every": checkpoint_every,
                  "checkpoint_every_iters": checkpoint_every_iters, "cpu_amp": cpu_amp},
    }
