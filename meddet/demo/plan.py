"""What a demo run does and how long it should take: :class:`DemoPlan`, :data:`PLANS`, the
models in it (:data:`TEACHERS`, :data:`PLAIN_STUDENT`, :func:`check_students`) and the up-front
time estimate (:func:`estimate_seconds`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meddet.config import DistillConfig
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
# Seconds per training image at 128 px on one H100/H200-class GPU, batch 8: NOT MEASURED, a
# rough guess (the CPU figures / 40) until the plan has run on such a GPU; only used for the
# up-front estimate the demo prints.
_GPU_S_PER_IMG = {k: v / 40 for k, v in _TRAIN_S_PER_IMG.items()}
_EVAL_S_PER_IMG_FACTOR = 0.22  # inference costs about this share of a training step
# A training image's cost relative to 128 px for an input of r times the area is
# share + (1 - share) * r: for the MobileNetV2 students part of it (data loading, per-layer
# overheads, thread hand-offs at small sizes) does not shrink with the input (0.81x at the
# full plan's 96 px crops, measured); the ResNet teachers' cost follows the area.
_TRAIN_FIXED_SHARE = {"gfl_r50": 0.0, "gfl_r101": 0.0, "gfl_r152": 0.0}
_TRAIN_FIXED_SHARE_DEFAULT = 0.57
_MODEL_SETUP_S = 3.0          # build + first-iteration overhead per model run
_FIXED_S = 8.0                # imports, data set writing, tables, figures
_CACHED_TEACHER_S = 2.0       # a teacher taken from the cache (linked or copied)


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
        lr: learning rate for ``batch_size`` images (no further scaling).
        warmup_iters: linear warm-up length.
        bench_warmup, bench_iters: untimed / timed forwards per model for FPS.
        preview_images: test images in ``preview.png``.
        optimizer: ``sgd`` or ``adamw`` (``train.optimizer``).
        crop: train on random ``crop`` px windows of the ``img_size`` images, each holding a
            disc whole (``data.augmentation.crop``); validation and test see whole images.
        lr_steps: fractions of each run where the learning rate drops x0.1.
        teacher_cache: distil with the teachers' outputs cached per image and augmentation
            variant (``distill.teacher_cache``).
        device: the device the plan is sized for (``cpu`` or ``cuda``).
        students: the distilled students when ``--students`` is not given (``None``:
            :func:`default_students`).
        workers: data-loading worker processes per training run.
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
    optimizer: str = "sgd"
    crop: int | None = None
    lr_steps: tuple[float, ...] = (0.75, 0.9)
    teacher_cache: bool = False
    device: str = "cpu"
    students: tuple[str, ...] | None = None
    workers: int = 0

    def iters(self, epochs: int) -> int:
        """Training iterations of a run of ``epochs`` epochs under this plan."""
        n = epochs * math.ceil(self.num_train / self.batch_size)
        return min(n, self.max_iters) if self.max_iters else n

    @property
    def train_size(self) -> int:
        """Side of a training input: the crop when the plan crops, else the image size."""
        return self.crop if self.crop and self.crop < self.img_size else self.img_size

    def scale_line(self) -> str:
        """One line: the scale this plan trains at."""
        crop = (f", trained on random {self.train_size} px crops holding a disc"
                if self.train_size < self.img_size else "")
        cap = f" (at most {self.max_iters} iteration(s) each)" if self.max_iters else ""
        return (f"{self.img_size} px images{crop}; {self.num_train}/{self.num_val}/"
                f"{self.num_test} train/val/test images; teachers {self.iters(self.teacher_epochs)}"
                f" and students {self.iters(self.student_epochs)} iterations of batch "
                f"{self.batch_size}{cap}")


PLANS: dict[str, DemoPlan] = {
    # At most 15 minutes on 2 idle CPU cores, from random weights: the default phantom at
    # 256 px, every model trained on random 96 px crops holding a disc with AdamW at a
    # constant 2e-3 (a learning-rate step before a model leaves its early loss plateau, at
    # about 150-200 steps, stalls it: docs/demo.md), the teachers for one epoch only, their
    # outputs cached for distillation.
    "full": DemoPlan(name="full", img_size=256, num_train=200, num_val=24, num_test=50,
                     batch_size=8, teacher_epochs=1, student_epochs=9, eval_every=3,
                     lr=2e-3, warmup_iters=100, lr_steps=(), bench_warmup=1, bench_iters=5,
                     preview_images=4, optimizer="adamw", crop=96, teacher_cache=True,
                     students=("meddet",)),
    # One H100/H200-class GPU: the study's recipe (`cpu-crop`: 2,000 iterations of batch 8 on
    # 128 px crops of 256 px images) for every model, the default 200/50/50 split.
    "gpu": DemoPlan(name="gpu", img_size=256, num_train=200, num_val=50, num_test=50,
                    batch_size=8, teacher_epochs=80, student_epochs=80, eval_every=8,
                    lr=2e-3, warmup_iters=100, bench_warmup=5, bench_iters=50,
                    preview_images=4, optimizer="adamw", crop=128, device="cuda",
                    workers=4),
    # CI / first impression: every step runs once, on a handful of images.
    "quick": DemoPlan(name="quick", img_size=128, num_train=2, num_val=1, num_test=2,
                      batch_size=2, teacher_epochs=1, student_epochs=1, max_iters=1,
                      eval_every=1, lr=0.01, warmup_iters=1, bench_warmup=0, bench_iters=1,
                      preview_images=2, students=("meddet",)),
}


def default_students() -> list[str]:
    """The distilled students: ``meddet``, plus ``meddet_lite`` when the zoo has it."""
    from meddet.models import DETECTORS

    return ["meddet"] + (["meddet_lite"] if "meddet_lite" in DETECTORS else [])


def check_students(students: Sequence[str] | None, plan: DemoPlan | None = None) -> list[str]:
    """The students to distil (default: the plan's ``students``, else
    :func:`default_students`), validated.

    Raises:
        MedDetError: none given, an unknown zoo name, a name listed twice, or a teacher or the
            plain baseline given as a student.
    """
    from meddet.models import DETECTORS

    if students is not None:
        names = list(students)
    elif plan is not None and plan.students is not None:
        names = list(plan.students)
    else:
        names = default_students()
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


def scale_note(plan: DemoPlan) -> str:
    """One line: how this plan's numbers relate to the full study (``docs/results.md``)."""
    if plan.max_iters is not None and plan.max_iters <= 2:
        return ("A pipeline check (one iteration per model): the numbers mean nothing; run "
                "`meddet demo` without --quick for detectors that learn.")
    if plan.name == "gpu":
        return ("The study's recipe (`cpu-crop`, one seed): comparable with one seed of "
                "docs/results.md.")
    return ("A CPU-sized schedule on the default phantom: the study trains each model for "
            "2,000 iterations of batch 8 (`cpu-crop`, docs/results.md); compare these models "
            "with each other, not with the study or the paper.")


def _s_per_img(plan: DemoPlan, name: str) -> float:
    table = _GPU_S_PER_IMG if plan.device == "cuda" else _TRAIN_S_PER_IMG
    return table.get(name, table["meddet"])


def estimate_seconds(plan: str | DemoPlan, students: Sequence[str] | None = None, *,
                     cached_teachers: bool = False) -> dict[str, float]:
    """Expected seconds per step on 2 idle CPU cores (a rough, up-front estimate).

    ``cached_teachers``: the teachers come from the cache (:mod:`meddet.demo.cache`), a copy
    of a few seconds each.

    Returns:
        ``{step_name: seconds}`` in run order, step names as in ``results.json``.
    """
    p = resolve_plan(plan)
    students = check_students(students, p)
    area = (p.train_size / 128) ** 2
    eval_px = (p.img_size / 128) ** 2

    def train_px(name: str) -> float:
        share = _TRAIN_FIXED_SHARE.get(name, _TRAIN_FIXED_SHARE_DEFAULT)
        return share + (1 - share) * area

    def train(name: str, epochs: int, extra: float = 0.0) -> float:
        imgs = p.iters(epochs) * p.batch_size
        evals = math.ceil(epochs / p.eval_every)
        return (_MODEL_SETUP_S + imgs * _s_per_img(p, name) * train_px(name) + extra
                + evals * p.num_val * _s_per_img(p, name) * eval_px * _EVAL_S_PER_IMG_FACTOR)

    # The teachers' forward pass at every distillation step, or once per cached (image,
    # augmentation variant).
    variants = DistillConfig.model_fields["teacher_cache_variants"].default
    teacher_fwd = sum(_s_per_img(p, t) * train_px(t) for t in TEACHERS) * _EVAL_S_PER_IMG_FACTOR
    out = {"synth": 1.0 + 0.01 * eval_px * (p.num_train + p.num_val + p.num_test)}
    for t in TEACHERS:
        out[f"pretrain {t}"] = _CACHED_TEACHER_S if cached_teachers else train(t, p.teacher_epochs)
    for s in students:
        imgs = p.iters(p.student_epochs) * p.batch_size
        fwd = min(imgs, variants * p.num_train) if p.teacher_cache else imgs
        out[f"distill {s}"] = train(s, p.student_epochs, extra=fwd * teacher_fwd) + 3.0
    out[f"train {PLAIN_STUDENT}"] = train(PLAIN_STUDENT, p.student_epochs)
    models = [*TEACHERS, PLAIN_STUDENT, *students]
    out["evaluate"] = sum(2.0 + p.num_test * _s_per_img(p, m) * eval_px * _EVAL_S_PER_IMG_FACTOR
                          for m in models)
    # fvcore's trace at the demo size + two builds and the timed forwards per model.
    out["benchmark"] = sum(4.0 + (p.bench_warmup + p.bench_iters) * _s_per_img(p, m) * eval_px
                           * _EVAL_S_PER_IMG_FACTOR for m in models)
    out["report"] = _FIXED_S
    return out
