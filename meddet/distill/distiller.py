"""MedDet's multi-teacher adversarial distiller: AFA -> fusion on the teacher side, AATM on the
student side (Zhang et al., arXiv:2409.00204, Sec. III-B..E).

One forward gives every distillation term of an iteration. The student-side terms and D's term
have disjoint graphs and reach disjoint parameters, so they can be back-propagated together
(``total_loss(...) + out["disc"]``) or one after the other (the trainer does the latter to time
the two steps):

============================  ===================================  ========================
parameters                    trained by                           optimiser (trainer)
============================  ===================================  ========================
student, ``G``                ``σ·L_det + τ·L_dist + (1-σ-τ)·L_adv``  SGD (engine schedule)
AFA + fusion (teacher side)   ``L_D`` through the real branch      Adam (with ``D``)
``D``                         ``L_D``                              Adam
teachers                      nothing (run under inference_mode)   none
============================  ===================================  ========================

Why the fusion is not trained by ``L_dist``: AFA and the fusion sit on the teacher side of a
squared-error loss, so descending ``L_dist`` through them shrinks the target towards the
student (or to zero), a trivial minimum. Two guards prevent it by design: (1) the target is
detached in ``L_dist``, so ``L_dist`` never moves the fusion; (2) both sides are standardised per
channel (:func:`~meddet.distill.losses.standardize`) before ``L_dist`` and before ``D``, so no
loss depends on the raw scale of the target. The fusion learns, together with ``D``, to present
the teacher features in the form that ``G(S)`` has not matched yet; it is the "real" side of
the game. Without AATM (``--no-aatm``) the fusion has no training signal and stays at its
initialisation: identity AFA (equal widths) and the mean of the teachers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from meddet.distill.aatm import (
    DiscMode,
    Discriminator,
    Generator,
    discriminator_loss,
    generator_loss,
)
from meddet.distill.afa import TeacherAligner
from meddet.distill.fusion import FusionKind, LevelwiseFusion
from meddet.distill.losses import feature_distill_loss, standardize


class MedDetDistiller(nn.Module):
    """AFA + fusion + AATM for ``n`` teachers over the FPN levels.

    Args:
        teacher_channels: ``teacher_channels[t][l]``: channels of teacher ``t`` at level ``l``.
        student_channels: the student's channels per level.
        fusion: ``lwff`` (paper), ``sum`` or ``concat`` (Table V).
        per_teacher_alpha: LWFF with one α per teacher.
        aatm: use ``G`` and ``D`` (off: ``L_dist`` between the target and ``S`` directly and
            no adversarial term; Table IV).
        disc_mode: ``pixel`` (D on every location's feature vector) or ``global``.
        disc_hidden: D's hidden width.
        normalize: standardise per channel before ``L_dist`` and ``D`` (keep on; see module
            docstring).
    """

    def __init__(self, *, teacher_channels: Sequence[Sequence[int]],
                 student_channels: Sequence[int], fusion: FusionKind = "lwff",
                 per_teacher_alpha: bool = False, aatm: bool = True,
                 disc_mode: DiscMode = "pixel", disc_hidden: int = 256,
                 normalize: bool = True) -> None:
        super().__init__()
        if len(set(student_channels)) != 1 and aatm:
            raise ValueError("AATM shares G and D across levels, so all student levels need the "
                             f"same channel count, got {list(student_channels)}")
        self.aatm = aatm
        self.normalize = normalize
        self.aligner = TeacherAligner(teacher_channels, student_channels)
        self.fusion = LevelwiseFusion(fusion, channels=student_channels,
                                      num_teachers=len(teacher_channels),
                                      per_teacher_alpha=per_teacher_alpha)
        if aatm:
            c = student_channels[0]
            self.generator = Generator(c)
            self.discriminator = Discriminator(c, hidden=disc_hidden, mode=disc_mode)

    def student_side_parameters(self) -> Iterator[nn.Parameter]:
        """``G`` (empty without AATM): trained with the student on eq. 14."""
        if self.aatm:
            yield from self.generator.parameters()

    def teacher_side_parameters(self) -> Iterator[nn.Parameter]:
        """AFA, fusion and ``D`` (empty without AATM): trained on D's BCE (``out["disc"]``).

        Without AATM AFA and the fusion receive no gradient at all, so none are returned.
        """
        if self.aatm:
            yield from self.aligner.parameters()
            yield from self.fusion.parameters()
            yield from self.discriminator.parameters()

    def fused_target(self, teacher_feats: Sequence[Sequence[Tensor]],
                     sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
        """The fused teacher feature per level.

        Args:
            teacher_feats: ``teacher_feats[t][l]``: ``[B, C_t_l, H_t_l, W_t_l]`` (any sizes).
            sizes: the student's ``(H_l, W_l)`` per level.

        Returns:
            Per level ``[B, C_l, H_l, W_l]``.
        """
        return self.fusion(self.aligner(teacher_feats, sizes))

    def _norm(self, x: Tensor) -> Tensor:
        return standardize(x) if self.normalize else x.float()

    def forward(self, student_feats: Sequence[Tensor],
                teacher_feats: Sequence[Sequence[Tensor]]) -> dict[str, Tensor]:
        """All distillation terms of one iteration.

        Args:
            student_feats: per level ``[B, C_l, H_l, W_l]`` (the student's FPN output, with
                gradient).
            teacher_feats: ``teacher_feats[t][l]``, no gradient needed (normal tensors, not
                inference tensors: clone those first).

        Returns:
            fp32 scalars ``dist`` (eq. 13), ``adv`` (generator loss, ``L_adv``) and ``disc``
            (D's BCE; add it to the total, it only reaches D and the fusion); ``adv`` and
            ``disc`` are zero without AATM.
        """
        sizes = [tuple(s.shape[-2:]) for s in student_feats]
        fused = self.fused_target(teacher_feats, sizes)
        preds = [self.generator(s) for s in student_feats] if self.aatm else list(student_feats)
        # Guard (1): the target is detached, so L_dist cannot shrink it towards the student.
        dist = feature_distill_loss([f.detach() for f in fused], preds, normalize=self.normalize)
        zero = dist.new_zeros(())
        if not self.aatm:
            return {"dist": dist, "adv": zero, "disc": zero}
        fake = [self._norm(p) for p in preds]
        disc = self.discriminator
        # The student side must not train D: freeze it while building L_adv's graph.
        disc.requires_grad_(False)
        try:
            adv = generator_loss(disc, fake)
        finally:
            disc.requires_grad_(True)
        real = [self._norm(f) for f in fused]
        d_loss = discriminator_loss(disc, real, [f.detach() for f in fake])
        return {"dist": dist, "adv": adv, "disc": d_loss}
