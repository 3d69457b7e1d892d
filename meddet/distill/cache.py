"""The frozen teachers' outputs kept in memory per (image, augmentation variant).

A teacher is frozen and in eval mode, so what it computes depends only on the image tensor it
is given. With ``distill.teacher_cache`` the training images' augmentation is drawn from a
fixed pool of ``distill.teacher_cache_variants`` variants per image
(:class:`~meddet.data.CocoDetection`'s ``aug_variants``; each target carries its
``aug_variant``), so ``(image_id, aug_variant)`` names the tensor exactly and the teachers'
outputs on it can be reused. :class:`TeacherCache` looks each image of a batch up, runs the
teachers once, batched, on the images it has not seen, and stacks the batch back together.

The entries are stored in the dtype the teachers produced them in (fp32, or the AMP dtype on
CUDA) on the training device, so a cached output is the very tensor the uncached step would
use; only the images computed in a smaller batch than the whole one may differ in the last
bits, where a convolution's kernel choice depends on the batch size. The cache lives for one
process and is never saved: ``--resume`` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from meddet.distill.methods import TeacherPass

__all__ = ["CacheKey", "TeacherCache", "cache_keys"]

#: ``(image_id, aug_variant)``: one augmented training tensor.
CacheKey = tuple[int, int]

# What the step computes for the images it has no entry for: per teacher, the raw batched
# outputs ``(feats, bbox_preds)`` (each a list over FPN levels of ``[b, C, H, W]``).
RawTeacherOutputs = list[tuple[Sequence[Tensor], Sequence[Tensor]]]


def cache_keys(targets: Sequence[dict[str, Any]]) -> list[CacheKey]:
    """The cache key of every image of a batch.

    Args:
        targets: the batch's targets, from a dataset with ``aug_variants`` set.

    Raises:
        RuntimeError: a target without ``aug_variant`` (the dataset does not draw its
            augmentation from fixed variants, so its images cannot be cached).
    """
    try:
        return [(int(t["image_id"]), int(t["aug_variant"])) for t in targets]
    except KeyError:
        raise RuntimeError("the teacher cache needs targets with image_id and aug_variant: "
                           "set the training dataset's aug_variants") from None


def _nbytes(entry: Sequence[TeacherPass]) -> int:
    return sum(t.numel() * t.element_size() for p in entry for t in (*p.feats, *p.bbox_preds))


class TeacherCache:
    """Teacher outputs per image and augmentation variant, for one training process.

    Args:
        wanted: the outputs to keep (the method's ``teacher_outputs``: ``"feats"`` and/or
            ``"bbox_preds"``).
        max_bytes: memory the entries may take; an image whose outputs no longer fit is
            recomputed whenever it comes again.
        channels_last: give the stitched 4-D outputs the channels_last layout (what teachers
            converted to it produce), so that later kernels see the same layout as uncached.

    Attributes:
        hits, misses: images found / computed so far.
        not_stored: computed images left out because the memory budget was spent.
        nbytes: memory held by the entries.
    """

    def __init__(self, *, wanted: Sequence[str], max_bytes: int,
                 channels_last: bool = False) -> None:
        self.wanted = tuple(wanted)
        self.max_bytes = int(max_bytes)
        self.channels_last = bool(channels_last)
        # Per key, per teacher: that image's outputs without the batch dimension ([C, H, W]).
        self._entries: dict[CacheKey, list[TeacherPass]] = {}
        self.hits = self.misses = self.not_stored = 0
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: CacheKey) -> bool:
        return key in self._entries

    def entry(self, key: CacheKey) -> list[TeacherPass] | None:
        """The stored outputs of one image (per teacher; tensors ``[C, H, W]``), or ``None``."""
        return self._entries.get(key)

    def clear(self) -> None:
        """Drop every entry (the counters are kept)."""
        self._entries.clear()
        self.nbytes = 0

    def lookup(self, images: Tensor, keys: Sequence[CacheKey],
               compute: Callable[[Tensor], RawTeacherOutputs]) -> list[TeacherPass]:
        """The teachers' outputs on a batch, computing only the images not stored yet.

        Args:
            images: ``[B, 3, H, W]`` the batch (as the student sees it).
            keys: ``B`` cache keys (:func:`cache_keys`).
            compute: runs every teacher on ``[b, 3, H, W]`` images (the batch itself when no
                image is stored, else the missing ones in batch order) and returns its raw
                outputs, e.g. inference tensors.

        Returns:
            Per teacher, the batch's outputs (normal tensors without gradient, ``[B, ...]``
            per level; the outputs not in ``wanted`` are empty lists).
        """
        found: list[list[TeacherPass] | None] = [self._entries.get(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            if len(missing) == len(keys):
                sub = images
            else:
                sub = images.index_select(0, torch.tensor(missing, device=images.device))
                if self.channels_last:
                    sub = sub.contiguous(memory_format=torch.channels_last)
            raw = compute(sub)
            for j, i in enumerate(missing):
                # Cloned outside inference mode: normal tensors (AFA saves its input for
                # backward) that own their memory rather than pin the whole batch's outputs.
                entry = [TeacherPass(
                    feats=[f[j].clone() for f in feats] if "feats" in self.wanted else [],
                    bbox_preds=[b[j].clone() for b in bbox] if "bbox_preds" in self.wanted
                    else []) for feats, bbox in raw]
                found[i] = entry
                self._store(keys[i], entry)
        entries: list[list[TeacherPass]] = found  # type: ignore[assignment]
        return [TeacherPass(feats=self._stack([e[t].feats for e in entries]),
                            bbox_preds=self._stack([e[t].bbox_preds for e in entries]))
                for t in range(len(entries[0]))]

    def _store(self, key: CacheKey, entry: list[TeacherPass]) -> None:
        if key in self._entries:  # the same image twice in one batch
            return
        size = _nbytes(entry)
        if self.nbytes + size > self.max_bytes:
            self.not_stored += 1
            return
        self._entries[key] = entry
        self.nbytes += size

    def _stack(self, per_image: list[list[Tensor]]) -> list[Tensor]:
        out = [torch.stack(level) for level in zip(*per_image)]
        if self.channels_last:
            out = [t.contiguous(memory_format=torch.channels_last) for t in out]
        return out

    def stats(self) -> dict[str, Any]:
        """``{"entries", "megabytes", "megabytes_per_entry", "hits", "misses", "not_stored",
        "hit_rate"}`` so far."""
        n = len(self._entries)
        seen = self.hits + self.misses
        return {"entries": n, "megabytes": self.nbytes / 2**20,
                "megabytes_per_entry": self.nbytes / 2**20 / n if n else 0.0,
                "hits": self.hits, "misses": self.misses, "not_stored": self.not_stored,
                "hit_rate": self.hits / seen if seen else 0.0}
