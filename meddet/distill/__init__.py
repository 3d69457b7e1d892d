"""Distillation: MedDet's AFA, LWFF and AATM (arXiv:2409.00204) and the MGD / FGD / LD
baselines of its Table I.

The modules work on per-level lists of FPN tensors. :mod:`meddet.distill.methods` wraps each
method (MedDet, MGD, LD, FGD, none) in one interface and looks it up by name in one table;
:mod:`meddet.distill.step` is the training step that feeds any of them, and
:mod:`meddet.distill.trainer` assembles a run with the engine.
"""

from meddet.distill.aatm import Discriminator, Generator, discriminator_loss, generator_loss
from meddet.distill.afa import AFA, TeacherAligner
from meddet.distill.baselines import FGDLoss, LDLoss, MGDLoss, ld_loss
from meddet.distill.distiller import MedDetDistiller
from meddet.distill.fusion import (
    FUSIONS,
    LWFF,
    ConcatFusion,
    LevelwiseFusion,
    SumFusion,
    build_fusion,
)
from meddet.distill.losses import check_loss_weights, feature_distill_loss, standardize, total_loss

__all__ = [
    "AFA", "FUSIONS", "LWFF", "ConcatFusion", "Discriminator", "FGDLoss", "Generator", "LDLoss",
    "LevelwiseFusion", "MGDLoss", "MedDetDistiller", "SumFusion", "TeacherAligner",
    "build_fusion", "check_loss_weights", "discriminator_loss", "feature_distill_loss",
    "generator_loss", "ld_loss", "standardize", "total_loss",
]
