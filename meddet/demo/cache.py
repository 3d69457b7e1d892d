"""Trained demo teachers kept once per machine, so that a later ``meddet demo`` with the same
plan, data and package version does not train them again.

The cache lives in ``$MEDDET_CACHE`` when set, else ``$XDG_CACHE_HOME/meddet``, else
``~/.cache/meddet``; each entry is ``teachers/<key>/`` with one folder per teacher (a
weights-only ``best.pt`` plus the run's ``config.yaml``, ``results.csv``, ``train.log`` and
``curves.png``) and ``entry.json`` (what the demo reports of each teacher, and the fingerprint of
the data they were trained on). The key (:func:`teacher_key`) hashes everything that decides
the teachers' weights: the plan's data and teacher schedule, the seed, the device type, the
``--pretrained`` choice, the recipe config and the package version; an entry is reused only if
the data it was trained on has the same fingerprint and its teachers started from the same
weights (random or ImageNet) as this run's would. An entry is written to a temporary folder and
renamed into place, so a reader never sees half of one; ``--retrain-teachers`` replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from meddet._io import atomic_copy
from meddet.demo.plan import DemoPlan

#: Environment variable that overrides the cache folder.
CACHE_ENV = "MEDDET_CACHE"
_ENTRY = "entry.json"
#: Files of a teacher's run folder kept beside its weights (those that exist).
_KEPT = ("config.yaml", "results.csv", "train.log", "curves.png")
# Plan fields that only concern the students, the report or the timing: not part of the key.
_NOT_TEACHER = {"name", "student_epochs", "students", "teacher_cache", "preview_images",
                "bench_warmup", "bench_iters", "workers"}


def cache_root() -> Path:
    """The meddet cache folder (``$MEDDET_CACHE``, else ``$XDG_CACHE_HOME/meddet``, else
    ``~/.cache/meddet``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "meddet"


def cacheable(plan: DemoPlan) -> bool:
    """Whether the plan's teachers are worth keeping: not the one-iteration pipeline check."""
    return not (plan.max_iters is not None and plan.max_iters <= 2)


def teacher_key(plan: DemoPlan, *, seed: int, device: str, pretrained: str,
                teachers: Sequence[str], recipe: Mapping[str, Any]) -> str:
    """A hex digest of everything that decides the teachers' weights (see the module doc)."""
    import torch

    from meddet import __version__

    fields = {k: v for k, v in dataclasses.asdict(plan).items() if k not in _NOT_TEACHER}
    payload = {"plan": fields, "seed": int(seed), "device": torch.device(device).type,
               "pretrained": pretrained,
               "teachers": list(teachers), "recipe": recipe, "version": __version__}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def data_fingerprint(root: Path, splits: Sequence[str] = ("train", "val")) -> str:
    """sha256 over the annotation files of ``splits`` and the images they list."""
    h = hashlib.sha256()
    for split in splits:
        ann = root / "annotations" / f"{split}.json"
        raw = ann.read_bytes()
        h.update(raw)
        for img in sorted(json.loads(raw)["images"], key=lambda r: r["file_name"]):
            h.update((root / "images" / split / img["file_name"]).read_bytes())
    return h.hexdigest()


def lookup(key: str) -> Path | None:
    """The complete cache entry for ``key``, or ``None``."""
    entry = cache_root() / "teachers" / key
    return entry if (entry / _ENTRY).is_file() else None


def store(key: str, models: Mapping[str, Mapping[str, Any]], *, fingerprint: str,
          initial_weights: Mapping[str, str]) -> Path:
    """Keep the trained teachers ``models`` (the demo's entries: ``run_dir``, ``checkpoint``,
    ``history``, ``iters``, ``role``) under ``key``, replacing an older entry.

    Raises:
        OSError: the cache folder cannot be written (the caller reports it and goes on).
    """
    from meddet.engine.checkpoint import load_checkpoint, save_checkpoint

    final = cache_root() / "teachers" / key
    tmp = final.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        record: dict[str, Any] = {"fingerprint": fingerprint, "teachers": {},
                                  "initial_weights": {n: initial_weights.get(n) for n in models}}
        for name, m in models.items():
            dst = tmp / name
            dst.mkdir()
            ckpt = load_checkpoint(m["checkpoint"])
            save_checkpoint(dst / "best.pt", {k: ckpt[k] for k in ("model", "meta", "metrics",
                                                                   "epoch", "iter") if k in ckpt})
            for f in _KEPT:
                if (Path(m["run_dir"]) / f).is_file():
                    atomic_copy(Path(m["run_dir"]) / f, dst / f)
            record["teachers"][name] = {k: m[k] for k in ("role", "history", "iters") if k in m}
        (tmp / _ENTRY).write_text(json.dumps(record, default=str), encoding="utf-8")
        if final.exists():
            old = final.with_name(f".{key}.{os.getpid()}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def restore(entry: Path, out: Path, *, fingerprint: str,
            initial_weights: Mapping[str, str]) -> dict[str, dict[str, Any]] | None:
    """Copy the teachers of cache ``entry`` into ``out/teachers/<name>/`` and return their
    demo entries (checkpoints pointing into ``out``), or ``None`` when the entry was made from
    other data than ``fingerprint`` or its teachers started from other weights than
    ``initial_weights`` says this run's would (then nothing is copied)."""
    record = json.loads((entry / _ENTRY).read_text(encoding="utf-8"))
    if record.get("fingerprint") != fingerprint or record.get("initial_weights") != {
            n: initial_weights.get(n) for n in record["teachers"]}:
        return None
    models: dict[str, dict[str, Any]] = {}
    for name, m in record["teachers"].items():
        dst = out / "teachers" / name
        dst.mkdir(parents=True, exist_ok=True)
        for f in (entry / name).iterdir():
            atomic_copy(f, dst / f.name)  # a hard link where the file system allows one
        models[name] = {**m, "run_dir": str(dst), "checkpoint": str(dst / "best.pt"),
                        "cached": str(entry)}
    return models

