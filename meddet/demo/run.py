""":func:`run_demo`: the demo's steps (:mod:`meddet.demo.steps`) in order, timed, then the report
(``results.md``, ``results.json``, ``curves.png``, ``preview.png``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from meddet._io import atomic_write_json, atomic_write_text
from meddet.demo import cache, steps
from meddet.demo.figures import preview
from meddet.demo.plan import (
    PAPER_IMG_SIZE,
    PLAIN_STUDENT,
    TEACHERS,
    DemoPlan,
    check_students,
    estimate_seconds,
    resolve_plan,
    scale_note,
)
from meddet.demo.tables import build_tables, format_tables, initial_weights_line
from meddet.errors import MedDetError


class _Clock:
    """Elapsed seconds per step, and an ETA rescaled by how fast the machine has been so far."""

    def __init__(self, expected: dict[str, float], console: Any) -> None:
        self.expected = expected
        self.console = console
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.index = 0

    def run(self, step: str, title: str, fn: Callable[..., Any], *args: Any,
            **kwargs: Any) -> Any:
        """Announce ``step``, return ``fn(*args, **kwargs)`` and record how long it took."""
        self.index += 1
        exp = self.expected.get(step, 0.0)
        if self.console is not None:
            self.console.rule(f"[bold][{self.index}/{len(self.expected)}] {title}[/]  "
                              f"(about {_fmt_dur(exp)})", align="left")
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[step] = round(time.perf_counter() - t, 2)
        if self.console is not None:
            done_exp = sum(self.expected[k] for k in self.seconds)
            left_exp = sum(v for k, v in self.expected.items() if k not in self.seconds)
            # Rescale the rest by how this machine has kept up so far, once that means something.
            speed = sum(self.seconds.values()) / done_exp if done_exp >= 20 else 1.0
            left = f"; about {_fmt_dur(left_exp * speed)} left" if left_exp else ""
            self.console.print(f"[green]done[/] {step} in {_fmt_dur(self.seconds[step])} "
                               f"(elapsed {_fmt_dur(self.elapsed())}{left})")
        return result

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _fmt_dur(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _machine(threads: int) -> dict[str, Any]:
    from meddet.device import device_name  # the same CPU name `meddet bench` reports

    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {"cpu": device_name(torch.device("cpu")), "cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "load_start": load}


def _default_threads() -> int:
    # OMP_NUM_THREADS, when set, is the caller's decision (CI sets 1 on a loaded box).
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else min(2, os.cpu_count() or 1)


def _report(out: Path, root: Path, models: dict[str, dict[str, Any]], names: Sequence[str],
            shown: str, plan: DemoPlan, device: str) -> dict[str, Any]:
    """``preview.png`` of model ``shown`` (the distilled student), ``preview_plain.png`` of the
    plain student and ``curves.png`` of every model in ``names``."""
    from meddet.engine.plots import plot_training_curves

    drawn = steps.guard("drawing the preview", preview, Path(models[shown]["checkpoint"]),
                        root, out / "preview.png", n=plan.preview_images,
                        device=torch.device(device))
    drawn["plain"] = steps.guard("drawing the preview", preview,
                                 Path(models[PLAIN_STUDENT]["checkpoint"]), root,
                                 out / "preview_plain.png", n=plan.preview_images,
                                 device=torch.device(device))
    steps.guard("plotting curves", plot_training_curves,
                {n: models[n]["history"] for n in names}, out / "curves.png")
    return drawn


def teacher_cache_key(plan: DemoPlan, *, seed: int, device: str, pretrained: str) -> str | None:
    """The teacher-cache key of a run (:func:`meddet.demo.cache.teacher_key`), or ``None`` for
    a plan whose teachers are not kept (the pipeline check)."""
    from meddet.config import load_config

    if not cache.cacheable(plan):
        return None
    return cache.teacher_key(plan, seed=seed, device=device, pretrained=pretrained,
                             teachers=TEACHERS,
                             recipe=load_config(steps.RECIPE).model_dump(mode="json"))


def cached_teachers(plan: str | DemoPlan, *, seed: int, device: str,
                    pretrained: str) -> Path | None:
    """The cache entry a run with these settings would reuse, if there is one (the data and
    initial weights are checked again once the run has made its data)."""
    key = teacher_cache_key(resolve_plan(plan), seed=seed, device=device, pretrained=pretrained)
    return cache.lookup(key) if key else None


def run_demo(
    out_dir: str | os.PathLike,
    *,
    plan: str | DemoPlan = "full",
    seed: int = 0,
    students: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
    pretrained: str = "none",
    reuse_teachers: bool = True,
    console: Any = None,
) -> dict[str, Any]:
    """Run the whole paper at reduced scale: data, teachers, distillation, baseline, eval,
    benchmark, report.

    Args:
        out_dir: the run directory (created); ``data/``, ``teachers/<name>/``,
            ``students/<name>/`` and the report files go there.
        plan: ``"full"``, ``"quick"`` or a :class:`DemoPlan`.
        seed: seed of the data set and of every training run.
        students: zoo names of the distilled students (default :func:`default_students`).
        device: ``cpu`` or ``cuda``.
        threads: torch CPU threads during the run (default ``$OMP_NUM_THREADS`` when set, else
            ``min(2, os.cpu_count())``), restored afterwards.
        pretrained: backbone initialisation of every model: ``none`` (random), ``auto``
            (torchvision's ImageNet weights where they can be had, else random) or
            ``imagenet`` (those weights, else an error); see :mod:`meddet.models.pretrained`.
        reuse_teachers: take the teachers from the cache (:mod:`meddet.demo.cache`) when an
            earlier run with the same plan, data, seed, device, initial weights and package
            version left them there; ``False`` trains them again (and replaces the entry).
            Trained teachers are always kept there, except by the one-iteration quick plan.
        console: a ``rich.console.Console`` for progress; ``None`` runs silently.

    Returns:
        The content of ``results.json``: ``{"plan", "seed", "students", "teachers_cached"
        (the cache entry the teachers came from, or ``None``), "machine",
        "expected_s", "seconds", "elapsed_s", "models": {name: {"role", "checkpoint", "run_dir",
        "test": metrics, "bench": row, "history"}}, "bench", "table1", "table2", "preview",
        "files", "notes"}``.

    Raises:
        MedDetError: unknown plan or student, unwritable output folder, or a failing step
            (its message names the step).
    """
    p = resolve_plan(plan)
    students = check_students(students, p)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDetError(f"cannot create demo folder {out}: {exc.strerror}") from exc

    threads = threads if threads is not None else _default_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    key = teacher_cache_key(p, seed=seed, device=device, pretrained=pretrained)
    entry = cache.lookup(key) if key and reuse_teachers else None
    expected = estimate_seconds(p, students, cached_teachers=entry is not None)
    clock = _Clock(expected, console)
    machine = _machine(threads)
    root = out / "data"
    names = [*TEACHERS, PLAIN_STUDENT, *students]
    init = steps.guard("looking for ImageNet weights", initial_weights, names, pretrained)
    if console is not None:
        console.print(initial_weights_line(init, pretrained))
    where = {"plan": p, "root": root, "out": out, "seed": seed, "device": device,
             "console": console, "pretrained": pretrained}
    models: dict[str, dict[str, Any]] = {}
    try:
        clock.run("synth", f"synthesise CDH-MRI data: {p.num_train}/{p.num_val}/{p.num_test} "
                  f"images at {max(128, p.img_size)} px -> {root}", steps.synthesise, root, p,
                  seed=seed, console=console)
        fingerprint = cache.data_fingerprint(root) if key else ""
        cached = (steps.guard("reading the teacher cache", cache.restore, entry, out,
                              fingerprint=fingerprint, initial_weights=init)
                  if entry is not None else None)
        if entry is not None and cached is None:
            _say(console, f"The cached teachers in {entry} were trained on other data or from "
                 "other initial weights: training them again.")
            clock.expected.update({k: v for k, v in estimate_seconds(p, students).items()
                                   if k.startswith("pretrain ")})
        for t in TEACHERS:
            if cached is not None:
                models[t] = clock.run(f"pretrain {t}", f"teacher {t}: reused from the cache "
                                      f"({entry})", cached.__getitem__, t)
                continue
            models[t] = clock.run(
                f"pretrain {t}", f"pretrain teacher {t} ({p.iters(p.teacher_epochs)} "
                f"iterations of batch {p.batch_size} at {p.train_size} px)",
                steps.train, t, "teacher", p.teacher_epochs, **where)
        if key and cached is None:
            try:
                kept = cache.store(key, {t: models[t] for t in TEACHERS},
                                   fingerprint=fingerprint, initial_weights=init)
                _say(console, f"Kept the trained teachers in {kept}: a later `meddet demo` with "
                     "the same plan and data reuses them (--retrain-teachers trains them again).")
            except OSError as exc:
                _say(console, f"Could not keep the teachers in the cache {cache.cache_root()} "
                     f"({exc.strerror or exc}); set {cache.CACHE_ENV} to a writable folder to "
                     "reuse them in a later run.")
        teacher_ckpts = [models[t]["checkpoint"] for t in TEACHERS]
        for s in students:
            models[s] = clock.run(
                f"distill {s}", f"distill student {s} from {', '.join(TEACHERS)} "
                f"(method meddet, {p.iters(p.student_epochs)} iterations)",
                steps.distill_student, s, teacher_ckpts, **where)
        models[PLAIN_STUDENT] = clock.run(
            f"train {PLAIN_STUDENT}", f"train the plain student {PLAIN_STUDENT} without "
            f"teachers ({p.iters(p.student_epochs)} iterations)",
            steps.train, PLAIN_STUDENT, "baseline", p.student_epochs, **where)

        test = clock.run("evaluate", f"evaluate {len(names)} models on the test split "
                         f"({p.num_test} images)", steps.evaluate,
                         {n: models[n]["checkpoint"] for n in names}, root, device=device,
                         console=console)
        for n in names:
            models[n]["test"] = test[n]
        bench = clock.run("benchmark", f"benchmark {len(names)} models (params, GFLOPs at "
                          f"{PAPER_IMG_SIZE} px, FPS at {p.img_size} px)", steps.guard,
                          "benchmarking", steps.benchmark, names, p, device=device,
                          console=console)
        for n in names:
            models[n]["bench"] = bench["models"][n]
        drawn = clock.run("report", "write results.md, results.json, curves.png and the previews",
                          _report, out, root, models, names, students[0], p, device)
    finally:
        torch.set_num_threads(old_threads)

    result: dict[str, Any] = {
        "preview": drawn,
        "plan": dataclasses.asdict(p),
        "seed": seed,
        "teachers_cached": str(entry) if cached is not None else None,
        "pretrained": pretrained,
        "initial_weights": init,
        "students": students,
        "teachers": list(TEACHERS),
        "plain_student": PLAIN_STUDENT,
        "machine": machine,
        "expected_s": {k: round(v, 1) for k, v in expected.items()},
        "seconds": dict(clock.seconds),
        "elapsed_s": round(clock.elapsed(), 2),
        "models": models,
        "bench": {k: v for k, v in bench.items() if k != "models"},
        "out_dir": str(out),
        "files": {"results_md": "results.md", "results_json": "results.json",
                  "curves": "curves.png", "preview": "preview.png",
                  "preview_plain": "preview_plain.png", "data": "data",
                  **{n: str(Path(m["run_dir"]).relative_to(out)) for n, m in models.items()}},
        "notes": [
            scale_note(p),
            *([f"teachers reused from the cache ({entry}), trained by an earlier run with the "
               "same plan, data and package version; --retrain-teachers trains them again"]
              if cached is not None else []),
            ("the paper's setting: meddet pretrain-teacher / distill --config paper (512 px, "
             "mmdetection's 12-epoch GFL schedule) on a GPU, on the private CDH-1848 data"),
            ("FPS: random-weight models, batch 1, forward + post-processing; GFLOPs and "
             f"parameters at {PAPER_IMG_SIZE} px"),
        ],
    }
    result.update(build_tables(result))
    try:
        atomic_write_text(out / "results.md", format_tables(result))
        atomic_write_json(out / "results.json", _json_safe(result))
    except OSError as exc:
        raise MedDetError(f"cannot write the demo results to {out}: {exc.strerror}") from exc
    return result


def _say(console: Any, text: str) -> None:
    if console is not None:
        from rich.markup import escape

        console.print(escape(text))


def initial_weights(names: Sequence[str], pretrained: str) -> dict[str, str]:
    """Where each model's backbone starts from under ``pretrained``: ``"imagenet"`` or
    ``"random"``, with the reason after a colon when ``auto`` found no weights (downloading
    them into torchvision's cache when there is a network, so that training finds them).

    Raises:
        MedDetError: ``pretrained="imagenet"`` and some backbone has no weights to be had.
    """
    from meddet.models import DETECTORS
    from meddet.models.pretrained import resolve_pretrained

    out: dict[str, str] = {}
    for name in names:
        backbone = DETECTORS[name].keywords["backbone_name"]
        weights = resolve_pretrained(backbone, pretrained)
        if weights.path is not None:
            out[name] = "imagenet"
        elif pretrained in (None, "none"):
            out[name] = "random"
        else:
            out[name] = "random: " + weights.note.split("(", 1)[-1].rstrip(")")
    return out


def _json_safe(obj: Any) -> Any:
    # History rows and metrics may hold NaN (no evaluation that epoch); JSON has no NaN.
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return json.loads(json.dumps(obj, default=str))
