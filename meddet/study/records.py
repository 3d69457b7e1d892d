"""The study's records on disk: one ``runs/<row>/row.json`` per finished row, and ``study.json``.

``row.json`` (written by :class:`meddet.study.runner.Runner` when a row finishes) holds ``id``,
``label``, ``seed``, ``group``, ``seconds``, ``commands``, ``device``, ``config`` and either
``test`` (the ``meddet eval --json`` metrics, fractions in [0, 1]: ``mAP`` (COCO
mAP@[.5:.95], the report's headline), ``mAP50``, ..., with ``per_class`` and an optional
``noise_sweep``) plus ``best_val_mAP50`` and, for a distilled row, ``teachers`` (their test
mAP50, by teacher row id) and ``teachers_mAP`` (their test mAP; absent from older records), or
``bench`` (the ``meddet bench --json`` result). A trained row also has ``train_seconds`` and
``train_images`` (:func:`meddet.engine.curves.training_cost`; absent from older records). A row trained with config overrides also has
``overrides`` (e.g. ``{"model": {"pretrained": "imagenet"}}``), and a row finished across
several invocations ``segments`` (each invocation's seconds).

``study.json`` describes the machine and schedule and lists every ``meddet study run``
invocation (``invocations``: command, rows at a time, device name, finish time). The report is
rendered from these files alone, so they can be merged from several machines and committed.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meddet._io import atomic_write_text
from meddet.errors import MedDetError


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON, written atomically (the records' format)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def load_rows(out: Path) -> dict[str, dict]:
    """Every finished row under ``out/runs``, by row id (sorted by folder name)."""
    rows = {}
    for p in sorted((Path(out) / "runs").glob("*/row.json")):
        try:
            info = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise MedDetError(f"{p} is not valid JSON ({exc}); delete it to re-run the row") from exc
        rows[info["id"]] = info
    return rows


def read_meta(out: Path) -> dict:
    """``out/study.json``, or ``{}`` when the study has none yet."""
    path = Path(out) / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def data_phantom(data: Path) -> str | None:
    """Which synthetic phantom made the data set at ``data`` (``None``: not a synthetic set).

    Read from ``info.generator.phantom`` of its training annotations; sets written before the
    field existed were made by the first phantom, ``v1``.
    """
    ann = Path(data) / "annotations" / "train.json"
    try:
        info = json.loads(ann.read_text()).get("info", {})
    except (OSError, ValueError):
        return None
    gen = info.get("generator")
    if not isinstance(gen, dict):
        return None
    return str(gen.get("phantom", "v1"))


def record_invocation(out: Path, *, command: str, jobs: int, device: str, config: str,
                      data: Path, seeds: list[int], extra: list[str],
                      teacher_epochs: int | None) -> dict:
    """Append one invocation to ``out/study.json`` and describe this machine there.

    Returns:
        the new ``study.json`` content.
    """
    import torch

    meta = read_meta(out)
    calls = meta.get("invocations", [])
    from meddet.device import device_name

    # the GPU's name, or the CPU model (/proc/cpuinfo) with its core count
    name = (device_name(torch.device(device)) if device.startswith("cuda")
            else f"{os.cpu_count()}-core {device_name(torch.device('cpu'))} (CPU)")
    calls.append({"command": command, "jobs": jobs, "device_name": name,
                  "finished": datetime.now(timezone.utc).isoformat(timespec="minutes")})
    meta = {"config": config, "data": str(data), "phantom": data_phantom(data),
            "device": device, "device_name": name, "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(), "seeds": seeds, "extra": extra,
            "teacher_epochs": teacher_epochs, "invocations": calls}
    write_json(Path(out) / "study.json", meta)
    return meta


def _only_rows(command: str) -> set[str]:
    """The rows an invocation was limited to (``--only a,b``; empty when it was not)."""
    parts = command.split()
    for i, p in enumerate(parts[:-1]):
        if p == "--only":
            return set(parts[i + 1].split(","))
    return set()


def merge_records(src: Path, dest: Path) -> dict[str, list[str]]:
    """Copy the finished rows of study folder ``src`` into the records folder ``dest`` (made
    when missing) and merge their ``study.json``: how a study run in several places, or a
    scratch folder outside the repository, reaches the committed records.

    A row of ``src`` replaces the row of the same id in ``dest``; ``dest``'s invocations that
    were limited (``--only``) to rows all replaced now are dropped, the others kept, and
    ``src``'s are added after them; the machine and schedule fields come from ``src``. Only
    ``row.json`` files travel (no weights).

    Returns:
        ``{"added": [...], "replaced": [...], "unchanged": [...]}`` row ids.

    Raises:
        MedDetError: ``src`` has no finished row, or the two were measured on different
            synthetic phantoms.
    """
    src, dest = Path(src), Path(dest)
    rows = sorted((src / "runs").glob("*/row.json"))
    if not rows:
        raise MedDetError(f"{src} holds no runs/<row>/row.json; pass the folder that "
                          "`meddet study run --out` wrote")
    a, b = read_meta(src), read_meta(dest)
    if a.get("phantom") and b.get("phantom") and a["phantom"] != b["phantom"]:
        raise MedDetError(f"{src} was measured on phantom {a['phantom']!r} and {dest} on "
                          f"{b['phantom']!r}; merge into an empty folder instead")
    out: dict[str, list[str]] = {"added": [], "replaced": [], "unchanged": []}
    for p in rows:
        text = p.read_text()
        rid = json.loads(text)["id"]
        target = dest / "runs" / rid / "row.json"
        if not target.is_file():
            out["added"].append(rid)
        elif target.read_text() != text:
            out["replaced"].append(rid)
        else:
            out["unchanged"].append(rid)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, text)
    gone = set(out["replaced"])
    kept = [c for c in b.get("invocations", [])
            if not ((only := _only_rows(c["command"])) and only <= gone)]
    new = [c for c in a.get("invocations", []) if c not in kept]
    meta = {**b, **{k: v for k, v in a.items() if k != "invocations"},
            "invocations": kept + new}
    write_json(dest / "study.json", meta)
    return out
