"""Where maintained libraries do what meddet does by hand: the same results, checked.

* IoU / GIoU: :mod:`meddet.models.box_ops` against ``torchvision.ops`` (kept separate for the
  reasons in that module's docstring, which these tests pin).
* Mask components: :func:`meddet.data.importers.masks.mask_components` (``scipy.ndimage``)
  against a plain flood fill.
* VOC XML: parsed with defusedxml, so entity declarations are refused, not expanded.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
import torchvision.ops as tvo

from meddet.models.box_ops import aligned_giou, aligned_iou, box_iou


def _boxes(n: int, g: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 0.5
    return torch.cat([xy, xy + wh], 1)


def test_iou_and_giou_equal_torchvision_on_boxes_with_area():
    g = torch.Generator().manual_seed(0)
    a, b, c = _boxes(60, g), _boxes(40, g), _boxes(60, g)
    assert torch.equal(box_iou(a, b), tvo.box_iou(a, b))
    assert torch.equal(aligned_iou(a, c), tvo.box_iou(a, c).diagonal())
    assert torch.equal(aligned_giou(a, c), tvo.generalized_box_iou(a, c).diagonal())
    # Batched: one [B, N, M] call equals B torchvision calls.
    batched = box_iou(torch.stack([a[:20], a[20:40]]), torch.stack([b[:10], b[10:20]]))
    assert torch.equal(batched[1], tvo.box_iou(a[20:40], b[10:20]))


def test_zero_area_boxes_give_zero_not_nan():
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert torch.isnan(tvo.box_iou(z, z)).all()  # why box_ops keeps its own
    assert box_iou(z, z).item() == 0.0 and aligned_giou(z, z).item() == 0.0


def _flood_fill_components(mask: np.ndarray, connectivity: int):
    """Reference: breadth-first flood fill of each value, pixel by pixel."""
    h, w = mask.shape
    seen = np.zeros((h, w), bool)
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    out = []
    for y in range(h):
        for x in range(w):
            v = mask[y, x]
            if v == 0 or seen[y, x]:
                continue
            seen[y, x] = True
            queue, pixels = deque([(y, x)]), []
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy, dx in steps:
                    ny, nx = cy + dy, cx + dx
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny, nx] and mask[ny, nx] == v:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
            ys, xs = zip(*pixels)
            out.append((int(v), (min(xs), min(ys), max(xs) + 1, max(ys) + 1), len(pixels)))
    return sorted(out)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_mask_components_equal_a_flood_fill(connectivity):
    from meddet.data.importers.masks import mask_components

    rng = np.random.default_rng(connectivity)
    for _ in range(40):
        h, w = rng.integers(1, 16, 2)
        mask = (rng.random((h, w)) < rng.random()) * rng.integers(1, 4, (h, w))
        got = mask_components(mask.astype(np.uint16), connectivity)
        assert sorted(got) == _flood_fill_components(mask, connectivity)
        assert got == sorted(got, key=lambda c: (c[0], c[1][1], c[1][0]))
    # Hand-computed: a diagonal pair is one component with 8-connectivity, two with 4.
    diag = np.array([[1, 0], [0, 1]])
    assert mask_components(diag, 8) == [(1, (0, 0, 2, 2), 2)]
    assert mask_components(diag, 4) == [(1, (0, 0, 1, 1), 1), (1, (1, 1, 2, 2), 1)]


def test_voc_import_refuses_entity_declarations(tmp_path):
    from PIL import Image

    from meddet.data.importers import import_dataset

    src = tmp_path / "voc"
    (src / "Annotations").mkdir(parents=True)
    (src / "JPEGImages").mkdir()
    box = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
    for stem, name, doctype in (("a", "&e2;", '<!DOCTYPE a [<!ENTITY e "x"><!ENTITY e2 '
                                              '"&e;&e;">]>'), ("b", "x", "")):
        Image.new("RGB", (32, 32)).save(src / "JPEGImages" / f"{stem}.jpg")
        (src / "Annotations" / f"{stem}.xml").write_text(
            f'<?xml version="1.0"?>{doctype}<annotation><filename>{stem}.jpg</filename><size>'
            f"<width>32</width><height>32</height></size><object><name>{name}</name>{box}"
            "</object></annotation>")
    summary = import_dataset(src, tmp_path / "out", split=(1.0, 0.0, 0.0))
    assert summary.images == 1 and summary.classes == ["x"]  # "xx" was never expanded
    (row,) = [r for r in summary.dropped().values() if "unsafe XML" in r["first"]]
    assert "a.xml" in row["first"] and "EntitiesForbidden" in row["first"]
