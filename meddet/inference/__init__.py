"""Inference on real-world inputs: reading PNG/JPEG/TIFF/DICOM/NIfTI, predicting, drawing.

* :mod:`meddet.inference.readers` finds inputs and streams them as 2-D slices;
* :mod:`meddet.inference.predictor` runs a detector on them and writes the outputs;
* :mod:`meddet.inference.overlay` draws detections on a slice.
"""

from meddet.inference.predictor import Predictor, PredictSummary, predict_inputs
from meddet.inference.readers import (
    Skip,
    Slice,
    SliceSpec,
    discover_inputs,
    iter_slices,
    parse_slices,
)

__all__ = [
    "PredictSummary",
    "Predictor",
    "Skip",
    "Slice",
    "SliceSpec",
    "discover_inputs",
    "iter_slices",
    "parse_slices",
    "predict_inputs",
]
