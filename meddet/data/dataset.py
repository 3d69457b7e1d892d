"""A PyTorch dataset over any COCO detection data laid out as ``root/images/{split}`` +
``root/annotations/{split}.json``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from meddet.config import AugmentConfig
from meddet.data.coco import load_coco
from meddet.data.transforms import (
    check_img_size,
    fit_scale,
    hflip,
    load_image,
    normalize_intensity,
    photometric_jitter,
    resize_pad,
    to_input,
)
from meddet.errors import MedDetError

Target = dict[str, Any]

# A box that keeps less than this fraction of its area after a scale-jitter crop is dropped:
# a sliver of a disc at the border is not a useful training target.
_MIN_VISIBLE = 0.4

# Seeds the augmentation streams of the fixed variants (aug_variants) apart from fresh draws.
_VARIANT_STREAM = 0x5EED_CA5E


class CocoDetection(Dataset):
    """COCO detection dataset producing detector-ready tensors.

    ``ds[i] -> (image, target)`` with ``image`` a ``FloatTensor[3, S, S]`` (the grey image
    percentile-normalised, resized so its long side is ``S = img_size``, padded bottom/right,
    replicated to 3 channels and standardised with ImageNet mean/std) and ``target`` a dict:

    - ``boxes``: ``FloatTensor[N, 4]``, ``xyxy`` in input (resized) pixels;
    - ``labels``: ``LongTensor[N]``, 0-based indices into :attr:`class_names`;
    - ``image_id`` (int), ``scale`` (float, input pixels per original pixel: divide boxes by it
      to get original pixels), ``orig_size`` (``(h, w)``), ``file_name`` (str);
    - ``aug_variant`` (int, only when :attr:`aug_variants` is set): which of the image's
      augmentation variants this sample is (always 0 without augmentation).

    Crowd annotations (``iscrowd=1``) are kept in :attr:`coco` for evaluation but not returned
    as targets.

    Args:
        root: dataset folder with ``images/{split}/`` and ``annotations/{split}.json``.
        split: e.g. ``"train"``, ``"val"``, ``"test"``.
        img_size: network input side ``S``, a multiple of 32.
        train: enable training augmentation.
        augment: augmentation settings; None means :class:`~meddet.config.AugmentConfig`
            defaults when ``train`` is True. Ignored when ``train`` is False.
        on_bad_box: ``"fail"`` (raise) or ``"skip"`` (drop with one counted warning) for boxes
            with non-positive size or outside their image.
        corrupt: optional ``corrupt(img01, rng) -> img01`` applied after intensity
            normalisation (see :func:`meddet.data.noise.parse_noise_spec`); ``rng`` is seeded
            from ``(seed, index)`` so corrupted evaluation is reproducible.
        seed: non-negative seed for ``corrupt`` and (mixed with torch's RNG) augmentation.
        aug_variants: draw each sample's augmentation from a fixed pool of this many variants
            per image (``None``: a fresh draw every time). Variant ``v`` of image ``i`` is always
            the same augmented tensor, so what a frozen network computes on it can be cached
            under ``(image_id, aug_variant)`` (see :mod:`meddet.distill.cache`).

    Attributes:
        class_names: category names sorted by category id.
        cat_ids: category ids in the same order.
        coco: the ``pycocotools.coco.COCO`` index of the (validated) annotations.
        ids: image ids in dataset order (ascending).
        num_skipped: number of boxes dropped under ``on_bad_box="skip"``.
        aug_variants: the ``aug_variants`` argument (may be set before iterating).

    Raises:
        MedDetError: missing folder/split, malformed annotations, missing image files; the
            message names the file and the annotation id.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        *,
        img_size: int = 256,
        train: bool = False,
        augment: AugmentConfig | None = None,
        on_bad_box: str = "fail",
        corrupt: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        seed: int = 0,
        aug_variants: int | None = None,
    ) -> None:
        check_img_size(img_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise MedDetError(f"seed must be a non-negative integer, got {seed!r}")
        self.root = Path(root)
        self.split = split
        self.img_size = int(img_size)
        self.train = bool(train)
        self.augment = (augment or AugmentConfig()) if train else None
        self.corrupt = corrupt
        self.seed = int(seed)
        if aug_variants is not None and (isinstance(aug_variants, bool) or aug_variants < 1):
            raise MedDetError(f"aug_variants must be a positive integer, got {aug_variants!r}")
        self.aug_variants = aug_variants
        self.image_dir = self.root / "images" / split
        ann_file = self.root / "annotations" / f"{split}.json"
        if not self.root.is_dir():
            raise MedDetError(f"dataset folder {self.root} does not exist; create one with "
                              "`meddet data synth` or point data.root at a COCO dataset")
        if not ann_file.is_file():
            have = sorted(p.stem for p in (self.root / "annotations").glob("*.json"))
            raise MedDetError(f"no annotations for split {split!r}: {ann_file} is missing "
                              f"(available splits: {', '.join(have) or 'none'})")
        loaded = load_coco(ann_file, on_bad_box=on_bad_box)
        self.coco = loaded.coco
        self.ann_file = ann_file
        self.skipped = loaded.skipped
        self.num_skipped = len(loaded.skipped)
        if self.num_skipped:
            aid, why = loaded.skipped[0]
            warnings.warn(f"{ann_file}: skipped {self.num_skipped} invalid box(es) "
                          f"(first: annotation id {aid} {why})", stacklevel=2)

        self.cat_ids = sorted(self.coco.cats)
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self._label_of = {c: i for i, c in enumerate(self.cat_ids)}
        self.ids = sorted(self.coco.imgs)
        for iid in self.ids:
            path = self.image_dir / self.coco.imgs[iid]["file_name"]
            if not path.is_file():
                raise MedDetError(f"image file {path} (image id {iid} in {ann_file}) does not "
                                  "exist; restore it or remove the image from the annotations")

    def __len__(self) -> int:
        return len(self.ids)

    def label_to_cat_id(self, label: int) -> int:
        """COCO category id of a 0-based label (index into :attr:`class_names`)."""
        return self.cat_ids[int(label)]

    def cat_id_to_label(self, cat_id: int) -> int:
        """0-based label of a COCO category id."""
        return self._label_of[int(cat_id)]

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """The normalised original image and its boxes, before corruption and augmentation.

        Returns:
            ``(img01, boxes, labels, record)``: float32 ``H×W`` image in [0, 1]; float32
            ``[N, 4]`` xyxy boxes in original pixels; int64 ``[N]`` labels; the COCO image
            record.

        Raises:
            MedDetError: unreadable image, or its size differs from the annotation record.
        """
        iid = self.ids[index]
        rec = self.coco.imgs[iid]
        path = self.image_dir / rec["file_name"]
        arr = load_image(path)
        if arr.shape != (int(rec["height"]), int(rec["width"])):
            raise MedDetError(f"image {path} is {arr.shape[1]}x{arr.shape[0]} but {self.ann_file} "
                              f"says {rec['width']}x{rec['height']} (image id {iid}); fix the record")
        anns = [a for a in self.coco.imgToAnns.get(iid, []) if not a.get("iscrowd", 0)]
        anns.sort(key=lambda a: a["id"])
        boxes = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO xywh -> xyxy
        labels = np.asarray([self._label_of[a["category_id"]] for a in anns], np.int64)
        return normalize_intensity(arr), boxes, labels, rec

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if index < 0:
            index += len(self)
        img, boxes, labels, rec = self.load_raw(index)
        h, w = img.shape
        if self.corrupt is not None:
            img = np.asarray(self.corrupt(img, np.random.default_rng([self.seed, index])),
                             dtype=np.float32)
        scale = fit_scale(h, w, self.img_size)
        offset = (0, 0)
        variant = 0
        if self.augment is not None:
            # Fresh randomness every epoch, yet reproducible: torch's RNG (seeded by the
            # training loop, and per worker by the DataLoader) is mixed with (seed, index).
            draw = int(torch.randint(0, 2**62, (1,)).item())
            if self.aug_variants is not None:
                # One of a fixed pool: the variant's own stream (tagged apart from the fresh
                # draws) fixes every random choice, so variant v is the same tensor each time.
                variant = draw % self.aug_variants
                rng = np.random.default_rng([self.seed, index, _VARIANT_STREAM, variant])
            else:
                rng = np.random.default_rng([self.seed, index, draw])
            img, boxes, scale, offset = self._augment(img, boxes, scale, rng)
        out, scale = resize_pad(img, self.img_size, scale, offset)
        boxes = boxes * np.float32(scale) - np.asarray(offset * 2, np.float32)
        if offset != (0, 0) or scale * max(h, w) > self.img_size:
            boxes, labels = _clip_boxes(boxes, labels, self.img_size)
        if self.augment is not None and self.augment.crop is not None \
                and self.augment.crop < self.img_size:
            out, boxes, labels = _crop_around_object(out, boxes, labels, self.augment.crop, rng,
                                                     balance=self.augment.crop_balance)
        target: Target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels).long(),
            "image_id": int(rec["id"]),
            "scale": float(scale),
            "orig_size": (h, w),
            "file_name": str(rec["file_name"]),
        }
        if self.aug_variants is not None:
            target["aug_variant"] = variant
        return to_input(out), target

    def _augment(self, img, boxes, scale, rng):
        aug = self.augment
        if rng.uniform() < aug.hflip:
            img, boxes = hflip(img, boxes)
        img = photometric_jitter(img, rng, brightness=aug.brightness, contrast=aug.contrast,
                                 gamma=aug.gamma)
        lo, hi = aug.scale_jitter
        scale = scale * float(rng.uniform(min(lo, hi), max(lo, hi)))
        h, w = img.shape
        # When jitter enlarges the image beyond S, keep a random S×S window of it.
        ex = max(0, round(w * scale) - self.img_size)
        ey = max(0, round(h * scale) - self.img_size)
        offset = (int(rng.integers(ex + 1)), int(rng.integers(ey + 1)))
        return img, boxes, scale, offset


def _crop_around_object(img: np.ndarray, boxes: np.ndarray, labels: np.ndarray, crop: int,
                        rng: np.random.Generator, *, balance: bool = False,
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``crop × crop`` window of the network input that holds one randomly chosen
    object whole (where the object fits; a uniformly random window without objects).

    The object is drawn uniformly, or with ``balance`` class first (uniformly among the classes
    present in the image), then uniformly within that class: an image with one protrusion among
    six discs centres half its windows on the protrusion instead of a sixth.

    Boxes are shifted into the window; those mostly cut away are dropped (as for scale jitter).

    Args:
        img: ``S × S`` input (after resize and pad), ``crop <= S``.
        boxes: ``[N, 4]`` xyxy in input pixels; ``labels``: ``[N]``.
        crop: window side.
        rng: the sample's augmentation stream.
        balance: draw the held object class-balanced.

    Returns:
        ``(window, boxes, labels)``.
    """
    size_y, size_x = img.shape[:2]
    hi_x, hi_y = size_x - crop, size_y - crop
    if len(boxes):
        if balance:
            present = np.unique(labels)
            pool = np.flatnonzero(labels == present[int(rng.integers(len(present)))])
            pick = int(pool[int(rng.integers(len(pool)))])
        else:
            pick = int(rng.integers(len(boxes)))
        x1, y1, x2, y2 = boxes[pick]
        # Left edges keeping [x1, x2] inside: x2 - crop <= x0 <= x1 (clamped to the image).
        lo_x, up_x = max(0, int(np.ceil(x2)) - crop), min(hi_x, int(np.floor(x1)))
        lo_y, up_y = max(0, int(np.ceil(y2)) - crop), min(hi_y, int(np.floor(y1)))
    else:
        lo_x, up_x, lo_y, up_y = 0, hi_x, 0, hi_y
    x0 = int(rng.integers(lo_x, up_x + 1)) if lo_x <= up_x else int(rng.integers(hi_x + 1))
    y0 = int(rng.integers(lo_y, up_y + 1)) if lo_y <= up_y else int(rng.integers(hi_y + 1))
    window = img[y0:y0 + crop, x0:x0 + crop]
    shifted = boxes - np.asarray([x0, y0, x0, y0], np.float32)
    kept, labels = _clip_boxes(shifted, labels, crop)
    return np.ascontiguousarray(window), kept.astype(np.float32), labels


def _clip_boxes(boxes: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the ``size × size`` input and drop those mostly cut away."""
    clipped = np.clip(boxes, 0, size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (kept >= _MIN_VISIBLE * area) & (clipped[:, 2] - clipped[:, 0] >= 1) & (
        clipped[:, 3] - clipped[:, 1] >= 1
    )
    return clipped[keep], labels[keep]


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack images into ``FloatTensor[B, 3, S, S]`` and keep the per-image targets as a list."""
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]
