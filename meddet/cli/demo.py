"""`meddet demo`: the whole paper end to end on synthetic data, at a CPU-sized scale.

Thin: makes the run directory, calls :func:`meddet.demo.run_demo` and prints the two tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meddet.cli._common import emit_json, human_console, parse_csv_list

COMMAND = "demo"


def _cell(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or math.isnan(v) or v < 0 else format(v, spec)


def demo(
    out: Path | None = typer.Option(None, "--out", help="Run directory (default "
                                       "runs/demo/exp*, auto-numbered)."),
    quick: bool = typer.Option(False, "--quick", help="A minute-scale smoke run: a handful of "
                               "images, one iteration per model (for CI and a first look)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data and of every training run."),
    students: str | None = typer.Option(None, "--students", help="Distilled students, "
                                           "comma-separated zoo names (default: meddet on the "
                                           "CPU; meddet and meddet_lite on a GPU)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available, else "
                               "cpu), cpu, cuda or cuda:N; a GPU runs the larger GPU plan."),
    pretrained: str = typer.Option("auto", "--pretrained", help="auto: torchvision's ImageNet "
                                   "weights for every backbone that has them (its cache, or a "
                                   "download), random weights otherwise; none: random weights "
                                   "for all; imagenet: ImageNet weights or an error."),
    retrain_teachers: bool = typer.Option(False, "--retrain-teachers", help="Train the "
                                          "teachers even when an earlier run with the same "
                                          "plan and data left them in the cache "
                                          "($MEDDET_CACHE, else ~/.cache/meddet)."),
    json_dest: str | None = typer.Option(None, "--json", metavar="PATH|-",
                                            help="Also write results.json here ('-' = stdout)."),
) -> None:
    """Run the whole paper on synthetic CDH-MRI data at reduced size: synthesise data,
    pretrain the GFL R50/R101/R152 teachers, distil MedDet, train the plain student, evaluate,
    benchmark, and print Tables I and II (also in results.md / results.json).

    About 14 minutes on 2 CPU cores (docs/demo.md); a GPU runs the study's recipe.

    --quick: one minute, every step once."""
    from meddet.demo import PLANS, check_students, estimate_seconds, run_demo, scale_note
    from meddet.demo.run import cached_teachers
    from meddet.device import resolve_device
    from meddet.errors import MedDetError
    from meddet.runs import discard_if_failed, first_missing, new_run_dir, run_dir_target

    con = human_console(json_dest)
    if pretrained not in ("auto", "none", "imagenet"):
        raise MedDetError(f"--pretrained {pretrained!r}: use auto, none or imagenet")
    dev = resolve_device(device)
    plan = PLANS["quick" if quick else ("gpu" if dev.type == "cuda" else "full")]
    names = check_students(parse_csv_list(students, "--students") if students is not None
                           else None, plan)
    entry = None if retrain_teachers else cached_teachers(plan, seed=seed, device=str(dev),
                                                           pretrained=pretrained)
    expected = sum(estimate_seconds(plan, names, cached_teachers=entry is not None).values())
    created = out is None or not out.exists()
    made = first_missing(run_dir_target(COMMAND, out))
    run_dir = new_run_dir(COMMAND, out)
    con.print(f"[bold]meddet demo{' --quick' if quick else ''}[/]: the whole MedDet pipeline on "
              f"synthetic CDH-MRI data -> {escape(str(run_dir))}")
    where = "2 idle CPU cores" if plan.device == "cpu" else "one H100/H200-class GPU"
    con.print(f"Expected time: about {max(1, round(expected / 60))} minute(s) on {where} "
              "(longer on a busy machine; each step prints its own estimate and the time left).")
    con.print(f"Scale ({plan.name} plan, {dev}): {plan.scale_line()}. {scale_note(plan)}")
    if entry is not None:
        con.print(f"Teachers: reusing those an earlier run trained ({escape(str(entry))}); "
                  "--retrain-teachers trains them again.")
    # A user error found before the first output (e.g. no ImageNet weights) leaves no run.
    with discard_if_failed(run_dir, created=created, made=made, outputs=()):
        result = run_demo(run_dir, plan=plan, seed=seed, students=names, device=str(dev),
                          pretrained=pretrained, reuse_teachers=not retrain_teachers,
                          console=con)

    t1 = Table(title="Table I: detection on the synthetic test split", box=box.SIMPLE_HEAD,
               caption=f"{plan.num_test} test images; {plan.scale_line()}. {scale_note(plan)}",
               caption_justify="left")
    t1.add_column("model")
    for c in ("mAP", "mAP50", "AR100", "recall@.5"):
        t1.add_column(c, justify="right")
    for r in result["table1"]:
        t1.add_row(r["name"], _cell(r["mAP"]), _cell(r["mAP50"]), _cell(r.get("AR100")),
                   _cell(r["recall"]))
    t2 = Table(title=f"Table II: accuracy and cost (FPS at {plan.img_size} px, "
               "params/GFLOPs at 512 px)", box=box.SIMPLE_HEAD,
               caption="Parameters and GFLOPs are the models' own, comparable with the paper's "
               f"Table II; FPS is this machine's ({dev}, batch 1, random weights).",
               caption_justify="left")
    t2.add_column("model")
    for c in ("mAP", "recall@.5", "FPS", "params M", "GFLOPs", "paper params M", "paper GFLOPs"):
        t2.add_column(c, justify="right")
    for r in result["table2"]:
        t2.add_row(r["name"], _cell(r["mAP"]), _cell(r["recall"]), _cell(r["fps"], ".1f"),
                   _cell(r["params_m"], ".2f"), _cell(r["gflops"], ".2f"),
                   _cell(r["paper_params_m"], ".2f"), _cell(r["paper_gflops"], ".2f"))
    wide = con if con.is_terminal else Console(file=con.file, width=max(con.width, 120),
                                               highlight=False)  # pipes get 80 columns
    wide.print(t1)
    wide.print(t2)
    for note in result["notes"]:
        con.print(f"note: {escape(note)}")
    con.print(f"finished in {result['elapsed_s'] / 60:.1f} min; wrote results.md, results.json, "
              f"curves.png, preview.png, preview_plain.png and the run directories to "
              f"{escape(str(run_dir))}")
    emit_json(_load_json(run_dir / "results.json"), json_dest)


def _load_json(path: Path) -> object:
    import json

    return json.loads(path.read_text(encoding="utf-8"))
