"""Peak memory of a block of work: resident-set growth on Linux CPUs, allocator peak on CUDA.

Usage::

    probe = PeakMemory(device)
    probe.start()
    ...  # build the model, run it
    mb = probe.peak_mb()  # None where it cannot be measured
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from pathlib import Path

import torch

__all__ = ["PeakMemory", "PeakRss"]


class PeakRss:
    """Peak resident-memory growth of this process on Linux, in MiB.

    :meth:`start` resets the kernel's resident-set high-water mark (``VmHWM``, through
    ``/proc/self/clear_refs``) and records the resident size (``VmRSS``); :meth:`peak_mb` is the
    high-water mark since then minus that baseline: weights, activations and allocator
    overhead of whatever ran in between. Both return None where ``/proc`` cannot do this.
    """

    def __init__(self) -> None:
        self.baseline_kb: int | None = None

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            text = Path("/proc/self/status").read_text()
        except OSError:
            return None
        match = re.search(rf"{field}:\s+(\d+) kB", text)
        return int(match.group(1)) if match else None

    def start(self) -> None:
        """Reset the high-water mark and take the baseline."""
        gc.collect()
        # Hand freed heap pages back to the OS so the previous model's memory does not hide
        # this one's growth (glibc keeps them resident otherwise).
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5": reset the RSS high-water mark
        except OSError:
            self.baseline_kb = None
            return
        self.baseline_kb = self._status_kb("VmRSS")

    def peak_mb(self) -> float | None:
        """Growth of the high-water mark over the baseline in MiB (None: not measurable)."""
        peak = self._status_kb("VmHWM")
        if self.baseline_kb is None or peak is None:
            return None
        return max(peak - self.baseline_kb, 0) / 1024


class PeakMemory:
    """Peak memory on ``device``: ``torch.cuda.max_memory_allocated`` on CUDA, else
    :class:`PeakRss` (None off Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._rss = PeakRss()

    def start(self) -> None:
        """Reset the peak counters; memory already held before this call does not count."""
        if self.device.type == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._rss.start()

    def peak_mb(self) -> float | None:
        """Peak since :meth:`start` in MiB (CUDA: all allocations held at the peak)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self._rss.peak_mb()
