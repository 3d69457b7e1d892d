"""The reproduction study: the paper's Tables I–V and its noise claim, on any dataset.

Every row of every table is one run directory under the study folder: it is trained with the
``meddet`` CLI, evaluated on the test split with ``meddet eval``, and finished by a
``row.json`` holding the test metrics (COCO mAP@[.5:.95], the headline, and mAP50), the
best validation mAP50 and the wall-clock cost.
A finished row is never re-run; an interrupted one resumes from its ``last.pt``. The report
is rendered from whatever rows exist, so it can be made at any point.

* :mod:`~meddet.study.tables`: the tables, their rows and the plan (:func:`plan`); the
  optional ``imagenet`` table adds ImageNet-initialised students beside their from-scratch rows.
* :mod:`~meddet.study.runner`: running rows as subprocesses under a deadline
  (:func:`run_study`).
* :mod:`~meddet.study.records`: ``row.json`` and ``study.json`` on disk.
* :mod:`~meddet.study.verdicts`: statistics over seeds and the verdicts.
* :mod:`~meddet.study.noise`: the noise sections, their plots, :func:`compare_runs`.
* :mod:`~meddet.study.report`: the Markdown report (:func:`render`, :func:`write_report`).

From the command line: ``meddet study plan | run | report``.
"""

from meddet.study.noise import compare_runs
from meddet.study.records import load_rows, read_meta
from meddet.study.report import render, write_report
from meddet.study.runner import StudyOptions, StudyResult, run_study
from meddet.study.tables import TABLES, Row, plan

__all__ = ["TABLES", "Row", "StudyOptions", "StudyResult", "compare_runs", "load_rows", "plan",
           "read_meta", "render", "run_study", "write_report"]
