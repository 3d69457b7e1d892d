"""Training and evaluation engine: a minimal loop with hooks, checkpoints, COCO metrics.

- :class:`Trainer` runs the step; :mod:`meddet.engine.hooks` holds everything around it;
  :mod:`meddet.engine.events` is what the two share (the hook interface, the logged scalars).
- :mod:`meddet.engine.checkpoint` is the only code that writes or reads checkpoints.
- :mod:`meddet.engine.evaluator` runs inference and pycocotools' COCOeval.
- :mod:`meddet.engine.evaluate` is ``meddet eval`` as one call: :func:`evaluate_checkpoint`.
- :mod:`meddet.engine.defaults` turns a config into a trainer: ``assemble_trainer`` builds
  every training run (``meddet pretrain-teacher`` and ``meddet distill``), ``run_training``
  runs it and returns the summary.
- :mod:`meddet.engine.distributed` wraps torchrun / DDP so single-process code needs no branches.
"""

from meddet.engine.checkpoint import (
    build_model_from_checkpoint,
    load_checkpoint,
    make_meta,
    save_checkpoint,
)
from meddet.engine.evaluate import (
    EvalResult,
    evaluate_checkpoint,
    evaluate_model,
    evaluate_predictions,
)
from meddet.engine.evaluator import evaluate_coco, predict_dataset
from meddet.engine.trainer import HookBase, NonFiniteLossError, Trainer

__all__ = [
    "EvalResult",
    "HookBase",
    "NonFiniteLossError",
    "Trainer",
    "build_model_from_checkpoint",
    "evaluate_checkpoint",
    "evaluate_coco",
    "evaluate_model",
    "evaluate_predictions",
    "load_checkpoint",
    "make_meta",
    "predict_dataset",
    "save_checkpoint",
]
