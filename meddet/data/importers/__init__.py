"""Importing detection datasets from other formats into the project's layout.

:func:`import_dataset` (``meddet data import``) reads Pascal VOC, YOLO, COCO (any layout) or
segmentation masks and writes ``images/{split}/`` + ``annotations/{split}.json``, the layout
:class:`~meddet.data.CocoDetection` reads. Each format has a reader module (``voc``, ``yolo``,
``coco``, ``masks``) producing the same records; checks, class mapping, splitting and writing
are shared (:mod:`.core`).
"""

from meddet.data.importers.checks import parse_class_map, parse_split
from meddet.data.importers.core import FORMATS, import_dataset
from meddet.data.importers.masks import mask_components
from meddet.data.importers.summary import ImportSummary

__all__ = [
    "FORMATS",
    "ImportSummary",
    "import_dataset",
    "mask_components",
    "parse_class_map",
    "parse_split",
]
