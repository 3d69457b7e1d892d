"""One place that turns a device string into a :class:`torch.device` and checks it exists."""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path

import torch

from meddet.errors import MedDetError

__all__ = ["auto_device", "device_name", "resolve_device"]


def auto_device(device: str | None = "auto") -> str:
    """``auto`` (or ``None``) as ``cuda`` when CUDA is available, else ``cpu``; any other
    string unchanged (it is checked by :func:`resolve_device`)."""
    if device is None or str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device, checking that it exists on this
    machine (``auto``: see :func:`auto_device`).

    Raises:
        MedDetError: unknown device string, CUDA requested but not available, or a CUDA index
            beyond the devices present.
    """
    if isinstance(device, str):
        device = auto_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise MedDetError(f"unknown device {str(device)!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise MedDetError(f"unsupported device {str(device)!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MedDetError(f"--device {device} requested but CUDA is not available on this "
                              "machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MedDetError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
    return dev


def device_name(dev: torch.device) -> str:
    """A human name for ``dev``: the CUDA device name, or the CPU model from ``/proc/cpuinfo``."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    with contextlib.suppress(OSError):
        match = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine()
