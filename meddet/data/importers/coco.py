"""COCO detection JSON in any folder layout.

The source is one JSON file (no splits), or a folder: every ``*.json`` in it (two levels deep
at most) whose file or folder name names a split (``train``, ``val``/``valid``, ``test``, as in
``instances_val2017.json``, ``annotations/train.json`` or Roboflow's
``valid/_annotations.coco.json``) is one split; when several files name the same split, the
``instances_*`` one is used.

An image's ``file_name`` (absolute, or relative) is looked up under, in order: ``--images``
(and ``--images/<split folder>``), the JSON file's folder, its ``images/`` folder, the folder
above it, that folder's ``images/<split>/`` and ``images/``, and the folder named like the
split token of the JSON file (``val2017/`` beside ``annotations/``); then by its base name in
the same places.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from meddet.data.importers._paths import SPLIT_ALIASES, rel
from meddet.data.importers._records import Problem, RawBox, ReadOptions, Source, SourceItem
from meddet.errors import MedDetError


def read_coco(src: Path, options: ReadOptions) -> Source:
    """Read COCO annotation file(s).

    Raises:
        MedDetError: a folder without usable JSON files, or with two candidates for one split.
    """
    files = [(src, None, "")] if src.is_file() else _split_files(src)
    base = src.parent if src.is_file() else src
    problems: list[Problem] = []
    items: list[SourceItem] = []
    classes: list[str] = []
    for path, split, token in files:
        where = rel(path, base)
        data = _load(path, where, problems)
        if data is None:
            continue
        cats = _categories(data["categories"], where, problems)
        for cid in sorted(cats, key=lambda c: (isinstance(c, str), c)):
            if cats[cid] not in classes:
                classes.append(cats[cid])
        roots = _roots(path, split, token, options.images)
        items.extend(_items(data, cats, roots, split, where, base, problems))
    return Source(items=items, classes=classes, problems=problems,
                  has_splits=any(split is not None for _, split, _ in files))


def _split_token(path: Path, src: Path) -> tuple[str | None, str]:
    """The split a JSON file names (file name first, then its folders) and the raw token."""
    names = [path.stem] + [p.name for p in path.relative_to(src).parents if p.name][:2]
    for name in names:
        for token in re.split(r"[^A-Za-z0-9]+", name.lower()):
            split = SPLIT_ALIASES.get(token.rstrip("0123456789"))
            if split is not None:
                return split, token
    return None, ""


def _split_files(src: Path) -> list[tuple[Path, str | None, str]]:
    found = sorted(p for p in src.glob("*.json") if not p.name.startswith(".")) + sorted(
        p for pattern in ("*/*.json", "*/*/*.json") for p in src.glob(pattern)
        if not any(part.startswith(".") for part in p.relative_to(src).parts))
    found = [p for p in found if p.name != "import_summary.json"]
    if not found:
        raise MedDetError(f"found no .json file in {src} (nor two levels below); pass the COCO "
                          "annotation file itself, or the right --format")
    by_split: dict[str, list[tuple[Path, str]]] = {}
    for path in found:
        split, token = _split_token(path, src)
        if split is not None:
            by_split.setdefault(split, []).append((path, token))
    if not by_split:
        if len(found) == 1:
            return [(found[0], None, "")]
        raise MedDetError(f"{src} holds {len(found)} JSON files and none names a split (train, "
                          f"val, test); pass one annotation file, e.g. {found[0]}")
    out = []
    for split in ("train", "val", "test"):
        cands = by_split.get(split, [])
        if len(cands) > 1:
            cands = [c for c in cands if c[0].name.startswith("instances")] or cands
        if len(cands) > 1:
            raise MedDetError(f"{len(cands)} annotation files name the {split} split in {src} "
                              f"({cands[0][0].name}, {cands[1][0].name}); keep one, or pass "
                              "one file")
        out.extend((path, split, token) for path, token in cands)
    return out


def _load(path: Path, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(Problem("unreadable", where, f"not a readable JSON file ({exc})"))
        return None
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        problems.append(Problem("unreadable", where, "not a COCO detection file (needs the "
                                "lists images, annotations and categories)"))
        return None
    return data


def _categories(raw: list[Any], where: str, problems: list[Problem]) -> dict[Any, str]:
    cats: dict[Any, str] = {}
    for cat in raw:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), (int, str)) \
                or not isinstance(cat.get("name"), str) or not cat["name"].strip():
            problems.append(Problem("unreadable", where, f"category {str(cat)[:60]} needs an "
                                    "id and a name"))
            continue
        cats[cat["id"]] = cat["name"].strip()
    return cats


def _roots(path: Path, split: str | None, token: str, images: Path | None) -> list[Path]:
    folder, parent = path.parent, path.parent.parent
    roots = [images, *(images / t for t in dict.fromkeys((token, split)) if t)] \
        if images is not None else []
    roots += [folder, folder / "images", parent]
    if split is not None:
        roots.append(parent / "images" / split)
    roots.append(parent / "images")
    if token:
        roots.append(parent / token)
    return list(dict.fromkeys(roots))  # in order, without repeats


def _resolve(file_name: str, roots: list[Path]) -> Path:
    name = Path(file_name)
    if name.is_absolute():
        return name
    for candidate in [r / name for r in roots] + [r / name.name for r in roots]:
        if candidate.is_file():
            return candidate
    return roots[0] / name


def _items(data: dict[str, Any], cats: dict[Any, str], roots: list[Path], split: str | None,
           where: str, base: Path, problems: list[Problem]) -> list[SourceItem]:
    by_id: dict[Any, SourceItem] = {}
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        name = img.get("file_name") if isinstance(img, dict) else None
        if not isinstance(iid, (int, str)) or not isinstance(name, str) or not name.strip():
            problems.append(Problem("unreadable", where, f"image record {str(img)[:60]} needs "
                                    "an id and a file_name"))
            continue
        if iid in by_id:
            problems.append(Problem("unreadable", where, f"image id {iid} appears twice; the "
                                    "second record is ignored"))
            continue
        w, h = img.get("width"), img.get("height")
        size = (int(w), int(h)) if isinstance(w, (int, float)) and isinstance(h, (int, float)) \
            and w > 0 and h > 0 else None
        image = _resolve(name.strip(), roots)
        by_id[iid] = SourceItem(key=rel(image, base), image=image, split=split, size=size,
                                where=where)
    for ann in data["annotations"]:
        aid = ann.get("id", "?") if isinstance(ann, dict) else "?"
        entry = f"annotation id {aid}"
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, (int, str)) or image_id not in by_id:
            problems.append(Problem("unreadable", where, f"{entry} refers to image_id "
                                    f"{image_id!r}, which is not in images", boxes=1))
            continue
        cat_id = ann.get("category_id")
        if not isinstance(cat_id, (int, str)) or cat_id not in cats:
            problems.append(Problem("unknown_class", where, f"{entry} has category_id "
                                    f"{cat_id!r}, not in categories", boxes=1))
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in bbox):
            problems.append(Problem("unreadable", where, f"{entry} has a malformed bbox "
                                    f"{bbox!r} (need [x, y, w, h])", boxes=1))
            continue
        x, y, w, h = (float(v) for v in bbox)
        by_id[image_id].boxes.append(RawBox(
            cats[cat_id], (x, y, x + w, y + h), f"{where} {entry}",
            iscrowd=bool(ann.get("iscrowd", 0))))
    return list(by_id.values())
