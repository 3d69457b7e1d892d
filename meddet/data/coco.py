"""Reading and validating COCO detection annotation files.

pycocotools trusts its input; a typo in an annotation file then surfaces as a shape error deep
inside training. :func:`load_coco` checks the file once, up front, and names the file and the
annotation id of the first problem, so it can be fixed.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pycocotools.coco import COCO

from meddet.errors import MedDetError

# Boxes may overhang the image by this many pixels (rounding in export tools); they are clipped.
BOX_TOLERANCE = 0.5


@dataclass
class CocoFile:
    """A validated annotation file.

    Attributes:
        coco: the pycocotools index (only the boxes that passed validation).
        path: the annotation file.
        skipped: ``(annotation id, reason)`` of each box dropped under ``on_bad_box="skip"``.
    """

    coco: COCO
    path: Path
    skipped: list[tuple[Any, str]] = field(default_factory=list)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _box_problem(bbox: Any, width: float, height: float) -> tuple[str | None, list[float]]:
    """Why a COCO ``[x, y, w, h]`` box is invalid (None when valid) and the clipped box."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_num, bbox)):
        return f"has a malformed bbox {bbox!r} (need 4 numbers [x, y, w, h])", []
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        return f"has a non-positive box size (w={w:g}, h={h:g})", []
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        return (
            f"has a box [{x:g}, {y:g}, {w:g}, {h:g}] outside the {width:g}x{height:g} image",
            [],
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return None, [x0, y0, x1 - x0, y1 - y0]


def load_coco(
    ann_file: str | os.PathLike,
    *,
    on_bad_box: Literal["fail", "skip"] = "fail",
) -> CocoFile:
    """Load and validate a COCO detection annotation file.

    Checks: valid JSON; ``images``, ``annotations`` and ``categories`` lists; unique integer
    image, annotation and category ids; image ``width``/``height``/``file_name``; every
    annotation's ``image_id`` and ``category_id`` exist; boxes have positive size and lie in
    their image. Images without annotations are valid (negatives).

    Args:
        ann_file: path of the JSON file.
        on_bad_box: ``"fail"`` raises on an invalid box; ``"skip"`` drops it and records it in
            :attr:`CocoFile.skipped` (other problems always raise).

    Returns:
        A :class:`CocoFile`.

    Raises:
        MedDetError: naming the file and, where there is one, the annotation id.
    """
    if on_bad_box not in ("fail", "skip"):
        raise MedDetError(f"on_bad_box must be 'fail' or 'skip', got {on_bad_box!r}")
    path = Path(ann_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedDetError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedDetError(f"cannot read annotation file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedDetError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the file or regenerate it"
        ) from None

    def bad(msg: str) -> MedDetError:
        return MedDetError(f"{path}: {msg}")

    if not isinstance(data, dict):
        raise bad("top level must be a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise bad(f"missing or non-list {key!r}; a COCO detection file needs all three lists")

    cat_ids: set[int] = set()
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not _is_id(cat.get("id")) or not isinstance(cat.get("name"), str):
            raise bad(f"category {cat!r} needs an integer 'id' and a string 'name'")
        if cat["id"] in cat_ids:
            raise bad(f"category id {cat['id']} appears twice")
        cat_ids.add(cat["id"])
    if not cat_ids:
        raise bad("'categories' is empty; list the classes as [{'id': 1, 'name': ...}, ...]")

    sizes: dict[int, tuple[float, float]] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            raise bad(f"image record {img!r} needs an integer 'id'")
        iid = img["id"]
        if iid in sizes:
            raise bad(f"image id {iid} appears twice")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            raise bad(f"image id {iid} has no 'file_name'")
        w, h = img.get("width"), img.get("height")
        if not (_is_num(w) and _is_num(h) and w > 0 and h > 0):
            raise bad(f"image id {iid} ({img['file_name']}) needs positive 'width' and 'height'")
        sizes[iid] = (float(w), float(h))

    kept: list[dict[str, Any]] = []
    skipped: list[tuple[Any, str]] = []
    ann_ids: set[int] = set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or not _is_id(ann.get("id")):
            raise bad(f"annotation {str(ann)[:80]} needs an integer 'id'")
        aid = ann["id"]
        if aid in ann_ids:
            raise bad(f"annotation id {aid} appears twice")
        ann_ids.add(aid)
        if ann.get("image_id") not in sizes:
            raise bad(f"annotation id {aid} refers to image_id {ann.get('image_id')!r}, "
                      "which is not in 'images'")
        if ann.get("category_id") not in cat_ids:
            raise bad(f"annotation id {aid} has category_id {ann.get('category_id')!r}, which is "
                      f"not in 'categories' (ids {sorted(cat_ids)})")
        w, h = sizes[ann["image_id"]]
        problem, clipped = _box_problem(ann.get("bbox"), w, h)
        if problem is not None:
            if on_bad_box == "fail":
                raise bad(f"annotation id {aid} (image_id {ann['image_id']}) {problem}; fix it, "
                          "or skip bad boxes with data.on_bad_box: skip")
            skipped.append((aid, problem))
            continue
        ann = dict(ann, bbox=clipped)
        ann.setdefault("area", clipped[2] * clipped[3])
        ann.setdefault("iscrowd", 0)
        kept.append(ann)

    coco = COCO()
    coco.dataset = dict(data, annotations=kept)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return CocoFile(coco=coco, path=path, skipped=skipped)
