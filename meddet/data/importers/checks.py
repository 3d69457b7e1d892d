"""Checks of the import options, the images and the boxes, and the parsers of the CLI options."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from meddet.data.generate import check_out_folder
from meddet.data.importers._records import RawBox, ReadOptions
from meddet.errors import MedDetError

# What ``overwrite`` may replace: a previous dataset (synthetic or imported), nothing else.
_IMPORTED_ENTRIES = {"images", "annotations", "import_summary.json"}


def parse_class_map(value: str | None) -> dict[str, str]:
    """``"old:new,old2:new"`` → ``{"old": "new", "old2": "new"}``.

    Raises:
        MedDetError: an item without exactly one ``:``, an empty name, or a repeated key.
    """
    if value is None or not value.strip():
        return {}
    mapping: dict[str, str] = {}
    for item in value.split(","):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 2 or not all(parts):
            raise MedDetError(f"--class-map item {item.strip()!r} is not OLD:NEW; use e.g. "
                              "--class-map RBC:cell,WBC:cell")
        if parts[0] in mapping:
            raise MedDetError(f"--class-map maps {parts[0]!r} twice")
        mapping[parts[0]] = parts[1]
    return mapping


def parse_split(value: str | None) -> tuple[float, float, float] | None:
    """``"0.7,0.15,0.15"`` → ``(0.7, 0.15, 0.15)``; None stays None (checked later)."""
    if value is None:
        return None
    try:
        parts = tuple(float(p) for p in value.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise MedDetError(f"--split must be three fractions TRAIN,VAL,TEST (e.g. 0.7,0.15,0.15), "
                          f"got {value!r}")
    return parts  # type: ignore[return-value]


def split_counts(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``ratios`` (summing to 1): floors, then the remainders go to the
    largest fractional parts (ties to the earlier split), so the counts sum to ``n``."""
    raw = [n * r for r in ratios]
    counts = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))[: n - sum(counts)]:
        counts[i] += 1
    return counts


def check_options(src: Path, out: Path, *, fmt: str, formats: Sequence[str],
                  images: str | os.PathLike | None, classes: Sequence[str] | None,
                  class_map: Mapping[str, str] | None, split: Sequence[float] | None, seed: int,
                  min_area: int, connectivity: int, overwrite: bool) -> ReadOptions:
    """Validate the options of :func:`~meddet.data.importers.import_dataset` before reading.

    Raises:
        MedDetError: the first invalid option, saying how to fix it.
    """
    if not src.exists():
        raise MedDetError(f"source {src} does not exist")
    if fmt not in formats:
        raise MedDetError(f"--format must be one of {', '.join(formats)}, got {fmt!r}")
    if fmt != "coco" and not src.is_dir():
        raise MedDetError(f"source {src} must be a folder for --format {fmt}")
    if images is not None and fmt != "coco":
        raise MedDetError("--images applies to --format coco only (the other formats find "
                          "their images themselves)")
    if images is not None and not Path(images).is_dir():
        raise MedDetError(f"--images {images} is not a folder")
    if classes is not None:
        if any(not isinstance(c, str) or not c.strip() for c in classes) \
                or len(set(classes)) != len(classes):
            raise MedDetError(f"--classes must be distinct non-empty names, got {list(classes)}")
    for old, new in (class_map or {}).items():
        if not str(old).strip() or not str(new).strip():
            raise MedDetError(f"--class-map has an empty name in {old!r}:{new!r}")
    if split is not None:
        ratios = list(split)
        if len(ratios) != 3 or not all(isinstance(r, (int, float)) and math.isfinite(r)
                                       and r >= 0 for r in ratios) \
                or abs(sum(ratios) - 1) > 1e-6:
            raise MedDetError(f"--split must be three non-negative fractions summing to 1 "
                              f"(e.g. 0.7,0.15,0.15), got {ratios}")
    for name, value, low in (("--seed", seed, 0), ("--min-area", min_area, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise MedDetError(f"{name} must be a non-negative integer, got {value!r}")
    if connectivity not in (4, 8):
        raise MedDetError(f"--connectivity must be 4 or 8, got {connectivity!r}")
    _check_out(src, out, overwrite)
    return ReadOptions(images=Path(images) if images is not None else None,
                       min_area=int(min_area), connectivity=int(connectivity))


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    s, o = src.resolve(), out.resolve()
    if s == o or s.is_relative_to(o) or o.is_relative_to(s):
        raise MedDetError(f"output {out} and source {src} overlap; write the dataset to a "
                          "folder outside the source")
    check_out_folder(out, overwrite=overwrite, allowed=_IMPORTED_ENTRIES)


def detect_format(src: Path) -> str:
    """Guess the format of ``src`` from its files.

    Raises:
        MedDetError: nothing recognisable; the message lists what each format needs.
    """
    if not src.exists():
        raise MedDetError(f"source {src} does not exist; pass the folder of the data set to "
                          "import (or its COCO JSON file)")
    if src.is_file():
        if src.suffix.lower() == ".json":
            return "coco"
    elif src.is_dir():
        if (src / "Annotations").is_dir():
            return "voc"
        if any((src / n).is_file() for n in ("data.yaml", "dataset.yaml", "data.yml",
                                             "dataset.yml", "classes.txt", "obj.names")):
            return "yolo"
        if (src / "masks").is_dir() or (src / "SegmentationClass").is_dir():
            return "masks"
        if next(src.glob("*.json"), None) or next(src.glob("*/*.json"), None):
            return "coco"
    raise MedDetError(f"cannot tell the format of {src}: pass --format voc (Annotations/*.xml), "
                      "yolo (labels/*.txt + a class list), coco (a JSON file) or masks "
                      "(images/ + masks/)")


def probe_image(path: Path) -> tuple[tuple[int, int], str]:
    """``((width, height), PIL format)`` of an image, decoding it fully so that a truncated or
    corrupt file is caught here rather than during training.

    Raises:
        MedDetError: the file does not decode.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return im.size, str(im.format)
    except Image.DecompressionBombError:
        raise MedDetError("image too large to decode safely") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise MedDetError(f"cannot decode image: {exc}") from None


def check_box(box: RawBox, width: int, height: int,
              tolerance: float) -> tuple[str | None, str, tuple[float, float, float, float] | None]:
    """Check a box against its ``width × height`` image.

    Returns:
        ``(reason, detail, xyxy)``: reason None and the box in pixels when it is good;
        ``"clipped"`` and the box clipped to the image when it overhangs by more than
        ``tolerance`` pixels (smaller overhangs are clipped silently: rounding in export tools);
        ``"unreadable"``, ``"degenerate"`` or ``"outside"`` and None when it is dropped.
    """
    x0, y0, x1, y1 = box.xyxy
    if box.normalized:
        x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    shown = f"[{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return "unreadable", f"box {shown} is not finite", None
    if x1 <= x0 or y1 <= y0:
        return "degenerate", f"box {shown} (xyxy) has size {x1 - x0:g}x{y1 - y0:g}", None
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return "outside", f"box {shown} (xyxy) lies outside the {width}x{height} image", None
    clipped = (round(max(x0, 0.0), 3), round(max(y0, 0.0), 3),
               round(min(x1, float(width)), 3), round(min(y1, float(height)), 3))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:  # thinner than the rounding
        return "degenerate", f"box {shown} (xyxy) is under 0.001 px wide or high", None
    over = max(-x0, -y0, x1 - width, y1 - height)
    if over > tolerance:
        return "clipped", f"box {shown} (xyxy) overhangs the {width}x{height} image by " \
            f"{over:g} px; clipped", clipped
    return None, "", clipped
