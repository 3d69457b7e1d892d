"""From per-slice detections to named disc levels: grouping, ordering, naming, combining.

Everything here works on plain numbers in one *canonical* in-plane frame shared by all slices
of a series: pixels with the patient's superior side at the top and anterior side at the left
(``xyxy`` boxes, pixel edges). The steps, each a function:

1. :func:`group_detections`: the same disc seen on neighbouring slices is one group. Detections
   are visited by descending score; one joins the group whose strongest box lies closest to it
   when the two centres are less than half a box apart across and along the spine, otherwise
   it starts a group of its own.
2. :func:`assign_levels`: groups seen on fewer than ``min_slices`` slices, with a box more
   than twice as large or small as the typical disc's, off the line of the others, closer to
   a neighbour than half the usual disc-to-disc distance, or at an end of the chain more than
   3.5 distances from the next are set aside; the rest are ordered cranial to caudal and
   named by counting discs from the first level. A gap of about twice the usual distance
   counts as a disc the detector missed, so one missed disc does not rename every disc below
   it. A disc missed at the *top* of the series does rename every disc below it: the first
   level is an assumption, printed in every report and overridden with ``--first-level``.
3. :func:`combine_group`: one finding per named disc (see the function for the rule).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from meddet.errors import MedDetError

__all__ = [
    "CERVICAL_LEVELS",
    "DiscGroup",
    "Detection",
    "LevelAssignment",
    "assign_levels",
    "combine_group",
    "group_detections",
    "normalise_level",
]

# Every disc level from C2/3 down; a cervical series is expected to show the first six.
_VERTEBRAE = ("C2", "C3", "C4", "C5", "C6", "C7", *(f"T{i}" for i in range(1, 13)), "L1")
ALL_LEVELS = tuple(
    f"{a}/{b[1:] if a[0] == b[0] else b}" for a, b in zip(_VERTEBRAE, _VERTEBRAE[1:])
)
CERVICAL_LEVELS = ALL_LEVELS[:6]  # C2/3 ... C7/T1
# Disc-to-disc distance in the adult cervical spine (body about 15 mm, disc about 5 mm): the
# range in which a distance measured on the series itself is trusted.
DISC_PITCH_MM = (12.0, 26.0)
# A disc at either end of the chain this many spacings away from the next is not believed:
# two missed discs in a row are still bridged, three are not.
_MAX_END_GAP = 3.5
# The boxes of the discs of one series differ by less than this factor in width and height.
_MAX_SIZE_RATIO = 2.0


@dataclass(frozen=True)
class Detection:
    """One detection on one slice.

    Attributes:
        slice: index of the slice in the series.
        box: ``(x1, y1, x2, y2)`` canonical pixels.
        score: confidence in [0, 1].
        label: 0-based class index.
    """

    slice: int
    box: tuple[float, float, float, float]
    score: float
    label: int

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2

    @property
    def size(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return max(x2 - x1, 1e-6), max(y2 - y1, 1e-6)


@dataclass
class DiscGroup:
    """Detections of one disc on one or more slices; ``members[0]`` is the strongest."""

    members: list[Detection] = field(default_factory=list)

    @property
    def seed(self) -> Detection:
        return self.members[0]

    @property
    def slices(self) -> list[int]:
        """Distinct slices the disc was detected on, in order."""
        return sorted({d.slice for d in self.members})

    @property
    def centre(self) -> tuple[float, float]:
        """Mean centre of the members (canonical pixels)."""
        c = np.asarray([d.centre for d in self.members], float)
        return float(c[:, 0].mean()), float(c[:, 1].mean())

    @property
    def best_score(self) -> float:
        return max(d.score for d in self.members)

    def offset(self, det: Detection) -> float:
        """Centre offset of ``det`` from the seed, in half box sizes (the larger of across
        and along the spine); below 1 means the centres are within half a box."""
        (sx, sy), (dx, dy) = self.seed.centre, det.centre
        w = (self.seed.size[0] + det.size[0]) / 2
        h = (self.seed.size[1] + det.size[1]) / 2
        return max(abs(dx - sx) / (w / 2), abs(dy - sy) / (h / 2))


def group_detections(detections: Sequence[Detection]) -> list[DiscGroup]:
    """Group detections of the same disc across slices (see the module docstring).

    A group holds at most one detection per slice and class (per-class NMS already removed
    duplicates within a slice; a disc may carry one box of each class on one slice).

    Returns:
        Groups ordered by the score of their strongest detection, highest first.
    """
    groups: list[DiscGroup] = []
    for det in sorted(detections, key=lambda d: (-d.score, d.slice, d.box)):
        best, best_off = None, 1.0
        for g in groups:
            if any(m.slice == det.slice and m.label == det.label for m in g.members):
                continue
            off = g.offset(det)
            if off < best_off:
                best, best_off = g, off
        if best is None:
            groups.append(DiscGroup([det]))
        else:
            best.members.append(det)
    return groups


def normalise_level(text: str) -> str:
    """``"c5-6"``, ``"C5/C6"``, ``"c5/6"`` → ``"C5/6"``; ``"C7-T1"`` → ``"C7/T1"``.

    Raises:
        MedDetError: not a disc level from C2/3 to T12/L1.
    """
    m = re.fullmatch(r"\s*([CTLctl])(\d{1,2})\s*[-/_ ]?\s*([CTLctl]?)(\d{1,2})\s*", text or "")
    if m:
        a = f"{m.group(1).upper()}{int(m.group(2))}"
        b = f"{(m.group(3) or m.group(1)).upper()}{int(m.group(4))}"
        name = f"{a}/{b[1:] if a[0] == b[0] else b}"
        if name in ALL_LEVELS:
            return name
    raise MedDetError(f"--first-level {text!r} is not a disc level; use a name like C2/3, C3/4 "
                      "or C7/T1")


@dataclass
class LevelAssignment:
    """What :func:`assign_levels` decided.

    Attributes:
        named: ``(level name, group)`` cranial to caudal.
        set_aside: ``(reason, group)`` for groups that were not given a level.
        pitch_px: disc-to-disc distance used for counting, canonical pixels.
        pitch_source: where it came from (``"measured"`` or ``"anatomical prior"``).
    """

    named: list[tuple[str, DiscGroup]]
    set_aside: list[tuple[str, DiscGroup]]
    pitch_px: float
    pitch_source: str


def _strength(g: DiscGroup) -> tuple[int, float]:
    return len(g.slices), g.best_score


def assign_levels(
    groups: Sequence[DiscGroup],
    *,
    first_level: str = "C2/3",
    min_slices: int = 2,
    n_slices: int | None = None,
    pixel_mm: float | None = None,
) -> LevelAssignment:
    """Order disc groups cranial to caudal and name them, counting from ``first_level``.

    Args:
        groups: from :func:`group_detections`.
        first_level: name of the most cranial disc kept (the assumption the report prints).
        min_slices: a group must be seen on this many slices (capped at ``n_slices``).
        n_slices: slices the detector ran on.
        pixel_mm: in-plane pixel size; when known, the measured disc-to-disc distance is
            clamped to :data:`DISC_PITCH_MM`.

    Returns:
        A :class:`LevelAssignment`.
    """
    first = ALL_LEVELS.index(normalise_level(first_level))
    need = max(1, min(min_slices, n_slices if n_slices else min_slices))
    aside: list[tuple[str, DiscGroup]] = []
    kept = []
    for g in groups:
        if len(g.slices) < need:
            aside.append((f"seen on {len(g.slices)} slice(s), fewer than {need}", g))
        else:
            kept.append(g)
    kept = _drop_odd_sizes(kept, aside)
    kept = _drop_off_line(kept, aside)
    kept.sort(key=lambda g: g.centre[1])
    gaps = [_distance(a, b) for a, b in zip(kept, kept[1:])]
    if gaps:  # a rough spacing first, so that crowded false positives do not set it
        rough = float(np.median(gaps))
        if pixel_mm:  # never closer than discs can be
            rough = max(rough, DISC_PITCH_MM[0] / pixel_mm)
        kept = _drop_crowded(kept, rough, aside)
    pitch, source = _pitch(kept, pixel_mm)
    kept = _drop_far_ends(kept, pitch, aside)

    named: list[tuple[str, DiscGroup]] = []
    if kept:
        index = first
        prev = kept[0]
        named.append((ALL_LEVELS[index], prev))
        for g in kept[1:]:
            gap = _distance(prev, g)
            index += max(1, int(round(gap / pitch)))
            if index >= len(ALL_LEVELS):
                aside.append(("below the last named level", g))
                continue
            named.append((ALL_LEVELS[index], g))
            prev = g
    return LevelAssignment(named, aside, pitch, source)


def _distance(a: DiscGroup, b: DiscGroup) -> float:
    (ax, ay), (bx, by) = a.centre, b.centre
    return float(np.hypot(bx - ax, by - ay))


def _pitch(groups: list[DiscGroup], pixel_mm: float | None) -> tuple[float, str]:
    """Disc-to-disc distance in pixels: the median of the gaps between consecutive groups
    that are shorter than 1.5 times the shortest (so gaps over a missed disc do not count),
    clamped to the anatomical range when the pixel size is known."""
    lo, hi = DISC_PITCH_MM
    prior = (lo + hi) / 2 / pixel_mm if pixel_mm else None
    gaps = [_distance(a, b) for a, b in zip(groups, groups[1:])]
    gaps = [g for g in gaps if g > 0]
    if not gaps:
        return (prior if prior else 1.0), "anatomical prior"
    shortest = min(gaps)
    pitch = float(np.median([g for g in gaps if g < 1.5 * shortest]))
    if pixel_mm:
        pitch = float(np.clip(pitch, lo / pixel_mm, hi / pixel_mm))
    return pitch, "measured"


def _drop_odd_sizes(groups: list[DiscGroup], aside: list) -> list[DiscGroup]:
    """Set aside groups whose box is more than twice as wide or high as the median group's,
    or less than half (with at least three groups: the discs of one spine look alike)."""
    if len(groups) < 3:
        return list(groups)
    sizes = np.asarray([g.seed.size for g in groups], float)
    ratio = sizes / np.median(sizes, axis=0)
    kept = []
    for g, r in zip(groups, ratio):
        if (r > _MAX_SIZE_RATIO).any() or (r < 1 / _MAX_SIZE_RATIO).any():
            aside.append(("box size unlike the other discs", g))
        else:
            kept.append(g)
    return kept


def _drop_off_line(groups: list[DiscGroup], aside: list) -> list[DiscGroup]:
    """Set aside groups far from the line through the *others* (a quadratic in the
    craniocaudal position, fitted without the group itself so that an outlier at an end of the
    chain cannot bend the fit towards itself): more than one disc width across. The worst one
    goes first, then the rest are checked again."""
    kept = list(groups)
    while len(kept) >= 4:
        c = np.asarray([g.centre for g in kept], float)
        width = float(np.median([g.seed.size[0] for g in kept]))
        degree = 2 if len(kept) >= 6 else 1
        resid = np.empty(len(kept))
        for i in range(len(kept)):
            rest = np.delete(c, i, axis=0)
            coef = np.polyfit(rest[:, 1], rest[:, 0], degree)
            resid[i] = abs(c[i, 0] - np.polyval(coef, c[i, 1]))
        worst = int(np.argmax(resid))
        if resid[worst] <= width:
            break
        aside.append(("off the line of the other discs", kept.pop(worst)))
    return kept


def _drop_far_ends(groups: list[DiscGroup], pitch: float, aside: list) -> list[DiscGroup]:
    """Set aside a first or last group more than :data:`_MAX_END_GAP` disc spacings from its
    neighbour: a false positive above the skull base or in the chest, not a disc."""
    kept = list(groups)
    while len(kept) >= 2:
        if _distance(kept[0], kept[1]) > _MAX_END_GAP * pitch:
            aside.append(("far above the other discs", kept.pop(0)))
        elif _distance(kept[-2], kept[-1]) > _MAX_END_GAP * pitch:
            aside.append(("far below the other discs", kept.pop()))
        else:
            break
    return kept


def _drop_crowded(groups: list[DiscGroup], pitch: float, aside: list) -> list[DiscGroup]:
    """Of two consecutive groups closer than half the disc pitch, keep the one seen on more
    slices (then the higher score)."""
    kept = list(groups)
    i = 0
    while i + 1 < len(kept):
        a, b = kept[i], kept[i + 1]
        if _distance(a, b) < 0.5 * pitch:
            weak = a if _strength(a) < _strength(b) else b
            aside.append(("closer to a neighbouring disc than half the disc spacing", weak))
            kept.remove(weak)
            i = max(0, i - 1)
        else:
            i += 1
    return kept


def combine_group(group: DiscGroup, class_names: Sequence[str], *,
                  positive: str = "protrusion", positive_thr: float = 0.5
                  ) -> tuple[int, float, Detection]:
    """One finding from the detections of one disc.

    Each class's score for the disc is the *maximum* of its per-slice scores: a herniation is
    often visible on one or two paramedian slices only, so averaging over slices would hide
    it. The disc is called ``positive`` (e.g. protrusion) when that class's score reaches
    ``positive_thr``, whatever the other classes score on other slices; otherwise it takes the
    other class with the highest score (a disc detected as ``positive`` only is called
    ``positive`` at its lower score). The confidence is the called class's score and the
    supporting detection the one that gave it.

    Returns:
        ``(class index, confidence, supporting detection)``.
    """
    best: dict[int, Detection] = {}
    for d in group.members:
        if d.label not in best or d.score > best[d.label].score:
            best[d.label] = d
    pos = class_names.index(positive) if positive in class_names else None
    if pos is not None and pos in best and best[pos].score >= positive_thr:
        label = pos
    else:
        candidates = {k: v for k, v in best.items() if k != pos} or best
        label = max(candidates, key=lambda k: (candidates[k].score, -k))
    return label, float(best[label].score), best[label]
