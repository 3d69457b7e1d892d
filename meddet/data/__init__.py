"""Data layer: the synthetic CDH-MRI generator, the COCO dataset, transforms and noise.

Public API (see ``docs/architecture.md`` for the contracts other layers rely on):

- :func:`generate_dataset` writes the synthetic dataset (``meddet data synth``).
- :func:`import_dataset` converts VOC, YOLO, COCO and mask datasets (``meddet data import``).
- :class:`CocoDetection` and :func:`collate` feed detectors from any COCO detection dataset.
- :func:`preprocess` and :func:`load_image` prepare arbitrary images for inference.
- :mod:`meddet.data.noise` (:func:`parse_noise_spec`) corrupts images for robustness tests.
- :func:`make_preview` draws images with their boxes.
"""

from meddet.data import noise
from meddet.data.dataset import CocoDetection, collate
from meddet.data.generate import SPLITS, generate_dataset
from meddet.data.importers import ImportSummary, import_dataset
from meddet.data.noise import parse_noise_spec
from meddet.data.preview import make_preview
from meddet.data.synth import CATEGORIES
from meddet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    normalize_intensity,
    preprocess,
)

__all__ = [
    "CATEGORIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImportSummary",
    "SPLITS",
    "CocoDetection",
    "collate",
    "generate_dataset",
    "import_dataset",
    "load_image",
    "make_preview",
    "noise",
    "normalize_intensity",
    "parse_noise_spec",
    "preprocess",
]
