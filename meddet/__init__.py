"""MedDet: multi-teacher generative adversarial distillation for cervical disc herniation detection.

The public surface is small on purpose: the jobs of the command line as functions returning
result objects (:func:`train`, :func:`distill_student`, :func:`evaluate`, :func:`predict`,
:class:`Detector`; see :mod:`meddet.api`) and :class:`MedDetError`. Everything else lives in
the sub-packages ``meddet.data``, ``meddet.models``, ``meddet.distill`` and ``meddet.engine``.
"""

__version__ = "0.1.0"

from meddet.api import (  # noqa: E402
    Detector,
    Prediction,
    TrainResult,
    distill_student,
    evaluate,
    predict,
    train,
)
from meddet.errors import MedDetError  # noqa: E402

__all__ = ["Detector", "MedDetError", "Prediction", "TrainResult", "__version__",
           "distill_student", "evaluate", "predict", "train"]
