"""The result of an import: what was written, and what was dropped or changed and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from meddet.data.importers._records import REASONS, Problem


@dataclass
class ImportSummary:
    """What :func:`~meddet.data.importers.import_dataset` did.

    Attributes:
        source: the source folder or file.
        out: the dataset folder written.
        format: ``"voc"``, ``"yolo"``, ``"coco"`` or ``"masks"``.
        classes: class names in category-id order (id 1 first).
        splits: ``{split: {"images": n, "boxes": n, "per_class": {class: n}}}``.
        boxes_read: boxes found in the source, kept or not.
        boxes_read_per_class: the same by the source's class name (before any class map), for
            the boxes whose class could be read.
        problems: everything dropped, clipped or skipped, in source order.
        split_rule: ``"given"`` (the source's splits) or ``"ratio a,b,c seed s"``.
        copied: images copied byte for byte (JPEG and PNG, which the loader reads).
        converted: images re-encoded as PNG (other formats).
        settings: the options of the import.
    """

    source: str
    out: str
    format: str
    classes: list[str]
    splits: dict[str, dict[str, Any]]
    boxes_read: int
    boxes_read_per_class: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    split_rule: str = "given"
    copied: int = 0
    converted: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        """Images written, all splits."""
        return sum(s["images"] for s in self.splits.values())

    @property
    def boxes(self) -> int:
        """Boxes written, all splits."""
        return sum(s["boxes"] for s in self.splits.values())

    def dropped(self) -> dict[str, dict[str, Any]]:
        """Problems grouped by reason, in :data:`REASONS` order.

        Returns:
            ``{reason: {"what", "defect", "count", "boxes", "first"}}`` for every reason that
            occurred: its table text, whether ``strict`` rejects it, how many times it occurred,
            the boxes lost with it, and the first occurrence as ``"file: detail"``.
        """
        out: dict[str, dict[str, Any]] = {}
        for reason, (what, defect) in REASONS.items():
            hits = [p for p in self.problems if p.reason == reason]
            if hits:
                out[reason] = {"what": what, "defect": defect, "count": len(hits),
                               "boxes": sum(p.boxes for p in hits), "first": hits[0].line()}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (written as ``import_summary.json``)."""
        data = asdict(self)
        data.update(images=self.images, boxes=self.boxes, dropped=self.dropped())
        return data
