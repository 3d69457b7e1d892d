"""What a format reader hands to :func:`~meddet.data.importers.import_dataset`.

A reader turns a source folder into :class:`SourceItem` records (one per image, with its boxes
still in the source's coordinates and class names) plus the :class:`Problem` records it met
while parsing annotation files. Checking images and boxes, mapping classes, splitting and
writing happen once, in :mod:`meddet.data.importers.core`, for every format alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# reason -> (what the summary table says, whether it is a defect of the input). Defects make
# ``strict`` imports fail; the others are choices the user made (class selection, minimum
# area, split lists) and are only reported.
REASONS: dict[str, tuple[str, bool]] = {
    "missing_image": ("image file missing", True),
    "missing_annotation": ("annotation file missing", True),
    "unreadable": ("unreadable or malformed file or entry", True),
    "size_mismatch": ("image size differs from its annotation", True),
    "unknown_class": ("class not in the source's class list", True),
    "degenerate": ("zero or negative box size", True),
    "outside": ("box entirely outside the image (dropped)", True),
    "clipped": ("box partly outside the image (clipped, kept)", True),
    "excluded": ("class not selected by --classes", False),
    "small": ("mask component smaller than --min-area", False),
    "unsplit": ("image in none of the split lists", False),
}

@dataclass
class RawBox:
    """One box as the source states it.

    Attributes:
        label: the source's class name (YOLO indices and COCO ids already resolved).
        xyxy: ``(x0, y0, x1, y1)`` in pixels with the origin at the top-left image corner, or
            in fractions of the image size when ``normalized``.
        where: the annotation file and entry, for messages.
        normalized: coordinates are fractions of the image width/height (YOLO).
        iscrowd: a COCO crowd region, kept as such.
    """

    label: str
    xyxy: tuple[float, float, float, float]
    where: str
    normalized: bool = False
    iscrowd: bool = False


@dataclass
class SourceItem:
    """One image of the source and its boxes.

    Attributes:
        key: the image's path relative to the source (sorting, messages, output names).
        image: where the image file should be (it may not exist: a missing image).
        split: ``"train"``, ``"val"``, ``"test"``, or None when the source does not say.
        boxes: the boxes, unchecked.
        size: ``(width, height)`` the annotation declares, checked against the image; None when
            it declares none.
        where: the annotation file, for messages.
    """

    key: str
    image: Path
    split: str | None
    boxes: list[RawBox] = field(default_factory=list)
    size: tuple[int, int] | None = None
    where: str = ""


@dataclass
class Problem:
    """Something dropped, clipped or wrong: ``reason`` is a key of :data:`REASONS`.

    Attributes:
        reason: key of :data:`REASONS`.
        file: the file concerned (relative to the source where possible).
        detail: one line saying what is wrong.
        boxes: boxes lost with it (0 when nothing was lost, e.g. a clipped box).
    """

    reason: str
    file: str
    detail: str
    boxes: int = 0

    def line(self) -> str:
        return f"{self.file}: {self.detail}"


@dataclass
class Source:
    """Everything a reader found.

    Attributes:
        items: one per image.
        classes: the class names the source declares, in its order (YOLO class list, COCO
            categories by id); None when it declares none (VOC, masks): the names seen are used.
        problems: what the reader could not use.
        has_splits: the source assigns images to splits.
    """

    items: list[SourceItem]
    classes: list[str] | None
    problems: list[Problem]
    has_splits: bool


@dataclass(frozen=True)
class ReadOptions:
    """Format-specific options (each reader uses the ones it needs).

    Attributes:
        images: images root for COCO ``file_name`` (default: next to the JSON file).
        min_area: masks: smallest connected component kept, in pixels.
        connectivity: masks: 8 (diagonal neighbours join a component) or 4.
    """

    images: Path | None = None
    min_area: int = 1
    connectivity: int = 8
