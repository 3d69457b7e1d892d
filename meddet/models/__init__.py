"""Detection models: backbones, FPN, the GFL head, nmODE² blocks and the model zoo.

Build a zoo detector with :func:`build_detector`; :data:`DETECTORS` lists the names.
"""

from meddet.models.backbones import build_backbone
from meddet.models.detector import Assignment, GFLDetector
from meddet.models.fpn import FPN
from meddet.models.fuse import optimize_for_inference
from meddet.models.gfl_head import GFLHead
from meddet.models.nmode import NmODE, NmODE2
from meddet.models.zoo import DETECTORS, build_detector, skip_weight_init

__all__ = [
    "DETECTORS",
    "FPN",
    "Assignment",
    "GFLDetector",
    "GFLHead",
    "NmODE",
    "NmODE2",
    "build_backbone",
    "build_detector",
    "optimize_for_inference",
    "skip_weight_init",
]
