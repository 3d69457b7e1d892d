"""A per-level report for one sagittal series: run the detector, group, name, combine.

:func:`build_report` is pure (detections in, :class:`SpineReport` out) so that the logic can
be tested against the phantom's truth without a model; :func:`report_series` reads a series,
runs a :class:`~meddet.inference.Predictor` on the slices around the mid-line and calls it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from meddet.errors import MedDetError
from meddet.report.levels import (
    ALL_LEVELS,
    CERVICAL_LEVELS,
    Detection,
    assign_levels,
    combine_group,
    group_detections,
    normalise_level,
)
from meddet.report.series import SagittalSeries, load_series

__all__ = ["LevelFinding", "ReportSettings", "SpineReport", "build_report", "report_series"]

NOT_ASSESSED = "not assessed"
SCORE_RULE = (
    "per class, the highest score over the slices the disc was detected on; the disc is called "
    "{positive} when that score reaches {thr:g}, otherwise the other class with the highest "
    "score; the key slice is the slice of that score"
)


@dataclass(frozen=True)
class ReportSettings:
    """How a report is made (all recorded in its JSON).

    Attributes:
        lateral_mm: the detector runs on the slices within this distance of the middle slice.
        first_level: name given to the most cranial disc found.
        first_level_given: ``first_level`` came from the user, not the default.
        min_slices: a disc must be detected on this many slices to be named.
        positive: the class that wins when it reaches ``positive_thr`` on any slice.
        positive_thr: see :func:`~meddet.report.levels.combine_group`.
        score_thr: minimum score of a detection the report uses.
    """

    lateral_mm: float = 8.0
    first_level: str = "C2/3"
    first_level_given: bool = False
    min_slices: int = 2
    positive: str = "protrusion"
    positive_thr: float = 0.5
    score_thr: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_level", normalise_level(self.first_level))
        if not self.lateral_mm >= 0:
            raise MedDetError(f"--lateral-mm must be >= 0, got {self.lateral_mm}")
        if self.min_slices < 1:
            raise MedDetError(f"--min-slices must be >= 1, got {self.min_slices}")
        for name, v in (("--protrusion-thr", self.positive_thr), ("--score-thr", self.score_thr)):
            if not 0.0 <= v <= 1.0:
                raise MedDetError(f"{name} must be in [0, 1], got {v}")

    @property
    def assumption(self) -> str:
        """The level-naming assumption, as printed in every report."""
        how = "as given with --first-level" if self.first_level_given else \
            "assumed: the series is taken to start at the skull base; change with --first-level"
        return (f"the most cranial disc found is {self.first_level} ({how}); the discs below "
                "are counted from it")


@dataclass
class LevelFinding:
    """The finding at one disc level.

    Attributes:
        level: e.g. ``"C5/6"``.
        finding: the called class, or ``"not assessed"`` when no disc was named here.
        confidence: the called class's combined score (``None`` when not assessed).
        scores: combined score of every class detected at this disc.
        key_slice: series index of the slice that supports the finding.
        key_source: that slice's file (DICOM) or ``file#k`` (NIfTI).
        lateral_mm: its distance from the middle slice, mm (positive: patient's left).
        box: the supporting box, canonical ``xyxy`` pixels (superior top, anterior left).
        box_source: its corners ``[[col, row], ...]`` in the source file's pixels.
        slices: series indices of every slice the disc was detected on.
    """

    level: str
    finding: str = NOT_ASSESSED
    confidence: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    key_slice: int | None = None
    key_source: str | None = None
    lateral_mm: float | None = None
    box: list[float] | None = None
    box_source: list[list[float]] | None = None
    slices: list[int] = field(default_factory=list)

    @property
    def assessed(self) -> bool:
        return self.finding != NOT_ASSESSED


@dataclass
class SpineReport:
    """A per-level report of one series (see :func:`build_report`)."""

    series: str
    kind: str
    n_slices: int
    used_slices: list[int]
    class_names: list[str]
    settings: ReportSettings
    findings: list[LevelFinding]
    set_aside: list[dict[str, Any]] = field(default_factory=list)
    pitch_mm: float | None = None
    pitch_source: str = ""
    pixel_mm: tuple[float, float] | None = None
    model: str = ""
    checkpoint: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def assessed(self) -> list[LevelFinding]:
        return [f for f in self.findings if f.assessed]

    def finding(self, level: str) -> LevelFinding:
        for f in self.findings:
            if f.level == level:
                return f
        raise KeyError(level)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe content of ``report.json``."""
        from meddet import __version__

        s = self.settings
        return {
            "meddet_version": __version__,
            "series": self.series,
            "kind": self.kind,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "class_names": list(self.class_names),
            "n_slices": self.n_slices,
            "used_slices": list(self.used_slices),
            "pixel_mm": list(self.pixel_mm) if self.pixel_mm else None,
            "level_assumption": s.assumption,
            "score_combination": SCORE_RULE.format(positive=s.positive, thr=s.positive_thr),
            "disc_spacing_mm": None if self.pitch_mm is None else round(self.pitch_mm, 1),
            "disc_spacing_source": self.pitch_source,
            "settings": asdict(s),
            "levels": [_round_finding(asdict(f)) for f in self.findings],
            "set_aside": self.set_aside,
            "notes": list(self.notes),
            "box_format": "box: xyxy pixels of the slice shown superior-top, anterior-left; "
                          "box_source: corners (column, row) in the source file's pixels",
        }


def _round_finding(d: dict[str, Any]) -> dict[str, Any]:
    """Scores to 4 decimals, pixels and millimetres to 2 (JSON stays readable)."""
    d["scores"] = {k: round(v, 4) for k, v in d["scores"].items()}
    if d["confidence"] is not None:
        d["confidence"] = round(d["confidence"], 4)
    if d["lateral_mm"] is not None:
        d["lateral_mm"] = round(d["lateral_mm"], 2)
    if d["box"] is not None:
        d["box"] = [round(v, 2) for v in d["box"]]
    if d["box_source"] is not None:
        d["box_source"] = [[round(v, 2) for v in p] for p in d["box_source"]]
    return d


def build_report(
    series: SagittalSeries,
    detections: Mapping[int, Mapping[str, np.ndarray]],
    class_names: Sequence[str],
    settings: ReportSettings | None = None,
) -> SpineReport:
    """Turn per-slice detections of one series into one finding per disc level.

    Args:
        series: the series the detections were made on.
        detections: series slice index → ``{"boxes": [K, 4] canonical xyxy, "scores": [K],
            "labels": [K]}`` for every slice the detector ran on (empty arrays included).
        class_names: names indexed by label.
        settings: how to group, name and combine (default :class:`ReportSettings`).

    Returns:
        A :class:`SpineReport` listing C2/3 ... C7/T1 (and any other level named) cranial to
        caudal; levels without a named disc are ``"not assessed"``.
    """
    settings = settings or ReportSettings()
    dets = [
        Detection(int(k), tuple(float(v) for v in box), float(score), int(label))
        for k, det in detections.items()
        for box, score, label in zip(det["boxes"], det["scores"], det["labels"])
        if float(score) >= settings.score_thr
    ]
    pixel_mm = series.pixel_mm
    mm = float(np.sqrt(pixel_mm[0] * pixel_mm[1])) if pixel_mm else None
    groups = group_detections(dets)
    names = list(class_names)
    assignment = assign_levels(groups, first_level=settings.first_level,
                               min_slices=settings.min_slices, n_slices=len(detections),
                               pixel_mm=mm)
    found: dict[str, LevelFinding] = {}
    for level, group in assignment.named:
        label, conf, key = combine_group(group, names, positive=settings.positive,
                                         positive_thr=settings.positive_thr)
        scores: dict[str, float] = {}
        for d in group.members:
            name = names[d.label] if 0 <= d.label < len(names) else str(d.label)
            scores[name] = max(scores.get(name, 0.0), d.score)
        found[level] = LevelFinding(
            level=level,
            finding=names[label] if 0 <= label < len(names) else str(label),
            confidence=conf,
            scores=scores,
            key_slice=key.slice,
            key_source=series.sources[key.slice] if series.sources else None,
            lateral_mm=series.lateral_mm[key.slice],
            box=list(key.box),
            box_source=series.to_source(np.asarray(key.box)).tolist(),
            slices=group.slices,
        )
    levels = sorted(set(CERVICAL_LEVELS) | set(found), key=ALL_LEVELS.index)
    findings = [found.get(level, LevelFinding(level)) for level in levels]
    aside = [{"reason": reason, "slices": g.slices, "best_score": round(g.best_score, 4),
              "centre": [round(v, 1) for v in g.centre]} for reason, g in assignment.set_aside]
    return SpineReport(
        series=str(series.path), kind=series.kind, n_slices=len(series),
        used_slices=sorted(int(k) for k in detections), class_names=names,
        settings=settings, findings=findings, set_aside=aside,
        pitch_mm=None if mm is None else assignment.pitch_px * mm,
        pitch_source=assignment.pitch_source, pixel_mm=pixel_mm, notes=list(series.notes))


def report_series(
    predictor,
    series: SagittalSeries | str | os.PathLike,
    settings: ReportSettings | None = None,
    *,
    batch_size: int = 4,
) -> tuple[SpineReport, SagittalSeries]:
    """Read ``series`` (if a path), detect on the slices around its middle and build the
    report.

    Args:
        predictor: a :class:`~meddet.inference.Predictor` (its own score threshold applies
            first; detections below ``settings.score_thr`` are then ignored).
        series: a loaded series or a path for :func:`~meddet.report.series.load_series`.
        settings: see :class:`ReportSettings`.
        batch_size: slices per forward pass.

    Returns:
        ``(report, series)``.

    Raises:
        MedDetError: an unusable series or bad settings.
    """
    settings = settings or ReportSettings()
    if not isinstance(series, SagittalSeries):
        series = load_series(series)
    used = series.middle(settings.lateral_mm)
    detections: dict[int, dict[str, np.ndarray]] = {}
    for i in range(0, len(used), max(1, batch_size)):
        chunk = used[i:i + batch_size]
        # With the pixel spacing, a model that records its training pixel size sees the
        # slices at that size (see Predictor.prepare).
        spacings = [series.pixel_mm] * len(chunk)
        for k, det in zip(chunk, predictor.predict_arrays([series.images[k] for k in chunk],
                                                          spacings)):
            detections[k] = det
    report = build_report(series, detections, predictor.class_names, settings)
    report.model = predictor.model_name
    return report, series
