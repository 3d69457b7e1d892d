"""``meddet demo``: the whole paper, end to end, at a size a 2-core CPU finishes in minutes.

:func:`run_demo` chains the library's own steps, in one process:

1. synthesise a CDH-MRI data set (:func:`meddet.data.generate_dataset`);
2. pretrain the three teachers GFL R50 / R101 / R152 (:func:`meddet.engine.defaults.pretrain`);
3. distil each MedDet student from them (:func:`meddet.distill.trainer.distill`, method
   ``meddet``: AFA + LWFF + AATM);
4. train the plain student (``gfl_mbv2``, Table I's "GFL MobileNetV2", no teachers);
5. evaluate every model on the test split (pycocotools, :func:`meddet.engine.evaluate_coco`);
6. benchmark them (:func:`meddet.benchmark.benchmark_models`: parameters, GFLOPs at the paper's
   512 px, FPS at the demo size);
7. write ``results.md``, ``results.json``, ``curves.png`` and ``preview.png`` (predictions of the
   distilled student on test images, ground truth in white).

The image size and the schedule are reduced (:data:`PLANS`): the numbers show that the
pipeline runs and how the models compare in cost, not the paper's accuracy; full-scale
training is the ``paper`` config (512 px, mmdetection's 12-epoch GFL schedule) on a GPU with
the private CDH-1848 data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meddet._io import atomic_save, atomic_write_json, atomic_write_text
from meddet.errors import MedDetError
from meddet.geometry import check_img_size

__all__ = ["PLAIN_STUDENT", "PLANS", "TEACHERS", "DemoPlan", "build_tables", "check_students",
           "default_students", "estimate_seconds", "format_tables", "run_demo"]

TEACHERS = ("gfl_r50", "gfl_r101", "gfl_r152")
#: Table I's "GFL MobileNetV2": the student's architecture without nmODE² or teachers.
PLAIN_STUDENT = "gfl_mbv2"
#: The paper measures parameters and GFLOPs at this input size (Table II).
PAPER_IMG_SIZE = 512

DISPLAY_NAMES = {
    "gfl_r50": "GFL ResNet50 (teacher)",
    "gfl_r101": "GFL ResNet101 (teacher)",
    "gfl_r152": "GFL ResNet152 (teacher)",
    "gfl_mbv2": "GFL MobileNetV2 (plain student)",
    "meddet": "MedDet (distilled student)",
    "meddet_lite": "MedDet-Lite (distilled student)",
}

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


def _resolve_plan(plan: str | DemoPlan) -> DemoPlan:
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
    p = _resolve_plan(plan)
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


class _Clock:
    """Elapsed seconds per step, and an ETA rescaled by how fast the machine has been so far."""

    def __init__(self, expected: dict[str, float], console: Any) -> None:
        self.expected = expected
        self.console = console
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.index = 0

    def run(self, step: str, title: str, fn: Callable[[], Any]) -> Any:
        self.index += 1
        exp = self.expected.get(step, 0.0)
        if self.console is not None:
            self.console.rule(f"[bold][{self.index}/{len(self.expected)}] {title}[/]  "
                              f"(about {_fmt_dur(exp)})", align="left")
        t = time.perf_counter()
        result = fn()
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


def _train_cfg(plan: DemoPlan, root: Path, *, model: str, epochs: int, seed: int,
               device: str, distill: dict[str, Any] | None = None) -> Any:
    from meddet.config import load_config

    overrides: dict[str, Any] = {
        "data": {"root": str(root), "img_size": plan.img_size, "workers": 0},
        "model": {"name": model},
        "train": {"epochs": epochs, "batch_size": plan.batch_size, "lr": plan.lr,
                  "base_batch_size": plan.batch_size, "warmup_iters": plan.warmup_iters,
                  "lr_steps": [0.75, 0.9], "max_iters": plan.max_iters, "seed": seed,
                  "eval_every": plan.eval_every, "device": device},
    }
    if distill is not None:
        overrides["distill"] = distill
    return load_config(None, overrides)


def _evaluate(checkpoint: Path, root: Path, device: torch.device) -> dict[str, Any]:
    from meddet.data import CocoDetection
    from meddet.engine import build_model_from_checkpoint, evaluate_coco, predict_dataset

    model, meta = build_model_from_checkpoint(checkpoint, device)
    ds = CocoDetection(root, "test", img_size=int(meta["img_size"]), train=False)
    results = predict_dataset(model, ds, device=device, batch_size=4)
    metrics = evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids, img_ids=list(ds.ids))
    metrics["checkpoint"] = str(checkpoint)
    return metrics


def _benchmark(names: Sequence[str], plan: DemoPlan, device: str, progress: Any) -> dict[str, Any]:
    """Parameters, GFLOPs (at 512 px) and FPS (at the demo size) per model, one at a time."""
    from meddet.benchmark import benchmark_models, count_gflops
    from meddet.models import build_detector

    rows: dict[str, Any] = {}
    info: dict[str, Any] = {}
    task = progress.add_task("benchmark", total=len(names)) if progress is not None else None
    for name in names:
        res = benchmark_models([name], img_size=plan.img_size, device=device,
                               warmup=plan.bench_warmup, iters=plan.bench_iters)
        row = dict(res["models"][0])
        if PAPER_IMG_SIZE % plan.img_size == 0 and plan.img_size % 128 == 0:
            # Every counted op scales with the feature-map area, and all five pyramid levels
            # stay integral when the side is a multiple of 128: the count at 512 px is exactly
            # (512 / size)^2 times this one (docs/table2.md; tests/test_table2.py pins it).
            row["gflops_512"] = row["gflops"] * (PAPER_IMG_SIZE / plan.img_size) ** 2
        else:
            torch.manual_seed(0)
            row["gflops_512"] = count_gflops(build_detector(name).eval(), PAPER_IMG_SIZE)
        row["gflops_demo"] = row.pop("gflops")
        rows[name] = row
        info = {k: v for k, v in res.items() if k != "models"}
        if task is not None:
            progress.advance(task)
    return {**info, "models": rows}


def _preview(checkpoint: Path, root: Path, out: Path, *, n: int, device: torch.device,
             score_thr: float = 0.05, max_boxes: int = 8) -> dict[str, Any]:
    """A grid of test images with the model's top detections (coloured) and ground truth
    (white); at reduced training the scores are low, hence the low threshold."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    from meddet.data import CocoDetection
    from meddet.engine import build_model_from_checkpoint
    from meddet.inference import Predictor
    from meddet.inference.overlay import render_overlay

    model, meta = build_model_from_checkpoint(checkpoint, device)
    predictor = Predictor(model, meta["class_names"], img_size=int(meta["img_size"]),
                          device=device, score_thr=score_thr)
    ds = CocoDetection(root, "test", img_size=int(meta["img_size"]), train=False)
    count = min(n, len(ds))
    raws = [ds.load_raw(i) for i in range(count)]
    dets = predictor.predict_arrays([r[0] for r in raws])
    tiles = []
    for (img01, gt_boxes, _, rec), det in zip(raws, dets):
        k = min(max_boxes, len(det["scores"]))
        png = render_overlay(img01, det["boxes"][:k], det["scores"][:k], det["labels"][:k],
                             predictor.class_names)
        tile = Image.open(io.BytesIO(png)).convert("RGB")
        zoom = tile.size[0] / img01.shape[1]
        draw = ImageDraw.Draw(tile)
        for box in np.asarray(gt_boxes) * zoom:
            draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
        draw.text((4, tile.size[1] - 14), str(rec["file_name"]), fill=(255, 255, 0))
        tiles.append(tile)
    side = max(t.size[0] for t in tiles)
    cols = min(len(tiles), 4)
    rows = math.ceil(len(tiles) / cols)
    grid = Image.new("RGB", (cols * side, rows * side))
    for i, t in enumerate(tiles):
        grid.paste(t, ((i % cols) * side, (i // cols) * side))
    atomic_save(out, lambda fh: grid.save(fh, format="PNG"))
    return {"file": out.name, "model": meta["model_name"], "images": count,
            "score_thr": score_thr, "detections_shown": [min(max_boxes, len(d["scores"]))
                                                         for d in dets]}


def _plot_curves(histories: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in histories.items():
        epochs = [int(r["epoch"]) for r in rows]
        ax_l.plot(epochs, [float(r.get("loss") or math.nan) for r in rows], marker="o",
                  label=name)
        pts = [(int(r["epoch"]), float(r["mAP50"])) for r in rows
               if isinstance(r.get("mAP50"), (int, float))]
        if pts:
            ax_m.plot(*zip(*pts), marker="o", label=name)
    ax_l.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    ax_m.set(xlabel="epoch", ylabel="val mAP50", title="validation mAP50", ylim=(0, 1))
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_save(out, lambda fh: fig.savefig(fh, format="png", dpi=110))
    finally:
        plt.close(fig)


def _num(v: Any, spec: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or v < 0)):
        return "-"
    return format(v, spec)


def build_tables(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rows of Table I (accuracy) and Table II (accuracy and cost) from a demo result."""
    from meddet.benchmark import TABLE2_PAPER

    models = result["models"]
    students = result["students"]
    t1_names = [PLAIN_STUDENT, *TEACHERS, *students]
    table1 = [{"model": n, "name": DISPLAY_NAMES.get(n, n),
               **{k: models[n]["test"][k] for k in ("mAP", "mAP50", "recall")}}
              for n in t1_names if n in models]
    table2 = []
    for n in [*TEACHERS, *students]:
        if n not in models:
            continue
        b = models[n]["bench"]
        paper = TABLE2_PAPER.get(n)
        table2.append({"model": n, "name": DISPLAY_NAMES.get(n, n),
                       "mAP": models[n]["test"]["mAP"], "recall": models[n]["test"]["recall"],
                       "fps": b["fps"], "params_m": b["params_m"], "gflops": b["gflops_512"],
                       "paper_params_m": paper[0] if paper else None,
                       "paper_gflops": paper[1] if paper else None})
    return {"table1": table1, "table2": table2}


def format_tables(result: dict[str, Any]) -> str:
    """Both tables as Markdown (what ``results.md`` holds, and what the CLI prints)."""
    p = result["plan"]
    t = build_tables(result)
    lines = [
        "# MedDet demo results",
        "",
        f"Reduced scale: synthetic CDH-MRI ({p['num_train']} train / {p['num_val']} val / "
        f"{p['num_test']} test images) at {p['img_size']} px; teachers {p['teacher_epochs']} "
        f"epoch(s), students {p['student_epochs']} epoch(s) of batch {p['batch_size']}"
        + (f", capped at {p['max_iters']} iteration(s) per model" if p["max_iters"] else "")
        + ". These numbers demonstrate the pipeline; they are **not comparable** with the "
        "paper's CDH-1848 results (full-scale training: `--config paper`, 512 px, 12 epochs, "
        "on a GPU).",
        "",
        f"## Table I: detection on the synthetic test split ({p['num_test']} images)",
        "",
        "| model | mAP | mAP50 | recall |",
        "|---|---:|---:|---:|",
    ]
    for r in t["table1"]:
        lines.append(f"| {r['name']} | {_num(r['mAP'])} | {_num(r['mAP50'])} | "
                     f"{_num(r['recall'])} |")
    bench = result["bench"]
    lines += [
        "",
        (f"## Table II: accuracy and cost (FPS at {p['img_size']} px on {bench['device']}, "
         f"{bench['threads']} threads, batch 1, random weights; parameters and GFLOPs at "
         f"{PAPER_IMG_SIZE} px like the paper)"),
        "",
        "| model | mAP | recall | FPS | params (M) | GFLOPs | paper params (M) | paper GFLOPs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in t["table2"]:
        lines.append(f"| {r['name']} | {_num(r['mAP'])} | {_num(r['recall'])} | "
                     f"{_num(r['fps'], '.1f')} | {_num(r['params_m'], '.2f')} | "
                     f"{_num(r['gflops'], '.2f')} | {_num(r['paper_params_m'], '.2f')} | "
                     f"{_num(r['paper_gflops'], '.2f')} |")
    lines += [
        "",
        f"GFLOPs: {bench['flops']}, backbone + FPN + head. FPS: forward + post-processing.",
        "",
        "Time per step (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())
        + f"; total {result['elapsed_s']:.0f} s on {result['machine']['cpu']} "
        f"({result['machine']['threads']} torch threads, load average "
        f"{result['machine']['load_start']} at the start).",
        "",
    ]
    return "\n".join(lines)


def _machine(threads: int) -> dict[str, Any]:
    from meddet.device import device_name  # the same CPU name `meddet bench` reports

    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    return {"cpu": device_name(torch.device("cpu")), "cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "load_start": load}


def run_demo(
    out_dir: str | os.PathLike,
    *,
    plan: str | DemoPlan = "full",
    seed: int = 0,
    students: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
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
        console: a ``rich.console.Console`` for progress; ``None`` runs silently.

    Returns:
        The content of ``results.json``: ``{"plan", "seed", "students", "machine",
        "expected_s", "seconds", "elapsed_s", "models": {name: {"role", "checkpoint", "run_dir",
        "test": metrics, "bench": row, "history"}}, "bench", "table1", "table2", "preview",
        "files", "notes"}``.

    Raises:
        MedDetError: unknown plan or student, unwritable output folder, or a failing step
            (its message names the step).
    """
    from meddet.runs import write_run_config

    p = _resolve_plan(plan)
    students = check_students(students)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDetError(f"cannot create demo folder {out}: {exc.strerror}") from exc

    if threads is None:
        # OMP_NUM_THREADS, when set, is the caller's decision (CI sets 1 on a loaded box).
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else min(2, os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    expected = estimate_seconds(p, students)
    clock = _Clock(expected, console)
    machine = _machine(threads)
    dev = torch.device(device)
    root = out / "data"
    models: dict[str, dict[str, Any]] = {}
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        def bar() -> Any:
            if console is None:
                return None
            return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            console=console, transient=True)

        def synth() -> None:
            from meddet.data import generate_dataset

            prog = bar()
            task = prog.add_task("images", total=p.num_train + p.num_val + p.num_test) \
                if prog else None
            if prog:
                prog.start()
            try:
                generate_dataset(root, num_train=p.num_train, num_val=p.num_val,
                                 num_test=p.num_test, size=max(128, p.img_size), seed=seed,
                                 overwrite=True,
                                 progress=(lambda d, _t: prog.update(task, completed=d))
                                 if prog else None)
            finally:
                if prog:
                    prog.stop()

        clock.run("synth", f"synthesise CDH-MRI data: {p.num_train}/{p.num_val}/{p.num_test} "
                  f"images at {max(128, p.img_size)} px -> {root}", synth)

        def train_one(name: str, role: str, epochs: int) -> Callable[[], None]:
            def fn() -> None:
                from meddet.engine.defaults import pretrain

                cfg = _train_cfg(p, root, model=name, epochs=epochs, seed=seed, device=device)
                run_dir = out / ("teachers" if role == "teacher" else "students") / name
                run_dir.mkdir(parents=True, exist_ok=True)
                write_run_config(run_dir, cfg.model_dump(mode="json"), "demo")
                res = _step(f"training {name}", lambda: pretrain(cfg, run_dir, console=console))
                models[name] = {"role": role, "run_dir": str(run_dir), "checkpoint": res["best"],
                                "history": res["history"], "iters": res["iters"]}
            return fn

        for t in TEACHERS:
            clock.run(f"pretrain {t}", f"pretrain teacher {t} ({p.iters(p.teacher_epochs)} "
                      f"iterations of batch {p.batch_size} at {p.img_size} px)",
                      train_one(t, "teacher", p.teacher_epochs))

        teacher_ckpts = [models[t]["checkpoint"] for t in TEACHERS]
        for s in students:
            def distill_fn(s: str = s) -> None:
                from meddet.distill.trainer import distill

                cfg = _train_cfg(p, root, model=s, epochs=p.student_epochs, seed=seed,
                                 device=device, distill={"method": "meddet", "student": s})
                run_dir = out / "students" / s
                run_dir.mkdir(parents=True, exist_ok=True)
                write_run_config(run_dir, {**cfg.model_dump(mode="json"),
                                           "teachers": teacher_ckpts}, "demo")
                res = _step(f"distilling {s}", lambda: distill(
                    cfg, run_dir, teachers=teacher_ckpts, console=console))
                models[s] = {"role": "student", "run_dir": str(run_dir),
                             "checkpoint": res["student"], "history": res["history"],
                             "iters": res["iters"], "time_split": res["time_split"]}

            clock.run(f"distill {s}", f"distill student {s} from {', '.join(TEACHERS)} "
                      f"(method meddet, {p.iters(p.student_epochs)} iterations)", distill_fn)

        clock.run(f"train {PLAIN_STUDENT}", f"train the plain student {PLAIN_STUDENT} without "
                  f"teachers ({p.iters(p.student_epochs)} iterations)",
                  train_one(PLAIN_STUDENT, "baseline", p.student_epochs))

        names = [*TEACHERS, PLAIN_STUDENT, *students]

        def evaluate_all() -> None:
            prog = bar()
            task = prog.add_task("evaluate", total=len(names)) if prog else None
            if prog:
                prog.start()
            try:
                for n in names:
                    models[n]["test"] = _step(f"evaluating {n}", lambda n=n: _evaluate(
                        Path(models[n]["checkpoint"]), root, dev))
                    if prog:
                        prog.advance(task)
            finally:
                if prog:
                    prog.stop()

        clock.run("evaluate", f"evaluate {len(names)} models on the test split "
                  f"({p.num_test} images)", evaluate_all)

        bench: dict[str, Any] = {}

        def bench_all() -> None:
            prog = bar()
            if prog:
                prog.start()
            try:
                bench.update(_step("benchmarking", lambda: _benchmark(names, p, device, prog)))
            finally:
                if prog:
                    prog.stop()
            for n in names:
                models[n]["bench"] = bench["models"][n]

        clock.run("benchmark", f"benchmark {len(names)} models (params, GFLOPs at "
                  f"{PAPER_IMG_SIZE} px, FPS at {p.img_size} px)", bench_all)

        result: dict[str, Any] = {}

        def report() -> None:
            preview = _step("drawing the preview", lambda: _preview(
                Path(models[students[0]]["checkpoint"]), root, out / "preview.png",
                n=p.preview_images, device=dev))
            _step("plotting curves", lambda: _plot_curves(
                {n: models[n]["history"] for n in names}, out / "curves.png"))
            result.update(preview=preview)

        clock.run("report", "write results.md, results.json, curves.png, preview.png", report)
    finally:
        torch.set_num_threads(old_threads)

    result.update({
        "plan": dataclasses.asdict(p),
        "seed": seed,
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
                  "curves": "curves.png", "preview": "preview.png", "data": "data",
                  **{n: str(Path(m["run_dir"]).relative_to(out)) for n, m in models.items()}},
        "notes": [
            ("reduced image size and schedule: a demonstration of the pipeline; the numbers "
             "are not comparable with the paper's CDH-1848 results"),
            ("full-scale training: meddet pretrain-teacher / distill --config paper (512 px, "
             "mmdetection's 12-epoch GFL schedule) on a GPU"),
            ("FPS: random-weight models, batch 1, forward + post-processing; GFLOPs and "
             f"parameters at {PAPER_IMG_SIZE} px"),
        ],
    })
    result.update(build_tables(result))
    try:
        atomic_write_text(out / "results.md", format_tables(result))
        atomic_write_json(out / "results.json", _json_safe(result))
    except OSError as exc:
        raise MedDetError(f"cannot write the demo results to {out}: {exc.strerror}") from exc
    return result


def _step(what: str, fn: Callable[[], Any]) -> Any:
    """Run one piece of the demo; a user-facing error says which piece failed."""
    try:
        return fn()
    except MedDetError as exc:
        raise MedDetError(f"demo failed while {what}: {exc}") from exc


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
