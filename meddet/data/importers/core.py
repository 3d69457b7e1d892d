"""From a reader's :class:`Source` to a dataset that :class:`~meddet.data.CocoDetection` reads.

One pass checks everything (images decode, sizes agree, boxes are inside their image, classes
are known) before anything is written; a second writes ``images/{split}/`` and
``annotations/{split}.json`` into a hidden sibling folder that replaces ``out`` only when
complete, so a failed import never leaves a half-written dataset.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meddet import __version__
from meddet._io import atomic_write_json
from meddet.data.coco import BOX_TOLERANCE
from meddet.data.generate import SPLITS, _fresh_dir, _swap_into_place
from meddet.data.importers._records import REASONS, Problem, ReadOptions, Source, SourceItem
from meddet.data.importers.checks import (
    check_box,
    check_options,
    detect_format,
    probe_image,
    split_counts,
)
from meddet.data.importers.coco import read_coco
from meddet.data.importers.masks import read_masks
from meddet.data.importers.summary import ImportSummary
from meddet.data.importers.voc import read_voc
from meddet.data.importers.yolo import read_yolo
from meddet.errors import MedDetError

READERS: dict[str, Callable[[Path, ReadOptions], Source]] = {
    "voc": read_voc, "yolo": read_yolo, "coco": read_coco, "masks": read_masks}
FORMATS = tuple(READERS)
# Formats the loader reads that are copied byte for byte; anything else is re-encoded as PNG.
_KEEP = {"JPEG": ".jpg", "PNG": ".png"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def import_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str | None = None,
    images: str | os.PathLike | None = None,
    classes: Sequence[str] | None = None,
    class_map: Mapping[str, str] | None = None,
    split: Sequence[float] | None = None,
    seed: int = 0,
    min_area: int = 1,
    connectivity: int = 8,
    strict: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Convert a Pascal VOC, YOLO, COCO or segmentation-mask dataset to the project's layout.

    Writes ``out/images/{split}/`` (JPEG and PNG copied as they are, other formats re-encoded
    as PNG; :class:`~meddet.data.CocoDetection` reads both, colour converted to grey when
    loaded), ``out/annotations/{split}.json`` (COCO; boxes ``[x, y, w, h]`` in pixels,
    category ids 1..K in the order of :attr:`ImportSummary.classes`) and
    ``out/import_summary.json``.

    Bad input is counted in :attr:`ImportSummary.problems` and left out: a missing or
    unreadable image (with its boxes), an unreadable annotation file or entry, an image whose
    size differs from its annotation, an unknown class, a box of zero or negative size, a box
    entirely outside its image. A box partly outside is clipped to the image, and counted.

    Args:
        src: the source folder (a COCO JSON file also works for ``"coco"``).
        out: output folder: new, empty, or (with ``overwrite``) a previous dataset.
        format: ``"voc"``, ``"yolo"``, ``"coco"`` or ``"masks"``; None detects it.
        images: COCO only: the folder that ``file_name`` is relative to.
        classes: the classes to keep, in the order of their category ids (after
            ``class_map``); boxes of other classes are dropped and counted as excluded.
            Default: all, in the source's order (class list, category ids, or sorted names).
        class_map: ``{source name: new name}`` renames classes; two names mapped to one merge.
            For masks the source names are the label values (``"1"``, ``"2"``, ...).
        split: ``(train, val, test)`` fractions summing to 1 for a seeded random split of all
            images; None keeps the source's splits.
        seed: seed of the random split.
        min_area: masks: smallest connected component kept, in pixels.
        connectivity: masks: 8 or 4 (see :func:`~meddet.data.importers.masks.mask_components`).
        strict: fail on the first defect instead of dropping and counting it.
        overwrite: replace a previous dataset in ``out``.
        progress: optional ``progress(done, total)``, called per image checked and written.

    Returns:
        An :class:`ImportSummary`.

    Raises:
        MedDetError: invalid options, an unusable source or ``out``, no usable image, or (with
            ``strict``) the first defect, naming its file. Nothing is written then.
    """
    src, out = Path(src), Path(out)
    if src.is_file() and src.suffix.lower() in (".yaml", ".yml"):
        src = src.parent  # a YOLO data.yaml: its data set is the folder that holds it
    fmt = format if format is not None else detect_format(src)
    options = check_options(src, out, fmt=fmt, formats=FORMATS, images=images, classes=classes,
                            class_map=class_map, split=split, seed=seed, min_area=min_area,
                            connectivity=connectivity, overwrite=overwrite)
    source = READERS[fmt](src, options)
    if split is None and not source.has_splits and source.items:
        raise MedDetError(f"{src} does not divide its images into train/val/test; pass "
                          "--split 0.7,0.15,0.15 (and --seed) to split them at random")
    names, mapping = _resolve_classes(source, classes, class_map or {}, src)
    problems = list(source.problems)
    items = sorted(source.items, key=lambda it: (it.key, it.split or ""))
    checked: list[tuple[SourceItem, tuple[int, int], str, list]] = []
    total = 2 * len(items)
    for done, item in enumerate(items, 1):
        result = _check_item(item, names, mapping, problems)
        if result is not None:
            checked.append((item, *result))
        if progress is not None:
            progress(done, total)
    defects = [p for p in problems if REASONS[p.reason][1]]
    if strict and defects:
        more = f" (and {len(defects) - 1} more)" if len(defects) > 1 else ""
        raise MedDetError(f"{defects[0].line()} [{REASONS[defects[0].reason][0]}; --strict]"
                          f"{more}; fix the input or import without --strict to drop and count "
                          "such cases")
    if split is None:
        for item, *_ in checked:
            if item.split is None:
                problems.append(Problem("unsplit", item.key, "not listed in any split",
                                        boxes=len(item.boxes)))
        assigned = [(entry[0].split, *entry) for entry in checked if entry[0].split is not None]
        split_rule = "given"
    else:
        assigned = _random_split(checked, split, seed)
        split_rule = f"ratio {','.join(f'{r:g}' for r in split)} seed {seed}"
    if not assigned:
        first = f"; first problem: {problems[0].line()}" if problems else ""
        raise MedDetError(f"no usable image in {src} (format {fmt}){first}")
    summary = ImportSummary(
        source=str(src), out=str(out), format=fmt, classes=names, splits={},
        boxes_read=sum(len(it.boxes) for it in items) + sum(p.boxes for p in source.problems),
        boxes_read_per_class=_count_labels(items, mapping), problems=problems, split_rule=split_rule,
        settings={"classes": list(classes) if classes else None,
                  "class_map": dict(class_map or {}), "split": list(split) if split else None,
                  "seed": seed, "min_area": min_area, "connectivity": connectivity,
                  "strict": strict, "images": str(images) if images else None})
    if split is None:  # every split the source names, even one whose images were all dropped
        splits = sorted({it.split for it in items if it.split}, key=SPLITS.index)
    else:
        splits = [s for s, r in zip(SPLITS, split) if r > 0]

    def written(k: int) -> None:
        if progress is not None:
            progress(len(items) + k, len(items) + len(assigned))

    _write(out, assigned, splits, summary, written)
    return summary


def _resolve_classes(source: Source, classes: Sequence[str] | None, class_map: Mapping[str, str],
                     src: Path) -> tuple[list[str], dict[str, str]]:
    """The output class names in id order, and ``{source name: output name}``."""
    seen = source.classes if source.classes is not None else sorted(
        {b.label for it in source.items for b in it.boxes})
    unknown = [k for k in class_map if k not in seen]
    if unknown:
        raise MedDetError(f"--class-map names {unknown[0]!r}, which is not a class of {src} "
                          f"(classes: {', '.join(seen) or 'none'})")
    mapping = {name: class_map.get(name, name) for name in seen}
    mapped = list(dict.fromkeys(mapping.values()))
    if classes:
        missing = [c for c in classes if c not in mapped]
        if missing:
            raise MedDetError(f"--classes names {missing[0]!r}, which is not a class of {src} "
                              f"after the class map (classes: {', '.join(mapped) or 'none'})")
        return list(classes), mapping
    if not mapped:
        raise MedDetError(f"found no class in {src}: no box and no class list")
    return mapped, mapping


def _check_item(item: SourceItem, names: list[str], mapping: dict[str, str],
                problems: list[Problem]):
    """``(size, image format, boxes)`` of a usable item (boxes as ``(cat_id, xyxy, crowd)``),
    or None with the reason appended to ``problems``."""
    lost = len(item.boxes)
    if not item.image.is_file():
        where = f" (annotation {item.where})" if item.where else ""
        problems.append(Problem("missing_image", item.key, f"image file does not exist{where}",
                                boxes=lost))
        return None
    try:
        (w, h), fmt = probe_image(item.image)
    except MedDetError as exc:
        problems.append(Problem("unreadable", item.key, str(exc), boxes=lost))
        return None
    if item.size is not None and item.size != (w, h):
        problems.append(Problem("size_mismatch", item.key, f"image is {w}x{h} but "
                                f"{item.where} says {item.size[0]}x{item.size[1]}", boxes=lost))
        return None
    boxes = []
    for box in item.boxes:
        name = mapping.get(box.label, box.label)
        if name not in names:
            reason = "excluded" if box.label in mapping else "unknown_class"
            problems.append(Problem(reason, box.where, f"class {box.label!r}", boxes=1))
            continue
        reason, detail, xyxy = check_box(box, w, h, BOX_TOLERANCE)
        if reason is not None:
            problems.append(Problem(reason, box.where, detail, boxes=0 if xyxy else 1))
            if not xyxy:
                continue
        boxes.append((names.index(name) + 1, xyxy, box.iscrowd))
    return (w, h), fmt, boxes


def _random_split(checked: list, ratios: Sequence[float], seed: int) -> list:
    """``(split, *checked item)`` for each item, the splits drawn by a seeded permutation."""
    counts = split_counts(len(checked), ratios)
    split_of = np.empty(len(checked), int)
    split_of[np.random.default_rng(seed).permutation(len(checked))] = np.repeat(
        np.arange(len(SPLITS)), counts)
    return [(SPLITS[s], *entry) for s, entry in zip(split_of.tolist(), checked)]


def _count_labels(items: list[SourceItem], mapping: dict[str, str]) -> dict[str, int]:
    """Boxes per source class name, in the source's class order."""
    counts = dict.fromkeys(mapping, 0)
    for item in items:
        for box in item.boxes:
            counts[box.label] = counts.get(box.label, 0) + 1
    return {k: v for k, v in counts.items() if v}


def _write(out: Path, assigned: list, splits: list[str], summary: ImportSummary,
           progress: Callable[[int], Any]) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_dir(out, "partial")
    except OSError as exc:
        raise MedDetError(f"cannot create the dataset folder {out}: {exc.strerror or exc}; "
                          "choose a writable location") from None
    done = 0
    try:
        for split in splits:
            img_dir = tmp / "images" / split
            img_dir.mkdir(parents=True)
            used: set[str] = set()
            images, annotations = [], []
            per_class = dict.fromkeys(summary.classes, 0)
            for s, item, (w, h), fmt, boxes in assigned:
                if s != split:
                    continue
                name = _out_name(item.key, _KEEP.get(fmt, ".png"), used)
                if fmt in _KEEP:
                    shutil.copyfile(item.image, img_dir / name)
                    summary.copied += 1
                else:
                    _to_png(item.image, img_dir / name)
                    summary.converted += 1
                iid = len(images) + 1
                images.append({"id": iid, "file_name": name, "width": w, "height": h,
                               "source": item.key})
                for cat, (x0, y0, x1, y1), crowd in boxes:
                    bw, bh = round(x1 - x0, 3), round(y1 - y0, 3)
                    annotations.append({"id": len(annotations) + 1, "image_id": iid,
                                        "category_id": cat, "bbox": [x0, y0, bw, bh],
                                        "area": round(bw * bh, 3), "iscrowd": int(crowd)})
                    per_class[summary.classes[cat - 1]] += 1
                done += 1
                progress(done)
            coco = {"info": {"description": f"imported from {summary.source} "
                             f"({summary.format})", "version": __version__, "split": split},
                    "licenses": [], "images": images, "annotations": annotations,
                    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(summary.classes)]}
            (tmp / "annotations").mkdir(exist_ok=True)
            (tmp / "annotations" / f"{split}.json").write_text(json.dumps(coco, indent=1) + "\n",
                                                               encoding="utf-8")
            summary.splits[split] = {"images": len(images), "boxes": len(annotations),
                                     "per_class": per_class}
        atomic_write_json(tmp / "import_summary.json", summary.to_dict())
        _swap_into_place(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MedDetError(f"cannot write the dataset to {out}: {exc.strerror or exc}; check the "
                          "disk space and permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _out_name(key: str, ext: str, used: set[str]) -> str:
    """A file-system-safe name from the source path's stem, unique within the split."""
    stem = _UNSAFE.sub("_", Path(key).stem).strip("._-") or "image"
    name, k = f"{stem}{ext}", 1
    while name.lower() in used:
        k += 1
        name = f"{stem}_{k}{ext}"
    used.add(name.lower())
    return name


def _to_png(path: Path, dest: Path) -> None:
    """Re-encode an image the loader reads as a lossless PNG (first frame of a stack)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I", "F", "I;32"):
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            # PNG has no 32-bit or float pixels; the loader normalises intensities anyway.
            scale = 65535.0 / (hi - lo) if hi > lo and math.isfinite(hi - lo) else 0.0
            im = Image.fromarray(np.rint((arr - lo) * scale).astype(np.uint16))
        elif im.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        im.save(dest, format="PNG")
