"""The work of each demo step, one function per step, each calling the library's own job:
:func:`~meddet.data.generate_dataset`, :func:`~meddet.engine.defaults.pretrain`,
:func:`~meddet.distill.trainer.distill`, :func:`~meddet.engine.evaluate_checkpoint` and
:func:`~meddet.benchmark.benchmark_models`. :func:`meddet.demo.run.run_demo` runs them in order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from meddet.demo.plan import PAPER_IMG_SIZE, DemoPlan
from meddet.errors import MedDetError


def guard(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; a user-facing error says which piece of the demo failed."""
    try:
        return fn(*args, **kwargs)
    except MedDetError as exc:
        raise MedDetError(f"demo failed while {what}: {exc}") from exc


@contextlib.contextmanager
def progress_bar(console: Any) -> Iterator[Any]:
    """A transient rich progress bar on ``console`` (``None`` when the run is silent)."""
    if console is None:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    prog = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=console, transient=True)
    prog.start()
    try:
        yield prog
    finally:
        prog.stop()


def synthesise(root: Path, plan: DemoPlan, *, seed: int, console: Any) -> None:
    """Write the synthetic CDH-MRI data set of ``plan`` to ``root`` (replacing one there)."""
    from meddet.data import generate_dataset

    with progress_bar(console) as prog:
        task = prog.add_task("images", total=plan.num_train + plan.num_val + plan.num_test) \
            if prog else None
        generate_dataset(root, num_train=plan.num_train, num_val=plan.num_val,
                         num_test=plan.num_test, size=max(128, plan.img_size), seed=seed,
                         overwrite=True,
                         progress=(lambda d, _t: prog.update(task, completed=d)) if prog else None)


#: The config every demo model starts from (the plan's values win over it).
RECIPE = "cpu-crop"


def _train_cfg(plan: DemoPlan, root: Path, *, model: str, epochs: int, seed: int,
               device: str, pretrained: str = "none",
               distill: dict[str, Any] | None = None) -> Any:
    from meddet.config import load_config

    data: dict[str, Any] = {"root": str(root), "img_size": plan.img_size,
                            "workers": plan.workers, "augmentation": {"crop": plan.crop}}
    overrides: dict[str, Any] = {
        "data": data,
        "model": {"name": model, "pretrained": pretrained},
        "train": {"epochs": epochs, "batch_size": plan.batch_size, "lr": plan.lr,
                  "optimizer": plan.optimizer, "base_batch_size": plan.batch_size,
                  "warmup_iters": plan.warmup_iters, "lr_steps": list(plan.lr_steps),
                  "max_iters": plan.max_iters, "seed": seed, "eval_every": plan.eval_every,
                  "device": device},
    }
    if distill is not None:
        overrides["distill"] = distill
    # The plan sets the schedule; everything else (the from-scratch model options, the
    # warm-up's start) is the study's recipe, so the demo cannot drift from it.
    cfg = load_config(RECIPE, overrides)
    if plan.crop is None:  # a None override is ignored: clear the recipe's crop explicitly
        cfg.data.augmentation.crop = None
    return cfg


def train(name: str, role: str, epochs: int, *, plan: DemoPlan, root: Path, out: Path,
          seed: int, device: str, console: Any, pretrained: str = "none") -> dict[str, Any]:
    """Train a teacher (``role="teacher"``) or the plain student (``"baseline"``) without
    distillation; returns its entry of ``results.json``'s ``models``."""
    from meddet.engine.defaults import pretrain
    from meddet.runs import write_run_config

    cfg = _train_cfg(plan, root, model=name, epochs=epochs, seed=seed, device=device,
                     pretrained=pretrained)
    run_dir = out / ("teachers" if role == "teacher" else "students") / name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg.model_dump(mode="json"), "demo")
    res = guard(f"training {name}", pretrain, cfg, run_dir, console=console)
    return {"role": role, "run_dir": str(run_dir), "checkpoint": res["best"],
            "history": res["history"], "iters": res["iters"]}


def distill_student(name: str, teachers: Sequence[str], *, plan: DemoPlan, root: Path,
                    out: Path, seed: int, device: str, console: Any,
                    pretrained: str = "none") -> dict[str, Any]:
    """Distil student ``name`` from the teacher checkpoints (method ``meddet``); returns its
    entry of ``results.json``'s ``models``."""
    from meddet.distill.trainer import distill
    from meddet.runs import write_run_config

    cfg = _train_cfg(plan, root, model=name, epochs=plan.student_epochs, seed=seed,
                     device=device, pretrained=pretrained,
                     distill={"method": "meddet", "student": name,
                              "teacher_cache": plan.teacher_cache})
    run_dir = out / "students" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, {**cfg.model_dump(mode="json"), "teachers": list(teachers)},
                     "demo")
    res = guard(f"distilling {name}", distill, cfg, run_dir, teachers=list(teachers),
                console=console)
    return {"role": "student", "run_dir": str(run_dir), "checkpoint": res["student"],
            "history": res["history"], "iters": res["iters"], "time_split": res["time_split"]}


def evaluate(checkpoints: Mapping[str, str | Path], root: Path, *, device: str,
             console: Any) -> dict[str, dict[str, Any]]:
    """Test-split metrics of each model (:func:`~meddet.engine.evaluate_checkpoint`).

    Returns:
        ``{name: evaluate_coco metrics + "checkpoint"}``.
    """
    from meddet.engine.evaluate import evaluate_checkpoint

    metrics: dict[str, dict[str, Any]] = {}
    with progress_bar(console) as prog:
        task = prog.add_task("evaluate", total=len(checkpoints)) if prog else None
        for name, ckpt in checkpoints.items():
            res = guard(f"evaluating {name}", evaluate_checkpoint, Path(ckpt), data=root,
                        split="test", batch_size=4, device=device)
            metrics[name] = {**res.metrics, "checkpoint": str(Path(ckpt))}
            if prog:
                prog.advance(task)
    return metrics


def benchmark(names: Sequence[str], plan: DemoPlan, *, device: str,
              console: Any) -> dict[str, Any]:
    """Parameters, GFLOPs (at 512 px) and FPS (at the demo size) per model, one at a time.

    Returns:
        ``{"models": {name: row}, ...}`` plus the machine fields of
        :func:`~meddet.benchmark.benchmark_models`.
    """
    from meddet.benchmark import benchmark_models, count_gflops
    from meddet.models import build_detector

    rows: dict[str, Any] = {}
    info: dict[str, Any] = {}
    with progress_bar(console) as prog:
        task = prog.add_task("benchmark", total=len(names)) if prog else None
        for name in names:
            res = benchmark_models([name], img_size=plan.img_size, device=device,
                                   warmup=plan.bench_warmup, iters=plan.bench_iters)
            row = dict(res["models"][0])
            if PAPER_IMG_SIZE % plan.img_size == 0 and plan.img_size % 128 == 0:
                # Every counted op scales with the feature-map area, and all five pyramid
                # levels stay integral when the side is a multiple of 128: the count at 512 px
                # is exactly (512 / size)^2 times this one (docs/table2.md;
                # tests/test_table2.py pins it).
                row["gflops_512"] = row["gflops"] * (PAPER_IMG_SIZE / plan.img_size) ** 2
            else:
                torch.manual_seed(0)
                row["gflops_512"] = count_gflops(build_detector(name).eval(), PAPER_IMG_SIZE)
            row["gflops_demo"] = row.pop("gflops")
            rows[name] = row
            info = {k: v for k, v in res.items() if k != "models"}
            if prog:
                prog.advance(task)
    return {**info, "models": rows}
