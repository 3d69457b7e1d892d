"""What a demo run does and how long it should take: :class:`DemoPlan`, :data:`PLANS`, the
models in it (:data:`TEACHERS`, :data:`PLAIN_STUDENT`, :func:`check_students`) and the up-front
time estimate (:func:`estimate_seconds`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meddet.errors import MedDetError
from meddet.geometry import check_img_size

TEACHERS = ("gfl_r50", "gfl_r101", "gfl_r152")
#: Table I's "GFL MobileNetV2": the student's architecture without nmODE² or teachers.
PLAIN_STUDENT = "gfl_mbv2"
#: The paper measures parameters and GFLOPs at this input size (Table II).
PAPER_IMG_SIZE = 512

# Seconds per training image at 128 px on 2 idle CPU cores (batch 4-8, measured with
# `meddet pretrain-teacher`); a teacher's inference pass in distillation costs about a third.
# Only used for the up-front estimate; unknown students count as `meddet`.
_TRAIN_S_PER_IMG = {"gfl_mbv2": 0.12, "meddet": 0.2, "gfl_r50": 0.3, "gfl_r101": 0.45,
                    "gfl_r152": 0.62}
_EVAL_S_PER_IMG_FACTOR = 0.3  # inference costs about this share of a training step
_MODEL_SETUP_S = 3.0          # build + first-iteration overhead per model run
_FIXED_S = 8.0                # imports, data set writing, tables, figures


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and schedule of one demo run (plain values; see :data:`PLANS`).

    Attributes:
        name: ``full`` or ``quick`` (or anything, for a custom plan).
        img_size: training / evaluation input side (multiple of 32); the data set is
            generated at this size too (at least 128, the generator's minimum).
        num_train, num_val, num_test: images per split.
        batch_size: images per training step.
        teacher_epochs, student_epochs: epochs over the training split per model.
        max_iters: stop every training run after this many iterations (``None``: all epochs).
        eval_every: evaluate on val every N epochs (the last epoch always is).
        lr: SGD learning rate for ``batch_size`` images (no further scaling).
        warmup_iters: linear warm-up length.
        bench_warmup, bench_iters: untimed / timed forwards per model for FPS.
        preview_images: test images in ``preview.png``.
    """

    name: str
    img_size: int
    num_train: int
    num_val: int
    num_test: int
    batch_size: int
    teacher_epochs: int
    student_epochs: int
    max_iters: int | None = None
    eval_every: int = 1
    lr: float = 0.01
    warmup_iters: int = 10
    bench_warmup: int = 1
    bench_iters: int = 5
    preview_images: int = 4

    def iters(self, epochs: int) -> int:
        """Training iterations of a run of ``epochs`` epochs under this plan."""
        n = epochs * math.ceil(self.num_train / self.batch_size)
        return min(n, self.max_iters) if self.max_iters else n


PLANS: dict[str, DemoPlan] = {
    # About 10 minutes on 2 idle cores: 128 px, 64 training images, 3-4 epochs of batch 8.
    "full": DemoPlan(name="full", img_size=128, num_train=64, num_val=8, num_test=16,
                     batch_size=8, teacher_epochs=3, student_epochs=4, eval_every=1,
                     lr=0.01, warmup_iters=8, bench_warmup=1, bench_iters=5,
                     preview_images=4),
    # CI / first impression: every step runs once, on a handful of images.
    "quick": DemoPlan(name="quick", img_size=128, num_train=2, num_val=1, num_test=2,
                      batch_size=2, teacher_epochs=1, student_epochs=1, max_iters=1,
                      eval_every=1, lr=0.01, warmup_iters=1, bench_warmup=0, bench_iters=1,
                      preview_images=2),
}


def default_students() -> list[str]:
    """The distilled students: ``meddet``, plus ``meddet_lite`` when the zoo has it."""
    from meddet.models import DETECTORS

    return ["meddet"] + (["meddet_lite"] if "meddet_lite" in DETECTORS else [])


def check_students(students: Sequence[str] | None) -> list[str]:
    """The students to distil (default :func:`default_students`), validated.

    Raises:
        MedDetError: none given, an unknown zoo name, a name listed twice, or a teacher or the
            plain baseline given as a student.
    """
    from meddet.models import DETECTORS

    names = list(students) if students is not None else default_students()
    if not names:
        raise MedDetError("the demo needs at least one student to distil, e.g. --students meddet")
    unknown = [s for s in names if s not in DETECTORS]
    if unknown:
        raise MedDetError(f"unknown student {unknown[0]!r}; use zoo names: {', '.join(DETECTORS)}")
    if len(set(names)) != len(names):
        raise MedDetError(f"--students {','.join(names)} lists a model twice")
    clash = [s for s in names if s in (*TEACHERS, PLAIN_STUDENT)]
    if clash:
        raise MedDetError(f"{clash[0]} is already in the demo as a teacher or the plain student; "
                          "pick distilled students such as meddet")
    return names


def resolve_plan(plan: str | DemoPlan) -> DemoPlan:
    """A plan by name (:data:`PLANS`) or as given, checked.

    Raises:
        MedDetError: unknown name, an image size that is not a multiple of 32 (or below 64),
            or a count below 1.
    """
    if isinstance(plan, DemoPlan):
        p = plan
    elif plan in PLANS:
        p = PLANS[plan]
    else:
        raise MedDetError(f"unknown demo plan {plan!r}; use one of: {', '.join(PLANS)}")
    check_img_size(p.img_size, what="demo img_size", minimum=64)
    if min(p.num_train, p.num_val, p.num_test, p.batch_size, p.teacher_epochs,
           p.student_epochs, p.bench_iters) < 1:
        raise MedDetError("demo plan counts (images per split, batch size, epochs, bench "
                          "iterations) must all be >= 1")
    return p


def estimate_seconds(plan: str | DemoPlan, students: Sequence[str] | None = None) -> dict[str, float]:
    """Expected seconds per step on 2 idle CPU cores (a rough, up-front estimate).

    Returns:
        ``{step_name: seconds}`` in run order, step names as in ``results.json``.
    """
    p = resolve_plan(plan)
    students = list(students) if students is not None else default_students()
    px = (p.img_size / 128) ** 2

    def cost(name: str) -> float:
        return _TRAIN_S_PER_IMG.get(name, _TRAIN_S_PER_IMG["meddet"]) * px

    def train(name: str, epochs: int, extra_per_img: float = 0.0) -> float:
        imgs = p.iters(epochs) * p.batch_size
        evals = math.ceil(epochs / p.eval_every)
        return (_MODEL_SETUP_S + imgs * (cost(name) + extra_per_img)
                + evals * p.num_val * cost(name) * _EVAL_S_PER_IMG_FACTOR)

    teacher_fwd = sum(cost(t) for t in TEACHERS) * _EVAL_S_PER_IMG_FACTOR
    out = {"synth": 1.0 + 0.01 * px * (p.num_train + p.num_val + p.num_test)}
    for t in TEACHERS:
        out[f"pretrain {t}"] = train(t, p.teacher_epochs)
    for s in students:
        out[f"distill {s}"] = train(s, p.student_epochs, extra_per_img=teacher_fwd) + 3.0
    out[f"train {PLAIN_STUDENT}"] = train(PLAIN_STUDENT, p.student_epochs)
    models = [*TEACHERS, PLAIN_STUDENT, *students]
    out["evaluate"] = sum(2.0 + p.num_test * cost(m) * _EVAL_S_PER_IMG_FACTOR for m in models)
    # fvcore's trace at the demo size + two builds and the timed forwards per model.
    out["benchmark"] = sum(4.0 + (p.bench_warmup + p.bench_iters) * cost(m)
                           * _EVAL_S_PER_IMG_FACTOR for m in models)
    out["report"] = _FIXED_S
    return out
