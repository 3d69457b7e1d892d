"""benchmarks/box_shapes.py: box heights in millimetres and height ÷ width, synthetic and real."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "box_shapes.py"


def test_synthetic_shapes_use_each_images_pixel_size(script_module, tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    doc = {"images": [{"id": 1, "pixel_mm": 0.5}, {"id": 2, "pixel_mm": 2.0}, {"id": 3}],
           "annotations": [{"image_id": 1, "bbox": [0, 0, 20, 10]},
                           {"image_id": 2, "bbox": [5, 5, 8, 2]},
                           {"image_id": 3, "bbox": [0, 0, 1, 1]}]}  # no pixel size: skipped
    (ann / "train.json").write_text(json.dumps(doc))
    h, r, lv = script_module.synthetic_shapes(tmp_path, "train")
    assert h.tolist() == [5.0, 4.0] and r.tolist() == [0.5, 0.25]
    assert lv.size == 0  # one box per image: no neighbour to measure a level by
    assert script_module.row("x", h, r, r) == (
        "| x | 2 | 4.01 / 4.05 / 4.25 / 4.50 / 4.75 | 0.25 / 0.26 / 0.31 / 0.38 / 0.44 "
        "| 0.25 / 0.26 / 0.31 / 0.38 / 0.44 |")


def test_level_ratios_divide_by_the_nearest_neighbours_distance(script_module):
    # three discs 10 px tall, centres 0-30-70 px apart down the image: spacings 30, 30, 40
    boxes = np.array([[0, 0, 20, 10], [0, 30, 20, 40], [0, 70, 20, 80]], float)
    assert script_module.level_ratios(boxes).tolist() == pytest.approx([10 / 30, 10 / 30,
                                                                        10 / 40])
    assert script_module.level_ratios(boxes[:1]).size == 0


def test_real_shapes_skip_cut_discs_and_match_the_label_file(script_module):
    from meddet.engine.realcheck import load_real_disc_labels

    shapes = script_module.real_shapes()
    assert sorted(shapes) == ["sct_t1w_cervical.nii.gz", "sct_t2_cervical.nii.gz"]
    labels = load_real_disc_labels()
    for vol, (h, r, _lv) in shapes.items():
        boxes = [b for sl in labels if sl.volume == vol
                 for b, cut in zip(sl.boxes, sl.truncated) if not cut]
        assert len(h) == len(boxes) < sum(len(sl.boxes) for sl in labels if sl.volume == vol)
        b = boxes[0]
        assert h[0] == pytest.approx(b[3] - b[1]) and r[0] == pytest.approx(
            (b[3] - b[1]) / (b[2] - b[0]))
    # the T2 discs: 3.5-4 mm tall, about 0.3 as tall as wide
    h, r, lv = shapes["sct_t2_cervical.nii.gz"]
    assert np.all((h >= 3.5) & (h <= 4.0)) and np.all((r > 0.25) & (r <= 0.33))
    # each takes about a fifth of its vertebral level (labels 18 px apart, 4 px tall)
    assert len(lv) == len(h) and np.all((lv > 0.18) & (lv < 0.25))
