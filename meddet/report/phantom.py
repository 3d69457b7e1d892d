"""How well level naming works, measured on phantom series whose disc levels are known.

:func:`check_levels_on_phantom` renders phantom series (:mod:`meddet.data.phantom.series`),
runs a detector on each, builds the per-level report and compares it with the truth: a named
finding is matched to the true disc its key box overlaps (IoU >= 0.3 on its key slice), and its
level name and class are checked against that disc's. The detector is any callable, so the same
check runs a trained model (:func:`predictor_detector`) or a detector simulated from the true
boxes (the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from meddet.report.build import ReportSettings, SpineReport, build_report
from meddet.report.series import SagittalSeries

__all__ = ["PhantomLevelCheck", "check_levels_on_phantom", "predictor_detector"]

Detections = Mapping[int, Mapping[str, np.ndarray]]
# (rendered series, the same as a SagittalSeries, settings) -> slice index -> detections
Detector = Callable[[object, SagittalSeries, ReportSettings], Detections]


@dataclass
class PhantomLevelCheck:
    """Counts over the checked series.

    Attributes:
        series: phantom series checked.
        discs: true discs in view (six per series).
        named: named findings whose key box lies on a true disc.
        level_right: of those, named with the true level.
        finding_right: of those, with the true class of their level (protrusion when the disc
            protrudes on any slice).
        off_disc: named findings on no true disc (false positives given a level).
        not_assessed: cervical levels reported as not assessed.
    """

    series: int = 0
    discs: int = 0
    named: int = 0
    level_right: int = 0
    finding_right: int = 0
    off_disc: int = 0
    not_assessed: int = 0

    @property
    def level_accuracy(self) -> float:
        """Fraction of the named discs with the right level."""
        return self.level_right / self.named if self.named else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "level_accuracy": round(self.level_accuracy, 4)}


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def true_level(rendered, key_slice: int, box: Sequence[float]) -> str | None:
    """The level of the true disc under ``box`` on slice ``key_slice`` (IoU >= 0.3), or
    ``None``."""
    names = rendered.level_names
    ious = [_iou(box, rendered.boxes[key_slice, j]) for j in range(len(names))]
    j = int(np.argmax(ious))
    return names[j] if ious[j] >= 0.3 else None


def score_report(report: SpineReport, rendered, check: PhantomLevelCheck) -> None:
    """Add one series' report to ``check`` (see :class:`PhantomLevelCheck`)."""
    truth = rendered.level_truth()
    names = report.class_names
    check.series += 1
    check.discs += int((rendered.boxes[len(rendered.boxes) // 2, :, 2] > 0).sum())
    check.not_assessed += sum(not f.assessed for f in report.findings)
    for f in report.assessed:
        level = true_level(rendered, f.key_slice, f.box)
        if level is None:
            check.off_disc += 1
            continue
        check.named += 1
        check.level_right += f.level == level
        truth_name = names[truth[level] - 1] if 0 < truth[level] <= len(names) else None
        check.finding_right += f.finding == truth_name


def predictor_detector(predictor) -> Detector:
    """A :data:`Detector` running ``predictor`` on the slices the report reads."""

    def detect(rendered, series: SagittalSeries, settings: ReportSettings) -> Detections:
        used = series.middle(settings.lateral_mm)
        dets = predictor.predict_arrays([series.images[k] for k in used],
                                        [series.pixel_mm] * len(used))
        return dict(zip(used, dets))

    return detect


def check_levels_on_phantom(
    detect: Detector,
    class_names: Sequence[str],
    *,
    n_series: int = 20,
    size: int = 256,
    n_slices: int = 5,
    seed: int = 0,
    settings: ReportSettings | None = None,
) -> PhantomLevelCheck:
    """Render ``n_series`` phantom series (seeds ``seed`` ... ``seed + n_series - 1``), report
    each with ``detect`` and count how many named discs get the right level and class.

    Returns:
        A :class:`PhantomLevelCheck`.
    """
    from meddet.data.phantom.series import render_series, sample_series

    settings = settings or ReportSettings()
    check = PhantomLevelCheck()
    for s in range(seed, seed + n_series):
        rendered = render_series(sample_series(np.random.default_rng(s), size, n_slices=n_slices))
        series = SagittalSeries.from_arrays(rendered.images, rendered.offsets_mm,
                                            (rendered.pixel_mm, rendered.pixel_mm),
                                            path=f"phantom-series-{s}")
        report = build_report(series, detect(rendered, series, settings), class_names, settings)
        score_report(report, rendered, check)
    return check
