"""``meddet demo``: the whole paper, end to end, at a size a 2-core CPU finishes in minutes.

:func:`run_demo` chains the library's own steps, in one process:

1. synthesise a CDH-MRI data set (:func:`meddet.data.generate_dataset`);
2. pretrain the three teachers GFL R50 / R101 / R152 (:func:`meddet.engine.defaults.pretrain`);
3. distil each MedDet student from them (:func:`meddet.distill.trainer.distill`, method
   ``meddet``: AFA + LWFF + AATM);
4. train the plain student (``gfl_mbv2``, Table I's "GFL MobileNetV2", no teachers);
5. evaluate every model on the test split (:func:`meddet.engine.evaluate_checkpoint`);
6. benchmark them (:func:`meddet.benchmark.benchmark_models`: parameters, GFLOPs at the paper's
   512 px, FPS at the demo size);
7. write ``results.md``, ``results.json``, ``curves.png``, ``preview.png`` and
   ``preview_plain.png`` (predictions of the distilled and of the plain student on test images,
   ground truth in white).

The plans (:data:`PLANS`): ``full`` fits 15 minutes on 2 CPU cores (256 px images, 96 px
crops, a short constant-rate AdamW schedule; the plain student starts to learn, the teachers
and the distilled student do not get far enough in that budget: ``docs/demo.md``), ``gpu``
trains every model with the study's ``cpu-crop`` recipe, ``quick`` runs every step once. The
paper's own setting is the ``paper`` config (512 px, mmdetection's 12-epoch GFL schedule) on a
GPU with the private CDH-1848 data.

Modules: :mod:`~meddet.demo.plan` (the plans, the models, the time estimate),
:mod:`~meddet.demo.steps` (the work of each step), :mod:`~meddet.demo.run` (the steps in order,
timed, and the report), :mod:`~meddet.demo.tables` (Tables I and II),
:mod:`~meddet.demo.figures` (``preview.png``).
"""

from meddet.demo.plan import (
    PAPER_IMG_SIZE,
    PLAIN_STUDENT,
    PLANS,
    TEACHERS,
    DemoPlan,
    check_students,
    default_students,
    estimate_seconds,
    scale_note,
)
from meddet.demo.run import run_demo
from meddet.demo.tables import DISPLAY_NAMES, build_tables, format_tables

__all__ = ["DISPLAY_NAMES", "PAPER_IMG_SIZE", "PLAIN_STUDENT", "PLANS", "TEACHERS", "DemoPlan",
           "build_tables", "check_students", "default_students", "estimate_seconds",
           "format_tables", "run_demo", "scale_note"]
