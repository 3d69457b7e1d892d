"""Letterboxed inputs: boxes are clipped to the unpadded image before NMS and empty ones dropped.

Both post-processes (torch ``GFLPostProcess`` and numpy ``meddet.deploy.postprocess``) run on the
same hand-built raw head outputs: a 60x100 (h x w) image resized by 1.28 to 77x128 and padded to
128x128 at the bottom, so input rows 76.8..128 are padding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddet import deploy
from meddet.models.postprocess import GFLPostProcess

SIZE = 128
STRIDES = (8, 16, 32, 64, 128)
REG_MAX = 16
META = {"scale": 1.28, "orig_size": (60, 100)}
PAD_SCORE, EDGE_SCORE = 0.99, 0.9


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _raw_outputs(boxes: list[tuple[int, int, tuple[int, int, int, int], float]]):
    """Stride-8 outputs with one confident class-0 prediction per ``(row, col, dist, score)``.

    The location centre of ``(row, col)`` is ``(8 col, 8 row)``; ``dist`` are the (left, top,
    right, bottom) distances in bins of 8 px, encoded as one-hot distributions. Every other
    location and level scores sigmoid(-10).
    """
    cls = [torch.full((1, 2, SIZE // s, SIZE // s), -10.0) for s in STRIDES]
    reg = [torch.full((1, 4 * (REG_MAX + 1), SIZE // s, SIZE // s), -1e4) for s in STRIDES]
    for r in reg:
        r[:, :: REG_MAX + 1] = 0.0  # every side at bin 0 elsewhere
    for row, col, dist, score in boxes:
        cls[0][0, 0, row, col] = _logit(score)
        reg[0][0, :, row, col] = -1e4
        for side, d in enumerate(dist):
            reg[0][0, side * (REG_MAX + 1) + d, row, col] = 0.0
    return cls, reg


def _torch_post(cls, reg, metas, **kwargs):
    points = [torch.from_numpy(p) for p in deploy.grid_points(
        [(SIZE // s, SIZE // s) for s in STRIDES], STRIDES)]
    (det,) = GFLPostProcess(reg_max=REG_MAX, **kwargs)(cls, reg, points, STRIDES, (SIZE, SIZE),
                                                       metas)
    return det["boxes"].numpy(), det["scores"].numpy()


def _numpy_post(cls, reg, metas, **kwargs):
    (det,) = deploy.postprocess([c.numpy() for c in cls], [r.numpy() for r in reg],
                                strides=STRIDES, img_shape=(SIZE, SIZE), reg_max=REG_MAX,
                                metas=metas, **kwargs)
    return det["boxes"], det["scores"]


POSTS = pytest.mark.parametrize("post", [_torch_post, _numpy_post], ids=["torch", "numpy"])

# Centre (64, 104), 8 px each side: input box (56, 96, 72, 112), entirely in the padding.
IN_PADDING = (13, 8, (1, 1, 1, 1), PAD_SCORE)
# Centre (32, 72): input box (24, 64, 40, 80) crosses the image's bottom edge at 76.8; in
# original pixels (18.75, 50, 31.25, 62.5), clipped to (18.75, 50, 31.25, 60).
ACROSS_EDGE = (9, 4, (1, 1, 1, 1), EDGE_SCORE)
ACROSS_EDGE_CLIPPED = [18.75, 50.0, 31.25, 60.0]


@POSTS
def test_confident_box_in_the_padding_is_not_returned(post):
    # Before clipping to the image it came back as (43.75, 60, 56.25, 60), score 0.99.
    boxes, scores = post(*_raw_outputs([IN_PADDING]), [META])
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@POSTS
def test_box_across_the_image_edge_is_clipped_and_kept(post):
    boxes, scores = post(*_raw_outputs([IN_PADDING, ACROSS_EDGE]), [META])
    np.testing.assert_allclose(boxes, [ACROSS_EDGE_CLIPPED], rtol=1e-6)
    np.testing.assert_allclose(scores, [EDGE_SCORE], rtol=1e-6)
    # The padding box no longer takes the only slot of max_per_img=1.
    boxes, _ = post(*_raw_outputs([IN_PADDING, ACROSS_EDGE]), [META], max_per_img=1)
    np.testing.assert_allclose(boxes, [ACROSS_EDGE_CLIPPED], rtol=1e-6)


@POSTS
def test_min_box_size_drops_boxes_at_most_that_wide_or_tall(post):
    # The clipped box is 12.5 wide and 10 tall (original pixels).
    outputs = _raw_outputs([ACROSS_EDGE])
    assert len(post(*outputs, [META], min_box_size=9.99)[0]) == 1
    assert len(post(*outputs, [META], min_box_size=10.0)[0]) == 0


@POSTS
def test_empty_box_is_dropped_without_metadata_too(post):
    # Left and right distances 0: a zero-width box (24, 64, 24, 80) in input pixels. Without
    # metadata the boxes stay in input pixels, clipped to the padded canvas only.
    boxes, _ = post(*_raw_outputs([(9, 3, (0, 1, 0, 1), 0.8), IN_PADDING]), None)
    np.testing.assert_allclose(boxes, [[56.0, 96.0, 72.0, 112.0]])


def test_min_box_size_is_a_model_setting():
    from meddet.config import Config
    from meddet.engine.defaults import model_overrides
    from meddet.models import build_detector

    cfg = Config.model_validate({"model": {"min_box_size": 2.5}})
    overrides = model_overrides(cfg)
    assert overrides["min_box_size"] == 2.5
    model = build_detector("gfl_shufflenetv2", **overrides)
    assert model.postprocessor.min_box_size == 2.5
    assert build_detector("gfl_shufflenetv2").postprocessor.min_box_size == 0.0
