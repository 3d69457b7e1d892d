"""Property-based tests (hypothesis): box operations, the COCO loader on random
annotation records, and the image readers on random bytes. Nothing may fail other than with the
documented clear error (:class:`~meddet.errors.MedDetError`, or a ``Skip`` in predict)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meddet.errors import MedDetError
from meddet.models.box_ops import (
    aligned_giou,
    aligned_iou,
    bbox2distance,
    box_iou,
    distance2bbox,
)

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

coord = st.floats(-1000, 1000, allow_nan=False, width=32)
size = st.floats(0, 1000, allow_nan=False, width=32)


@st.composite
def boxes(draw, n=None, positive=False):
    n = draw(st.integers(1, 6)) if n is None else n
    out = []
    for _ in range(n):
        x, y = draw(coord), draw(coord)
        lo = 1.0 if positive else 0.0
        w, h = draw(st.floats(lo, 1000, width=32)), draw(st.floats(lo, 1000, width=32))
        out.append([x, y, x + w, y + h])
    return torch.tensor(out, dtype=torch.float32)


# --------------------------------------------------------------------------- box operations
@FAST
@given(boxes(), boxes())
def test_iou_is_bounded_symmetric_and_finite(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b)) and torch.isfinite(iou).all()
    assert (iou >= 0).all() and (iou <= 1 + 1e-5).all()
    torch.testing.assert_close(iou, box_iou(b, a).T)


@FAST
@given(st.data())
def test_giou_bounds_and_relation_to_iou(data):
    a = data.draw(boxes())
    b = data.draw(boxes(n=len(a)))
    iou, giou = aligned_iou(a, b), aligned_giou(a, b)
    assert torch.isfinite(giou).all()
    assert (giou >= -1 - 1e-5).all() and (giou <= iou + 1e-5).all()
    torch.testing.assert_close(iou, box_iou(a, b).diagonal())


@FAST
@given(boxes(positive=True))
def test_a_box_overlaps_itself_fully(a):
    torch.testing.assert_close(aligned_iou(a, a), torch.ones(len(a)), atol=1e-4, rtol=0)
    torch.testing.assert_close(aligned_giou(a, a), torch.ones(len(a)), atol=1e-4, rtol=0)


@FAST
@given(st.data())
def test_inverted_boxes_give_no_nan(data):
    a = data.draw(boxes())
    flipped = a[:, [2, 3, 0, 1]]  # x2 < x1: degenerate, zero area
    iou = box_iou(flipped, a)
    assert torch.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1 + 1e-5).all()
    assert torch.isfinite(aligned_giou(flipped, a)).all()


@FAST
@given(st.data())
def test_encode_decode_round_trip(data):
    b = data.draw(boxes())
    pts = torch.tensor([[data.draw(coord), data.draw(coord)] for _ in range(len(b))])
    dist = bbox2distance(pts, b)
    torch.testing.assert_close(distance2bbox(pts, dist), b, atol=1e-3, rtol=1e-5)
    # Points inside the box: all distances non-negative, and the clamped (DFL) code of a box
    # smaller than max_dis decodes exactly.
    centre = (b[:, :2] + b[:, 2:]) / 2
    d = bbox2distance(centre, b, max_dis=2000.0)
    assert (d >= 0).all()
    torch.testing.assert_close(distance2bbox(centre, d), b, atol=1e-3, rtol=1e-5)
    clipped = distance2bbox(centre, d, max_shape=(64, 48))
    assert (clipped[:, [0, 2]] >= 0).all() and (clipped[:, [0, 2]] <= 48).all()
    assert (clipped[:, [1, 3]] >= 0).all() and (clipped[:, [1, 3]] <= 64).all()


# --------------------------------------------------------------------------- COCO loader
junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3),
                 st.floats(allow_nan=True, allow_infinity=True),
                 st.lists(st.integers(-3, 3), max_size=5))
maybe_num = st.one_of(st.integers(-20, 300), st.floats(-20, 300), junk)  # junk has NaN/inf
ann_record = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 8), junk),
     "image_id": st.one_of(st.integers(1, 3), junk),
     "category_id": st.one_of(st.integers(1, 3), junk)},
    optional={"bbox": st.one_of(st.lists(maybe_num, min_size=0, max_size=5), junk),
              "iscrowd": st.one_of(st.integers(0, 1), junk),
              "area": maybe_num})
img_record = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 3), junk)},
    optional={"file_name": st.one_of(st.just("a.png"), junk),
              "width": st.one_of(st.integers(1, 200), junk),
              "height": st.one_of(st.integers(1, 200), junk)})
cat_record = st.fixed_dictionaries({"id": st.one_of(st.integers(1, 2), junk),
                                    "name": st.one_of(st.just("disc"), junk)})


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(images=st.lists(img_record, max_size=3), anns=st.lists(ann_record, max_size=6),
       cats=st.lists(cat_record, max_size=3), on_bad_box=st.sampled_from(["fail", "skip"]))
def test_coco_loader_on_random_records(images, anns, cats, on_bad_box, tmp_path):
    from meddet.data.coco import load_coco

    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    try:
        loaded = load_coco(path, on_bad_box=on_bad_box)
    except MedDetError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    # Whatever was accepted is clean: valid ids, positive boxes inside their image.
    coco = loaded.coco
    for a in coco.anns.values():
        img = coco.imgs[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert a["category_id"] in coco.cats and w > 0 and h > 0
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.recursive(junk, lambda c: st.one_of(st.lists(c, max_size=3),
                                                         st.dictionaries(st.text(max_size=12), c,
                                                                         max_size=4)),
                              max_leaves=8).map(lambda v: json.dumps(v).encode())))
def test_coco_loader_on_random_files(blob, tmp_path):
    from meddet.data.coco import load_coco

    path = tmp_path / "ann.json"
    path.write_bytes(blob)
    try:
        load_coco(path)
    except MedDetError as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------- image readers
HEADERS = [b"", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"\xff\xd8\xff",
           b"\x00" * 128 + b"DICM", b"\x5c\x01\x00\x00"]
SUFFIXES = [".png", ".tif", ".jpg", ".dcm", ".nii", ".nii.gz"]


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from(HEADERS), body=st.binary(max_size=600),
       suffix=st.sampled_from(SUFFIXES))
def test_readers_on_random_bytes(head, body, suffix, tmp_path):
    from meddet.data.transforms import load_image
    from meddet.inference.readers import Skip, Slice, discover_inputs, iter_slices, parse_slices

    path = tmp_path / f"input{suffix}"
    path.write_bytes(head + body)
    if suffix in (".png", ".tif", ".jpg"):
        try:  # the dataset reader: an array or a clear error
            arr = load_image(path)
            assert arr.ndim == 2
        except MedDetError as exc:
            assert str(path) in str(exc)
    # The predict reader never raises for a bad file: it yields a Skip with a reason.
    items = [i for s in discover_inputs([path]) for i in iter_slices(s, parse_slices("all"))]
    for item in items:
        assert isinstance(item, (Slice, Skip))
        if isinstance(item, Skip):
            assert item.reason and "\n" not in item.reason


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40),
       fill=st.sampled_from([0.0, 1.0, 65535.0, -3.0, math.nan, math.inf]),
       frac=st.floats(0, 1), seed=st.integers(0, 2**16))
def test_preprocess_on_odd_arrays(h, w, fill, frac, seed):
    from meddet.data import preprocess

    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 50, (h, w)).astype(np.float32)
    arr[rng.random((h, w)) < frac] = fill
    try:
        x, scale = preprocess(arr, 64)
    except MedDetError:
        assert not np.isfinite(arr).all()  # only non-finite pixels may be refused
        return
    assert x.shape == (3, 64, 64) and torch.isfinite(x).all() and scale > 0


@pytest.mark.parametrize("n", [0, 1])
def test_empty_box_sets(n):
    a = torch.zeros(n, 4)
    assert box_iou(a, torch.zeros(0, 4)).shape == (n, 0)
    assert aligned_giou(a, a).shape == (n,)
