"""Pascal VOC: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/{train,val,test}.txt``.

Coordinates: VOC numbers pixels from 1, and annotation tools (LabelImg among them) write the
corners of the drawn rectangle, so ``xmin = 1`` is the left image edge and ``xmax = width`` the
right one. Subtracting 1 from all four values gives the project's 0-based corner coordinates
(the same conversion Ultralytics applies to VOC); a box with ``xmin == xmax`` has zero width.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # types only: files are parsed by defusedxml
from pathlib import Path

import defusedxml.ElementTree as safe_xml
from defusedxml import DefusedXmlException

from meddet.data.importers._paths import IMAGE_SUFFIXES, SPLIT_ALIASES, find_with_suffix, rel
from meddet.data.importers._records import Problem, RawBox, ReadOptions, Source, SourceItem
from meddet.errors import MedDetError


def read_voc(src: Path, options: ReadOptions) -> Source:
    """Read a Pascal VOC folder (the one holding ``Annotations/``).

    Every ``Annotations/*.xml`` is an image. Splits come from ``ImageSets/Main/{split}.txt``
    (one id per line; ``valid``/``validation`` count as ``val``); when none exists the source
    has no splits. ``trainval.txt`` and per-class lists are ignored.

    Raises:
        MedDetError: no ``Annotations`` folder, or an id listed in two splits.
    """
    del options  # VOC has no format-specific options
    ann_dir = src / "Annotations"
    if not ann_dir.is_dir():
        raise MedDetError(f"{src} has no Annotations/ folder; a Pascal VOC dataset needs "
                          "Annotations/*.xml and JPEGImages/ (or pass the right --format)")
    img_dir = src / "JPEGImages"
    problems: list[Problem] = []
    split_of, has_splits = _split_lists(src, ann_dir, problems)
    items: list[SourceItem] = []
    for xml_path in sorted(ann_dir.glob("*.xml")):
        stem = xml_path.stem
        where = rel(xml_path, src)
        try:
            # The files come from outside: defusedxml refuses entity expansion (billion laughs)
            # and external entities, which xml.etree would follow.
            root = safe_xml.parse(xml_path).getroot()
        except (ET.ParseError, OSError) as exc:
            problems.append(Problem("unreadable", where, f"not valid XML ({exc})"))
            continue
        except DefusedXmlException as exc:
            problems.append(Problem("unreadable", where, "unsafe XML refused (entity or DTD "
                                    f"declarations: {type(exc).__name__})"))
            continue
        image = _image_path(img_dir, stem, root.findtext("filename"))
        split = split_of.get(stem)
        items.append(SourceItem(key=rel(image, src), image=image, split=split,
                                boxes=_boxes(root, where, problems), size=_size(root),
                                where=where))
    return Source(items=items, classes=None, problems=problems, has_splits=has_splits)


def _split_lists(src: Path, ann_dir: Path, problems: list[Problem]) -> tuple[dict[str, str], bool]:
    """``{image id: split}`` from ``ImageSets/Main`` and whether any split list exists."""
    main = src / "ImageSets" / "Main"
    split_of: dict[str, str] = {}
    found = False
    for name, split in SPLIT_ALIASES.items():
        path = main / f"{name}.txt"
        if not path.is_file():
            continue
        found = True
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            ident = line.split()[0] if line.split() else ""
            if not ident:
                continue
            if split_of.get(ident, split) != split:
                raise MedDetError(f"{rel(path, src)} lists {ident}, which "
                                  f"ImageSets/Main/{split_of[ident]}.txt lists too; an image "
                                  "belongs to one split")
            split_of[ident] = split
            if not (ann_dir / f"{ident}.xml").is_file():
                problems.append(Problem("missing_annotation", rel(path, src),
                                        f"lists {ident} but Annotations/{ident}.xml does not "
                                        "exist"))
    return split_of, found


def _image_path(img_dir: Path, stem: str, filename: str | None) -> Path:
    """The image of annotation ``stem``: its ``<filename>`` when that exists, else
    ``stem`` with an image suffix; the ``.jpg`` path when none exists (a missing image)."""
    if filename and filename.strip():
        named = img_dir / Path(filename.strip()).name
        if named.is_file():
            return named
    return find_with_suffix(img_dir, stem, IMAGE_SUFFIXES) or img_dir / f"{stem}.jpg"


def _size(root: ET.Element) -> tuple[int, int] | None:
    try:
        w = int(float(root.findtext("size/width") or 0))
        h = int(float(root.findtext("size/height") or 0))
    except ValueError:
        return None
    # Some tools write 0 when they did not know the size: treat it as not declared.
    return (w, h) if w > 0 and h > 0 else None


def _boxes(root: ET.Element, where: str, problems: list[Problem]) -> list[RawBox]:
    boxes = []
    for k, obj in enumerate(root.iter("object")):
        entry = f"object {k + 1}"
        name = (obj.findtext("name") or "").strip()
        if not name:
            problems.append(Problem("unreadable", where, f"{entry} has no <name>", boxes=1))
            continue
        try:
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{tag}") or "")
                                      for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            problems.append(Problem("unreadable", where, f"{entry} ({name}) has no numeric "
                                    "<bndbox> xmin/ymin/xmax/ymax", boxes=1))
            continue
        boxes.append(RawBox(name, (xmin - 1, ymin - 1, xmax - 1, ymax - 1), f"{where} {entry}"))
    return boxes
