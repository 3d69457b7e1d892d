"""The default synthetic phantom: sagittal cervical-spine MR slices with labelled discs.

This module is the public face of :mod:`meddet.data.phantom` (the default phantom, ``v2``);
the first, simpler phantom stays available as :mod:`meddet.data.phantom.v1`
(``meddet data synth --phantom v1``) so that results made with it can be reproduced.

A case is drawn in two steps: :func:`sample_case` draws every random parameter (anatomy, disc
findings, tissue contrast, acquisition) into a frozen :class:`Case`; :func:`render_case` turns
a case into an image and its disc boxes without further randomness of its own. Editing one
field of a case and rendering again therefore changes only what that field controls, which is
how the tests show that a disc's label follows its posterior contour and nothing else.

Labels: one box per disc C2/3 ... C7/T1, ``protrusion`` when disc material lies posterior to
the vertebral-body line (depth :data:`MIN_SEVERITY` to :data:`MAX_SEVERITY` px at 256 px),
``non-protrusion`` otherwise (normal discs stay within ±0.3 px of the line).
"""

from meddet.data.phantom._common import (
    CATEGORIES,
    DISC_NAMES,
    MAX_SEVERITY,
    MIN_SEVERITY,
    NON_PROTRUSION_ID,
    PROTRUSION_ID,
    REF_PIXEL_MM,
    REF_SIZE,
    VERTEBRAE,
    Disc,
    quantize,
    severity_from_unit,
    with_protrusion,
    without_protrusion,
)
from meddet.data.phantom.geometry import Pose, spine_maps, to_image
from meddet.data.phantom.model import (
    CONTRASTS,
    Acquisition,
    Case,
    Tissue,
    layout,
    sample_case,
    sample_tissue,
)
from meddet.data.phantom.render import Rendered, acquire, render_case, render_clean

__all__ = [
    "CATEGORIES",
    "CONTRASTS",
    "DISC_NAMES",
    "MAX_SEVERITY",
    "MIN_SEVERITY",
    "NON_PROTRUSION_ID",
    "PROTRUSION_ID",
    "REF_PIXEL_MM",
    "REF_SIZE",
    "VERTEBRAE",
    "Acquisition",
    "Case",
    "Disc",
    "Pose",
    "Rendered",
    "Tissue",
    "acquire",
    "layout",
    "quantize",
    "render_case",
    "render_clean",
    "sample_case",
    "sample_tissue",
    "severity_from_unit",
    "spine_maps",
    "to_image",
    "with_protrusion",
    "without_protrusion",
]

_layout = layout  # the name the first phantom's tests used
