"""MedDet: multi-teacher generative adversarial distillation for cervical disc herniation detection.

The public surface is small on purpose; everything else lives in the sub-packages
``meddet.data``, ``meddet.models``, ``meddet.distill`` and ``meddet.engine``.
"""

__version__ = "0.1.0"

from meddet.errors import MedDetError  # noqa: E402

__all__ = ["MedDetError", "__version__"]
