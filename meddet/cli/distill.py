"""`meddet distill`: train the student from frozen teachers (MedDet, or a Table I baseline).

Thin: resolves the config (file < flags), makes the run directory, calls
:func:`meddet.distill.trainer.distill` and prints a summary.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from meddet.api import default_config
from meddet.cli import _options as opt
from meddet.cli._common import emit_json, human_console, parse_csv_list
from meddet.config import Config, load_config, load_run_config
from meddet.errors import MedDetError

COMMAND = "distill"
RUNS_ROOT = Path("runs")


def _resume_config(ckpt_path: Path, flags: dict[str, Any]) -> Config:
    """The resumed run's own config.yaml with the given flags on top."""
    return load_run_config(ckpt_path.parent / "config.yaml", flags, made_by="meddet distill")


def distill(
    teachers: str | None = typer.Option(
        None, "--teachers", help="Teacher checkpoints from `meddet pretrain-teacher`, "
        "comma-separated (the paper: GFL R50, R101, R152)."),
    data: Path | None = opt.data_option(),
    student: str | None = typer.Option(None, "--student", help="Zoo name of the student "
                                          "(default meddet)."),
    method: str | None = typer.Option(
        None, "--method", help="meddet (AFA + LWFF + AATM; default), a Table I baseline "
        "(mgd, ld, fgd) or none (the student alone)."),
    fusion: str | None = typer.Option(None, "--fusion", help="lwff | sum | concat (Table V)."),
    no_aatm: bool = typer.Option(False, "--no-aatm", help="Drop the adversarial auxiliary teacher "
                                 "module (Table IV)."),
    per_teacher_alpha: bool | None = typer.Option(
        None, "--per-teacher-alpha/--shared-alpha", help="LWFF: one α module per teacher."),
    nmode: str | None = opt.nmode_option("Student nmODE² placement", "; Table III"),
    sigma: float | None = typer.Option(None, "--sigma", help="σ of eq. 14 (detection weight)."),
    tau: float | None = typer.Option(None, "--tau", help="τ of eq. 14 (distillation weight)."),
    teacher_img_size: int | None = typer.Option(
        None, "--teacher-img-size", help="Run the teachers at this size (meddet method)."),
    teacher_cache: bool | None = typer.Option(
        None, "--teacher-cache/--no-teacher-cache", help="Keep the teachers' outputs in memory "
        "per training image; augmentation is then drawn from --teacher-cache-variants fixed "
        "variants per image (default: off)."),
    teacher_cache_variants: int | None = typer.Option(
        None, "--teacher-cache-variants", min=1, help="Augmentation variants per image with "
        "--teacher-cache (default 2)."),
    config: str | None = opt.config_option(),
    epochs: int | None = opt.epochs_option(),
    max_iters: int | None = opt.max_iters_option(),
    cpu_amp: bool | None = opt.cpu_amp_option(),
    img_size: int | None = opt.img_size_option(),
    batch_size: int | None = opt.batch_size_option(),
    lr: float | None = opt.lr_option(),
    workers: int | None = opt.workers_option(),
    eval_every: int | None = opt.eval_every_option(),
    checkpoint_every: int | None = opt.checkpoint_every_option(),
    checkpoint_every_iters: int | None = opt.checkpoint_every_iters_option(),
    resume: str | None = typer.Option(None, "--resume", metavar="RUN_DIR|CKPT",
                                         help="Continue a distillation run (its teachers "
                                         "are read from the checkpoint unless given)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory "
                                       "(default runs/distill/<method>*)."),
    device: str | None = opt.device_option(),
    seed: int | None = opt.seed_option(),
    pretrained: str | None = opt.pretrained_option(),
    tensorboard: bool | None = opt.tensorboard_option(),
    json_dest: str | None = typer.Option(None, "--json", metavar="PATH|-",
                                            help="Write the summary as JSON ('-' = stdout)."),
) -> None:
    """Distil a small student from frozen teachers: MedDet (AFA + LWFF + AATM) or a baseline.

    Writes config.yaml, results.csv, last.pt / best.pt (full state for --resume), student.pt
    (plain student for `meddet eval` / `bench` / `predict`), curves.png and train.log.

    Without --config it trains with the recipe for the device, as pretrain-teacher does
    (cpu-crop on a CPU, the demo's GPU recipe on CUDA), and says which.
    """
    from meddet.cli.train import RUN_START_OUTPUTS, check_resume_checkpoint
    from meddet.distill.methods import get_method
    from meddet.distill.trainer import distill as run_distill
    from meddet.engine.defaults import require_split, resolve_resume
    from meddet.engine.tensorboard import require_tensorboard, tensorboard_logging
    from meddet.runs import (
        discard_if_failed,
        first_missing,
        new_run_dir,
        run_dir_target,
        write_run_config,
    )

    con = human_console(json_dest)
    flags = {"model": {"nmode": nmode, "pretrained": opt.check_pretrained(pretrained)},
             **opt.training_overrides(
        data=data, img_size=img_size, workers=workers, epochs=epochs, batch_size=batch_size,
        lr=lr, max_iters=max_iters, device=device, seed=seed, eval_every=eval_every,
        checkpoint_every=checkpoint_every, checkpoint_every_iters=checkpoint_every_iters,
        cpu_amp=cpu_amp),
        "distill": {"method": method, "student": student, "fusion": fusion,
                    "aatm": False if no_aatm else None, "sigma": sigma, "tau": tau,
                    "per_teacher_alpha": per_teacher_alpha,
                    "teacher_img_size": teacher_img_size, "teacher_cache": teacher_cache,
                    "teacher_cache_variants": teacher_cache_variants}}
    teacher_list = parse_csv_list(teachers, "--teachers")
    notes: list[str] = []
    ckpt_path = None
    if resume is not None:
        if config is not None:
            raise MedDetError("--resume uses the run's own config.yaml; drop --config")
        ckpt_path = resolve_resume(resume)
        check_resume_checkpoint(ckpt_path)
        cfg = _resume_config(ckpt_path, flags)
        run_dir = ckpt_path.parent
    else:
        if config is None:
            config, flags = default_config(flags["train"]["device"], flags)
            notes.append(opt.default_config_line(config, flags["train"]["device"]))
        cfg = load_config(config, flags)
        run_dir = None
    if cfg.data.root is None:
        raise MedDetError("no dataset given; pass --data DATASET_DIR")
    # Unknown methods, missing data and unavailable weights fail before a run directory is made.
    get_method(cfg.distill.method)
    require_tensorboard(tensorboard)
    require_split(cfg.data.root, "train")
    require_split(cfg.data.root, "val")
    if cfg.model.pretrained is not None:
        notes.append(opt.initial_weights_note(cfg.distill.student, cfg.model.pretrained))
    for note in notes:
        con.print(escape(note))
    doc = cfg.model_dump(mode="json")
    guard: Any = contextlib.nullcontext()
    if run_dir is None:
        created = out is None or not out.exists()
        made = first_missing(run_dir_target(COMMAND, out, RUNS_ROOT))
        run_dir = new_run_dir(COMMAND, out, name=cfg.distill.method, root=RUNS_ROOT)
        # Bad teachers or data are found after this point: leave no half-made run behind.
        guard = discard_if_failed(run_dir, created=created, made=made,
                                  outputs=RUN_START_OUTPUTS)
    write_run_config(run_dir, doc, COMMAND)
    with guard, tensorboard_logging(tensorboard):
        summary = run_distill(cfg, run_dir, teachers=teacher_list, resume=ckpt_path, console=con)
    _print_summary(con, summary)
    emit_json({k: v for k, v in summary.items() if k != "history"}, json_dest)


def _print_summary(con: Any, s: dict[str, Any]) -> None:
    table = Table(title="distill")
    for col in ("run", "iters", "best val mAP50", "student.pt", "time"):
        table.add_column(col, justify="left" if col in ("run", "student.pt") else "right")
    best = "-" if s["best_mAP50"] is None else f"{s['best_mAP50']:.4f}"
    table.add_row(s["run_dir"], str(s["iters"]), best, s["student"], f"{s['seconds']:.1f}s")
    con.print(table)
    from meddet.engine.curves import LastQuarter

    if s.get("last_quarter"):
        con.print(LastQuarter.from_dict(s["last_quarter"]).describe())
    split = s["time_split"]
    total = sum(split.values()) or 1.0
    con.print("time split: " + ", ".join(
        f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in
        (("teachers", split["teacher"]), ("student", split["student"]),
         ("discriminator", split["disc"]))))
    cache = s.get("teacher_cache")
    if cache is not None:
        con.print(f"teacher cache: {cache['entries']} image variants, {cache['megabytes']:.1f} MB "
                  f"({cache['megabytes_per_entry']:.2f} MB each), {100 * cache['hit_rate']:.0f}% "
                  f"of the images served from it" + (f", {cache['not_stored']} did not fit"
                                                      if cache["not_stored"] else ""))
