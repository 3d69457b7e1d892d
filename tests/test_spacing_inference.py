"""Spacing-aware prediction: the training pixel size recorded in checkpoints, and slices
resampled to it instead of to a fixed size."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from meddet.data import CocoDetection, generate_dataset
from meddet.engine.checkpoint import SPACING_KEY, spacing_meta


def test_spacing_meta_is_the_median_input_pixel_of_the_training_images(tmp_path):
    root = tmp_path / "ds"
    generate_dataset(root, num_train=3, num_val=0, num_test=0, size=128, seed=2)
    ds = CocoDetection(root, "train", img_size=64)
    recorded = [r["pixel_mm"] for r in json.loads(
        (root / "annotations" / "train.json").read_text())["images"]]
    # 128 px images shown at 64 px: each input pixel covers two image pixels.
    assert spacing_meta(ds, 64) == {SPACING_KEY: round(float(np.median(recorded)) * 2, 4)}
    # Data without a pixel size (imported sets), or with it on only some images: nothing.
    plain = SimpleNamespace(coco=SimpleNamespace(imgs={1: {"width": 10, "height": 10}}))
    assert spacing_meta(plain, 64) == {}
    mixed = SimpleNamespace(coco=SimpleNamespace(imgs={
        1: {"width": 10, "height": 10, "pixel_mm": 0.5}, 2: {"width": 10, "height": 10}}))
    assert spacing_meta(mixed, 64) == {}
    assert spacing_meta(object(), 64) == {}
