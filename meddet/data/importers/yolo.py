"""YOLO text labels: one ``.txt`` per image with ``class cx cy w h`` lines (fractions of the
image size), plus a class list.

Where the images are, in the order tried:

1. a ``data.yaml`` (or ``dataset.yaml``, ``data.yml``) with ``train``/``val``/``test`` entries:
   image folders or text files listing images, relative to its ``path`` entry or its folder;
2. ``images/{train,val,test}/`` (``valid`` counts as ``val``);
3. ``{train,val,test}/images/`` (Roboflow's export);
4. ``images/``, or the source folder itself, without splits.

An image's label file is found the Ultralytics way (the last ``images`` folder of its path
replaced by ``labels``, suffix ``.txt``), else next to the image. An image without a label
file has no boxes (a negative); a label file without an image is a missing image.
The class list: ``names`` in the YAML file (a list, or a mapping from index to name), else
``classes.txt``, ``obj.names`` or ``classes.names`` (one name per line).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from meddet.data.importers._paths import SPLIT_ALIASES, list_images, rel, split_folders
from meddet.data.importers._records import Problem, RawBox, ReadOptions, Source, SourceItem
from meddet.errors import MedDetError

_YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")
_CLASS_FILES = ("classes.txt", "obj.names", "classes.names")
# Text files that sit beside labels without being labels (split lists, notes).
_NOT_LABELS = {"classes.txt", "train.txt", "val.txt", "valid.txt", "test.txt", "readme.txt"}


def read_yolo(src: Path, options: ReadOptions) -> Source:
    """Read a YOLO dataset folder.

    Raises:
        MedDetError: no class list, an unreadable YAML file, or no images at all.
    """
    del options  # YOLO has no format-specific options
    config, config_path = _load_yaml(src)
    names = _class_names(src, config, config_path)
    groups = _image_groups(src, config, config_path)
    if not any(images for _, images in groups):
        raise MedDetError(f"found no images in {src} (looked for a data.yaml with train/val/"
                          "test, images/{split}/, {split}/images/ and images/); check the "
                          "folder or pass the right --format")
    problems: list[Problem] = []
    items: list[SourceItem] = []
    labels_seen: set[Path] = set()
    label_dirs: set[Path] = set()
    for split, images in groups:
        for image in images:
            label = _label_path(image)
            label_dirs.add(label.parent)
            where = rel(label, src)
            boxes: list[RawBox] = []
            if label.is_file():
                labels_seen.add(label)
                boxes = _parse_label(label, where, names, problems)
            items.append(SourceItem(key=rel(image, src), image=image, split=split, boxes=boxes,
                                    where=where if label.is_file() else ""))
    for folder in sorted(label_dirs):
        for label in sorted(folder.glob("*.txt")):
            if label in labels_seen or label.name.lower() in _NOT_LABELS:
                continue
            n = sum(1 for line in _lines(label) if line.split())
            problems.append(Problem("missing_image", rel(label, src), "label file without an "
                                    f"image (looked for {label.stem}.* beside the labels' "
                                    "images folder)", boxes=n))
    has_splits = any(split is not None for split, _ in groups)
    return Source(items=items, classes=names, problems=problems, has_splits=has_splits)


def _load_yaml(src: Path) -> tuple[dict[str, Any], Path | None]:
    for name in _YAML_NAMES:
        path = src / name
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
                raise MedDetError(f"cannot read {path}: {str(exc).splitlines()[0]}; fix the "
                                  "YAML file") from None
            if not isinstance(data, dict):
                raise MedDetError(f"{path} must be a YAML mapping with names (and train/val/"
                                  "test), got a {type(data).__name__}")
            return data, path
    return {}, None


def _class_names(src: Path, config: dict[str, Any], config_path: Path | None) -> list[str]:
    raw = config.get("names")
    if raw is not None:
        if isinstance(raw, dict):
            try:
                order = sorted(raw, key=int)
            except (TypeError, ValueError):
                raise MedDetError(f"{config_path}: names must map class indices 0, 1, ... to "
                                  "names") from None
            if [int(k) for k in order] != list(range(len(order))):
                raise MedDetError(f"{config_path}: names must use the indices 0..{len(order) - 1} "
                                  "without gaps")
            raw = [raw[k] for k in order]
        if not isinstance(raw, list) or not raw:
            raise MedDetError(f"{config_path}: names must be a non-empty list of class names")
        names = [str(n).strip() for n in raw]
    else:
        path = next((src / n for n in _CLASS_FILES if (src / n).is_file()), None)
        if path is None:
            raise MedDetError(f"{src} has no class list: add data.yaml with names: [...], or "
                              "classes.txt with one class name per line")
        names = [line.strip() for line in _lines(path) if line.strip()]
        config_path = path
    if any(not n for n in names) or len(set(names)) != len(names):
        raise MedDetError(f"{config_path}: class names must be non-empty and distinct, got "
                          f"{names}")
    return names


def _image_groups(src: Path, config: dict[str, Any],
                  config_path: Path | None) -> list[tuple[str | None, list[Path]]]:
    """``[(split or None, image paths)]`` following the search order in the module docstring."""
    if config_path is not None and any(k in config for k in ("train", "val", "test")):
        base = Path(str(config.get("path") or "."))
        base = base if base.is_absolute() else config_path.parent / base
        groups = []
        for key in ("train", "val", "test"):
            entries = config.get(key)
            if entries is None:
                continue
            paths: list[Path] = []
            for entry in entries if isinstance(entries, list) else [entries]:
                paths.extend(_listed_images(base, str(entry), config_path))
            groups.append((SPLIT_ALIASES[key], sorted(set(paths))))
        return groups
    for parent in (src / "images", src / "Images"):
        folders = split_folders(parent)
        if folders:
            return [(s, list_images(f)) for s, f in folders.items()]
    folders = {s: f / "images" for s, f in split_folders(src).items() if (f / "images").is_dir()}
    if folders:
        return [(s, list_images(f)) for s, f in folders.items()]
    flat = src / "images" if (src / "images").is_dir() else src
    return [(None, list_images(flat))]


def _listed_images(base: Path, entry: str, config_path: Path) -> list[Path]:
    path = Path(entry)
    path = path if path.is_absolute() else base / path
    if path.is_dir():
        return list_images(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        # A list of image paths, relative to the dataset root (Ultralytics' convention).
        return [p if p.is_absolute() else base / p
                for p in (Path(line.strip()) for line in _lines(path) if line.strip())]
    raise MedDetError(f"{config_path}: {entry!r} is neither an image folder nor a .txt list of "
                      f"images (resolved to {path})")


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            candidate = Path(*parts).with_suffix(".txt")
            if candidate.is_file() or not image.with_suffix(".txt").is_file():
                return candidate
            break
    return image.with_suffix(".txt")


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _parse_label(path: Path, where: str, names: list[str],
                 problems: list[Problem]) -> list[RawBox]:
    boxes = []
    try:
        lines = _lines(path)
    except OSError as exc:
        problems.append(Problem("unreadable", where, f"cannot read: {exc.strerror or exc}"))
        return []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        entry = f"line {n}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        # 5 numbers: a box; 1 + an even number >= 6: a polygon (YOLO segmentation labels),
        # whose bounding box is used.
        if not values or not (len(values) == 5 or (len(values) >= 7 and len(values) % 2)):
            problems.append(Problem("unreadable", where, f"{entry} {line.strip()!r} is not "
                                    "'class cx cy w h' (or 'class x1 y1 x2 y2 ...')", boxes=1))
            continue
        cls = values[0]
        if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < len(names):
            problems.append(Problem("unknown_class", where, f"{entry} has class {fields[0]}, "
                                    f"not an index into the {len(names)} names", boxes=1))
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            xyxy = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xs, ys = values[1::2], values[2::2]
            xyxy = (min(xs), min(ys), max(xs), max(ys))
        boxes.append(RawBox(names[int(cls)], xyxy, f"{where} {entry}", normalized=True))
    return boxes
