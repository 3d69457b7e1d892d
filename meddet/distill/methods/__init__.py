"""Distillation methods behind one interface (:class:`DistillMethod`), looked up by name.

:data:`METHODS` is the one table of them; ``meddet distill --method NAME`` and
``distill.method`` take its keys. A new method is one file here (a :class:`DistillMethod`
subclass) plus its entry in the table.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from meddet.config import DistillConfig
from meddet.distill.methods.base import (
    DistillMethod,
    MethodLosses,
    StudentPass,
    TeacherPass,
    fpn_channels,
)
from meddet.distill.methods.fgd import FGD
from meddet.distill.methods.ld import LD
from meddet.distill.methods.meddet import MedDet
from meddet.distill.methods.mgd import MGD
from meddet.distill.methods.none import NoDistillation
from meddet.errors import MedDetError

__all__ = ["FGD", "LD", "MGD", "METHODS", "DistillMethod", "MedDet", "MethodLosses",
           "NoDistillation", "StudentPass", "TeacherPass", "build_method", "fpn_channels",
           "get_method"]

#: Every distillation method by its ``--method`` name.
METHODS: dict[str, type[DistillMethod]] = {
    "meddet": MedDet,
    "mgd": MGD,
    "ld": LD,
    "fgd": FGD,
    "none": NoDistillation,
}


def get_method(name: str) -> type[DistillMethod]:
    """The method class named ``name``.

    Raises:
        MedDetError: no such method.
    """
    if name not in METHODS:
        raise MedDetError(f"unknown distillation method {name!r}; use one of: "
                          f"{', '.join(METHODS)}")
    return METHODS[name]


def build_method(cfg: DistillConfig, *, student: nn.Module,
                 teachers: Sequence[nn.Module]) -> DistillMethod:
    """The method ``cfg.method`` for ``student`` and the teachers it uses, on CPU.

    Raises:
        MedDetError: unknown method, or student and teachers that do not fit it.
    """
    return get_method(cfg.method).from_config(cfg, student=student, teachers=teachers)
