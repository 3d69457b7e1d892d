"""`meddet pretrain-teacher`: train zoo detectors (the teachers, the baselines, the plain student).

Thin: it resolves the config (file < flags), creates one run directory per model, and calls
:func:`meddet.engine.defaults.pretrain`. Under ``torchrun`` every process runs this command;
rank 0 creates the run directory and tells the others where it is.
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
from meddet.cli._common import console, parse_csv_list
from meddet.config import Config, load_config, load_run_config
from meddet.errors import MedDetError

COMMAND = "pretrain-teacher"
RUNS_ROOT = Path("runs")
#: What a training run writes before its first step; a run that stops with only these is
#: taken back (TensorBoard's event file included).
RUN_START_OUTPUTS = ("config.yaml", "train.log", "tensorboard")


def normalize_resume_argv(args: list[str]) -> list[str]:
    """Let ``--resume`` be given without a value (the issue's ``--resume [RUN_DIR|CKPT]``).

    Click options take exactly one value, so a bare ``--resume`` (last argument, or followed by
    another option) becomes ``--resume last``. Call it on argv before Typer parses it.
    """
    out = list(args)
    for i, a in enumerate(out):
        if a == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "last")
            break
    return out


def _latest_run(root: Path) -> Path:
    runs = [p for p in (root / COMMAND).glob("*") if (p / "last.pt").is_file()]
    if not runs:
        raise MedDetError(f"--resume last: no run with a last.pt under {root / COMMAND}; "
                          "pass the run directory or checkpoint to resume")
    return max(runs, key=lambda p: (p / "last.pt").stat().st_mtime)


def _resume_config(ckpt_path: Path, overrides: dict[str, Any]) -> Config:
    """The resumed run's own config.yaml with the given flags on top."""
    check_resume_checkpoint(ckpt_path)
    return load_run_config(ckpt_path.parent / "config.yaml", overrides,
                           made_by="meddet pretrain-teacher")


def check_resume_checkpoint(ckpt_path: Path) -> None:
    """A checkpoint without its run's config.yaml beside it: report a damaged checkpoint as
    such (its own error) before the missing config.yaml.

    Raises:
        MedDetError: the checkpoint cannot be read.
    """
    if not (ckpt_path.parent / "config.yaml").is_file():
        from meddet.engine.checkpoint import load_checkpoint

        load_checkpoint(ckpt_path)


def zoo_list() -> str:
    """The zoo's names, comma-separated, for error messages."""
    from meddet.models import DETECTORS

    return ", ".join(DETECTORS)


def pretrain_teacher(
    model: str | None = typer.Option(
        None, "--model", help="Zoo name, or a comma-separated list (gfl_r50,gfl_r101,gfl_r152) "
        "for one run each."),
    data: Path | None = opt.data_option(),
    config: str | None = opt.config_option(),
    epochs: int | None = opt.epochs_option(),
    batch_size: int | None = opt.batch_size_option(),
    lr: float | None = opt.lr_option(),
    img_size: int | None = opt.img_size_option(),
    workers: int | None = opt.workers_option(),
    max_iters: int | None = opt.max_iters_option(),
    cpu_amp: bool | None = opt.cpu_amp_option(),
    eval_every: int | None = opt.eval_every_option(),
    checkpoint_every: int | None = opt.checkpoint_every_option(),
    checkpoint_every_iters: int | None = opt.checkpoint_every_iters_option(),
    resume: str | None = typer.Option(
        None, "--resume", metavar="RUN_DIR|CKPT|last",
        help="Continue a run: its directory, a checkpoint, or 'last' (--out, else the newest run)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (with several models: "
                                       "OUT/<model>). Default runs/pretrain-teacher/<model>."),
    device: str | None = opt.device_option(),
    seed: int | None = opt.seed_option(),
    nmode: str | None = opt.nmode_option(note="; ablations"),
    pretrained: str | None = opt.pretrained_option(),
    tensorboard: bool | None = opt.tensorboard_option(),
) -> None:
    """Train detectors from the zoo: the paper's teachers, Table I's baselines, the plain student.

    Each run directory gets config.yaml, results.csv, last.pt, best.pt (by val mAP50),
    curves.png and train.log.

    Without --config it trains with the recipe that learns from random weights on the
    device (cpu-crop on a CPU, the demo's GPU recipe on CUDA) and says which.

    Under `torchrun --nproc_per_node N -m meddet pretrain-teacher ...` it uses DDP.
    """
    from meddet.engine import distributed as du
    from meddet.engine.defaults import pretrain, require_split, resolve_resume
    from meddet.engine.tensorboard import require_tensorboard, tensorboard_logging
    from meddet.runs import (
        discard_if_failed,
        first_missing,
        new_run_dir,
        run_dir_target,
        write_run_config,
    )

    flags = {"model": {"name": model, "nmode": nmode,
                       "pretrained": opt.check_pretrained(pretrained)},
             **opt.training_overrides(
        data=data, img_size=img_size, workers=workers, epochs=epochs, batch_size=batch_size,
        lr=lr, max_iters=max_iters, device=device, seed=seed, eval_every=eval_every,
        checkpoint_every=checkpoint_every, checkpoint_every_iters=checkpoint_every_iters,
        cpu_amp=cpu_amp)}
    models = parse_csv_list(model, "--model")
    notes: list[str] = []
    jobs: list[tuple[Config, Path | None, Path | None]] = []  # (config, run dir, checkpoint)
    if resume is not None:
        if len(models) > 1:
            raise MedDetError("--resume continues one run; pass a single --model (or none)")
        if config is not None:
            raise MedDetError("--resume uses the run's own config.yaml; drop --config")
        if nmode is not None:
            raise MedDetError("--resume keeps the run's own architecture; drop --nmode")
        target = (out if out is not None else _latest_run(RUNS_ROOT)) if resume == "last" \
            else Path(resume)
        ckpt_path = resolve_resume(target)
        jobs.append((_resume_config(ckpt_path, flags), ckpt_path.parent, ckpt_path))
    else:
        if not models:
            raise MedDetError(f"pass --model NAME (or a comma-separated list) from the zoo: "
                              f"{zoo_list()}")
        from meddet.models import DETECTORS

        for name in models:
            if name not in DETECTORS:
                raise MedDetError(f"unknown model {name!r}; use one of: {zoo_list()}")
        if config is None:
            config, flags = default_config(flags["train"]["device"], flags)
            notes.append(opt.default_config_line(config, flags["train"]["device"]))
        for name in models:
            cfg = load_config(config, {**flags, "model": {**flags["model"], "name": name}})
            run_dir = (out / name if len(models) > 1 else out) if out is not None else None
            jobs.append((cfg, run_dir, None))

    require_tensorboard(tensorboard)
    for cfg, _, _ in jobs:
        # A missing data set and unavailable ImageNet weights stop here, before any run folder.
        require_split(cfg.data.root, "train")
        require_split(cfg.data.root, "val")
        if cfg.model.pretrained is not None:
            notes.append(opt.initial_weights_note(cfg.model.name, cfg.model.pretrained))
    info = du.init_distributed(jobs[0][0].train.device)
    if info.is_main:
        for note in dict.fromkeys(notes):
            console.print(escape(note))
    try:
        summaries = []
        for cfg, run_dir, ckpt_path in jobs:
            guard: Any = contextlib.nullcontext()
            if ckpt_path is None:
                path = None
                if info.is_main:
                    created = run_dir is None or not Path(run_dir).exists()
                    made = first_missing(run_dir_target(COMMAND, run_dir, RUNS_ROOT))
                    path = new_run_dir(COMMAND, run_dir, name=cfg.model.name, root=RUNS_ROOT)
                    write_run_config(path, cfg.model_dump(mode="json"), COMMAND)
                    # A bad dataset found while loading it must not leave a half-made run.
                    guard = discard_if_failed(path, created=created, made=made,
                                              outputs=RUN_START_OUTPUTS)
                run_dir = Path(du.broadcast_object(str(path) if path else None))
            elif info.is_main:  # flags given with --resume (e.g. --max-iters) are now in force
                write_run_config(run_dir, cfg.model_dump(mode="json"), COMMAND)
            with guard, tensorboard_logging(tensorboard):
                summaries.append(pretrain(cfg, run_dir, resume=ckpt_path,
                                          console=console if info.is_main else None,
                                          device=info.device))
        if info.is_main:
            _print_summary(summaries)
    finally:
        du.cleanup_distributed()


def _print_summary(summaries: list[dict[str, Any]]) -> None:
    table = Table(title="pretrain-teacher", show_lines=False)
    for col in ("run", "iters", "best val mAP50", "last val mAP", "last val mAP50", "last val recall@.5",
                "time"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for s in summaries:
        last = s["history"][-1] if s["history"] else {}

        def fmt(v: Any) -> str:
            return "-" if v is None else f"{v:.4f}"

        table.add_row(escape(s["run_dir"]), str(s["iters"]), fmt(s["best_mAP50"]), fmt(last.get("mAP")),
                      fmt(last.get("mAP50")), fmt(last.get("recall")), f"{s['seconds']:.1f}s")
    console.print(table)
    from meddet.engine.curves import LastQuarter

    for s in summaries:
        if s.get("last_quarter"):
            prefix = f"{s['run_dir']}: " if len(summaries) > 1 else ""
            console.print(escape(prefix + LastQuarter.from_dict(s["last_quarter"]).describe()))
