"""How fast each model leaves the early loss plateau, with each from-scratch change on and off.

For every (model, variant, seed) it trains from random weights with the ``cpu-crop`` recipe
(``--base``) for ``--iters`` iterations, validating every ``--eval-every`` epochs, and records
the val mAP50 curve, the first iteration at which val mAP50 reaches ``--target`` (0.5), and the
mean IoU of the positives (``pos_iou`` in ``results.csv``) per epoch. Variants (model config keys
on top of the base; ``off`` is GFL as the paper and mmdetection build it):

- ``off``: ``reg_prior`` None, ``box_loss_norm`` mmdet, ``fpn_norm`` none, ``atss_topk`` 9,
  ``nmode_form`` paper, ``train.warmup_ratio`` 0.001
- ``+prior``, ``+mean``, ``+gn``, ``+topk``, ``+warm``, ``+residual``, ``+zres``: one change each
- ``all``: every change; ``all-X``: every change but X; either followed by ``+b16`` /
  ``+b4`` (batch 16 / 4), ``+lr3`` (AdamW 3e-3), ``+w50`` (50-iteration warm-up), ``+cb`` (class-balanced crops) or
  ``+q2`` (classification loss weighted x2), ``+r10`` / ``+r25`` / ``+r50`` (residual branches
  start at scale 0.1 / 0.25 / 0.5), ``+qb1`` (QFL focusing exponent 1), ``+bf16`` (bfloat16
  autocast on the CPU), ``+c64`` / ``+c96`` (64 / 96 px training crops): recipe changes tried
  on top

Runs are resumable (each in its own folder under ``--out``; a finished one is skipped, a cut
one resumed), run ``--jobs`` at a time with one thread each, and the table is rebuilt from the
folders at the end (``--report-only`` rebuilds it without training).

Usage::

    meddet data synth D --seed 0
    python benchmarks/bench_plateau.py --data D --out OUT --models gfl_mbv2 \\
        --variants off,+prior,+mean,all --seeds 0,1,2 --iters 300 --jobs 2
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from meddet.config import load_config
from meddet.engine.curves import val_curve

# The paper's / mmdetection's GFL, and each change from docs/training.md's diagnosis.
OFF: dict[str, Any] = {"model": {"reg_prior": None, "box_loss_norm": "mmdet", "fpn_norm": "none",
                                 "atss_topk": 9, "nmode_form": "paper",
                                 "zero_init_residual": False},
                       "train": {"warmup_ratio": 0.001}}
CHANGES: dict[str, dict[str, Any]] = {
    "prior": {"model": {"reg_prior": 1.0}},
    "mean": {"model": {"box_loss_norm": "mean"}},
    "gn": {"model": {"fpn_norm": "gn"}},
    "topk": {"model": {"atss_topk": 15}},
    "warm": {"train": {"warmup_ratio": 0.1}},
    "residual": {"model": {"nmode_form": "residual"}},
    "zres": {"model": {"zero_init_residual": True}},
}
# Not part of ``all``: recipe changes that are not about the model's start, tried on top.
EXTRAS: dict[str, dict[str, Any]] = {
    "b16": {"train": {"batch_size": 16, "base_batch_size": 16}},
    "b4": {"train": {"batch_size": 4, "base_batch_size": 4}},
    "lr3": {"train": {"lr": 0.003}},
    "w50": {"train": {"warmup_iters": 50}},
    # Class-balanced crops: the window holds a protrusion as often as a non-protrusion.
    "cb": {"data": {"augmentation": {"crop_balance": True}}},
    # Classification weighted twice GFL's (QFL : DFL : GIoU = 2 : 0.25 : 2).
    "q2": {"model": {"lambda_qfl": 2 / 4.25, "mu_dfl": 0.25 / 4.25}},
    # Residual branches start at a small scale instead of 0 (model.residual_init).
    "r10": {"model": {"residual_init": 0.1}},
    "r25": {"model": {"residual_init": 0.25}},
    "r50": {"model": {"residual_init": 0.5}},
    # QFL's focusing exponent 1 instead of 2: the push down on a wrong class's channel scales
    # with σ^β, so at low scores β = 2 leaves it near zero (model.qfl_beta).
    "qb1": {"model": {"qfl_beta": 1.0}},
    # bfloat16 autocast on the CPU (train.cpu_amp), and smaller training crops: cheaper steps.
    "bf16": {"train": {"cpu_amp": True}},
    "c64": {"data": {"augmentation": {"crop": 64}}},
    "c96": {"data": {"augmentation": {"crop": 96}}},
}


def _deep_update(into: dict[str, Any], upd: dict[str, Any]) -> None:
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_update(into[key], value)
        else:
            into[key] = value


def _merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    _deep_update(out, upd)
    return out


def variant_overrides(variant: str) -> dict[str, Any]:
    """The config sections a variant sets (see the module docstring)."""
    if variant == "off":
        return _merge(OFF, {})
    if variant.startswith("+") and variant[1:] in CHANGES:
        return _merge(OFF, CHANGES[variant[1:]])
    base, *extras = variant.split("+") if variant.startswith("all") else (variant, )
    if base == "all" or (base.startswith("all-") and base[4:] in CHANGES):
        out = _merge(OFF, {})
        for name, change in CHANGES.items():
            if base != f"all-{name}":
                out = _merge(out, change)
        for extra in extras:
            if extra not in EXTRAS:
                break
            out = _merge(out, EXTRAS[extra])
        else:
            return out
    raise SystemExit(f"unknown variant {variant!r}; use off, all, +X or all-X with X in "
                     + ", ".join(CHANGES) + ", optionally followed by +E with E in "
                     + ", ".join(EXTRAS) + " (e.g. all+b16)")


def write_config(path: Path, base: str, variant: str, eval_every: int) -> None:
    raw = load_config(base).model_dump(mode="json")
    _deep_update(raw, variant_overrides(variant))
    raw["train"]["eval_every"] = eval_every
    raw["train"]["checkpoint_every"] = eval_every
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _finished(run: Path, iters: int) -> bool:
    curve = val_curve(run / "results.csv") if (run / "results.csv").is_file() else []
    return bool(curve) and curve[-1].iter >= iters


def train_one(args: argparse.Namespace, model: str, variant: str, seed: int) -> Path:
    run = args.out / f"{model}__{variant}__s{seed}"
    if _finished(run, args.iters):
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg = args.out / f"config__{variant}.yaml"
    if not cfg.exists():
        write_config(cfg, args.base, variant, args.eval_every)
    cmd = [sys.executable, "-m", "meddet", "pretrain-teacher", "--model", model, "--data",
           str(args.data), "--seed", str(seed), "--max-iters", str(args.iters), "--device",
           "cpu", "--out", str(run)]
    # A cut or shorter run continues from its own config.yaml (the schedule always spans the
    # config's epochs; --max-iters only stops early, so a 300-iteration probe is the start of
    # the full run).
    cmd += ["--resume", str(run)] if (run / "last.pt").exists() else ["--config", str(cfg)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    with (args.out / f"{run.name}.log").open("a") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f"{run.name}: {time.time() - t0:.0f} s", flush=True)
    return run


def summarise(run: Path, target: float, at: list[int]) -> dict[str, Any] | None:
    if not (run / "results.csv").is_file():
        return None
    curve = val_curve(run / "results.csv")
    model, variant, seed = run.name.split("__")
    first = next((p.iter for p in curve if p.mAP50 >= target), None)
    def at_or_before(i: int) -> float | None:
        # Validation runs at epoch ends, which need not fall on round iterations.
        done = [p for p in curve if p.iter <= i]
        return done[-1].mAP50 if done and done[-1].iter > i - 25 else None

    ious = []
    with (run / "results.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("pos_iou"):
                ious.append((int(float(row["iter"])), float(row["pos_iou"])))
    return {"model": model, "variant": variant, "seed": int(seed[1:]),
            "iters_to_target": first, "last_iter": curve[-1].iter if curve else 0,
            **{f"mAP50@{i}": at_or_before(i) for i in at},
            "pos_iou": ious}


def report(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = [r for run in sorted(args.out.glob("*__*__s*")) if run.is_dir()
            if (r := summarise(run, args.target, args.at)) is not None]
    (args.out / "plateau.json").write_text(json.dumps(rows, indent=1))
    head = ["model", "variant", "seed", f"first iter ≥ {args.target:g}"] + [
        f"val mAP50 @{i}" for i in args.at]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        first = r["iters_to_target"] if r["iters_to_target"] is not None else f"> {r['last_iter']}"
        vals = [f"{r[f'mAP50@{i}']:.3f}" if r[f"mAP50@{i}"] is not None else "–" for i in args.at]
        lines.append("| " + " | ".join([r["model"], r["variant"], str(r["seed"]), str(first),
                                        *vals]) + " |")
    (args.out / "plateau.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", default="cpu-crop", help="config the variants start from")
    ap.add_argument("--models", default="gfl_mbv2")
    ap.add_argument("--variants", default="off,all")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=2, help="validate every N epochs")
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--at", default="100,200,300", help="iterations to tabulate")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    args.at = [int(x) for x in args.at.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        todo = [(m, v, int(s)) for m in args.models.split(",") for s in args.seeds.split(",")
                for v in args.variants.split(",")]
        for v in {v for _, v, _ in todo}:
            variant_overrides(v)  # fail on a bad name before training anything
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda t: train_one(args, *t), todo))
    report(args)


if __name__ == "__main__":
    main()
