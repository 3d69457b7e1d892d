"""Checkpoints: the one place that writes and reads them.

A checkpoint is a dict of tensors and JSON-safe values (dicts, lists, str, int, float, bool,
None), so it loads with ``torch.load(..., weights_only=True)``: opening a checkpoint never runs
code from the file. Keys::

    model       state_dict of the (unwrapped) model; with a weight EMA (``meta["ema"]``) the
                averaged weights, which is what evaluation, export and prediction load
    train_model the trained (not averaged) weights, for resuming  (runs with a weight EMA)
    ema         {"updates": int}: the EMA's update count            (runs with a weight EMA)
    optimizer   optimizer.state_dict()                      (training checkpoints)
    scheduler   scheduler.state_dict()                      (training checkpoints)
    epoch       completed epochs (int); iter: completed iterations (int)
    metrics     the latest epoch's row of results.csv (dict of floats)
    rng         RNG states (see :func:`capture_rng_state`)
    trainer     the trainer's and hooks' own state (JSON-safe)
    meta        see :func:`make_meta`; :func:`save_checkpoint` adds ``format_version`` and
                ``tensors_sha256`` (see :func:`tensors_sha256`); a detector trained on data
                that records its pixel size also has ``input_spacing_mm`` (see
                :func:`spacing_meta`), which spacing-aware prediction resamples slices to

Files are written atomically (temporary file, fsync, ``os.replace``), so a crash while saving
leaves the previous checkpoint intact. On load the tensors' sha256 is recomputed and compared
with the one in ``meta``, so a file damaged after it was written (bad disk, partial copy) is
reported as corrupted instead of giving a model with silently wrong weights.

Format versions: 1 had no checksum (still read, without verification); 2 adds
``meta["tensors_sha256"]``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddet import __version__
from meddet._io import atomic_save
from meddet.errors import MedDetError

FORMAT = "meddet-checkpoint"
FORMAT_VERSION = 2
#: ``meta`` key holding the sha256 of every tensor in the checkpoint (format 2 and later).
CHECKSUM_KEY = "tensors_sha256"


def make_meta(*, model_name: str, num_classes: int, class_names: list[str], img_size: int,
              model_overrides: Mapping[str, Any] | None = None, kind: str = "detector",
              **extra: Any) -> dict[str, Any]:
    """The metadata block every meddet checkpoint carries.

    Args:
        model_name: zoo name passed to ``meddet.models.build_detector``.
        num_classes: number of foreground classes.
        class_names: the dataset's class names, in label order.
        img_size: input size the model was trained at.
        model_overrides: keyword overrides given to ``build_detector`` (JSON-safe values).
        kind: what the ``model`` entry holds; ``"detector"`` for everything ``meddet eval`` reads.
        **extra: further JSON-safe fields (e.g. ``teachers`` for a distilled student).
    """
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_name": str(model_name),
        "model_overrides": dict(model_overrides or {}),
        "num_classes": int(num_classes),
        "class_names": [str(c) for c in class_names],
        "img_size": int(img_size),
        "meddet_version": __version__,
    }
    meta.update(extra)
    return meta


#: ``meta`` key: millimetres per network-input pixel at which the detector was trained.
SPACING_KEY = "input_spacing_mm"


def spacing_meta(dataset: Any, img_size: int) -> dict[str, float]:
    """``{"input_spacing_mm": mm}`` for a training set whose images record their pixel size.

    The training images' ``pixel_mm`` (written by ``meddet data synth``) times the resize to
    the network input (long side to ``img_size``); the median over the images, as nnU-Net
    chooses its target spacing. Empty when the data set carries no ``pixel_mm`` (imported
    data), so nothing is recorded and prediction keeps the fixed-size resize.

    Args:
        dataset: a :class:`~meddet.data.CocoDetection` (anything without a ``coco`` index
            gives ``{}``).
        img_size: the network input side.
    """
    coco = getattr(dataset, "coco", None)
    records = list(getattr(coco, "imgs", {}).values())
    mm = [float(r["pixel_mm"]) * max(int(r["width"]), int(r["height"])) / img_size
          for r in records if isinstance(r.get("pixel_mm"), (int, float)) and r["pixel_mm"] > 0]
    if not mm or len(mm) < len(records):
        return {}
    return {SPACING_KEY: round(float(np.median(mm)), 4)}


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically.

    Args:
        path: destination file (its folder is created if needed).
        state: a checkpoint dict with at least ``model`` and ``meta`` (see the module docstring).

    Returns:
        The path written.
    """
    if "meta" not in state or state["meta"].get("format") != FORMAT:
        raise ValueError("a checkpoint needs a 'meta' entry made by make_meta()")
    path = Path(path)
    state = dict(state)
    # A new dict: the caller's meta (e.g. a hook's) is not modified.
    state["meta"] = {**state["meta"], "format_version": FORMAT_VERSION,
                     CHECKSUM_KEY: tensors_sha256(state)}
    atomic_save(path, lambda fh: torch.save(state, fh))
    return path


def _walk_tensors(obj: Any, prefix: str) -> Any:
    """``(key path, tensor)`` for every tensor in nested dicts/lists, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        # Keys may mix ints (optimizer state) and strings: order by (type, text).
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            yield from _walk_tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk_tensors(v, f"{prefix}[{i}]")


def tensors_sha256(state: Mapping[str, Any]) -> str:
    """sha256 over every tensor of a checkpoint dict except ``meta``: key path, dtype, shape
    and raw bytes, in a fixed order. Independent of the device the tensors are on."""
    h = hashlib.sha256()
    for key, t in _walk_tensors({k: v for k, v in state.items() if k != "meta"}, ""):
        t = t.detach()
        if t.is_sparse:
            t = t.to_dense()
        if t.is_quantized:
            t = t.int_repr()
        t = t.cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a meddet checkpoint onto the CPU without executing code from the file.

    Args:
        path: the checkpoint file.
        verify: recompute the tensors' sha256 and compare it with ``meta`` (format 2+).

    Raises:
        MedDetError: the file is missing, corrupted or truncated (including a checksum
            mismatch), would need arbitrary unpickling (so it was refused), or is not a meddet
            checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        raise MedDetError(f"{path} is a directory; pass a checkpoint file such as {path / 'last.pt'}")
    if not path.is_file():
        raise MedDetError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch raises UnpicklingError both for a weights-only refusal and for garbage bytes;
        # only the former says "Weights only load failed".
        if "Weights only load failed" in str(exc):
            raise MedDetError(
                f"{path} was refused: loading it would execute arbitrary code (it contains "
                "Python objects, not only tensors); meddet only reads checkpoints it wrote"
            ) from exc
        raise MedDetError(f"{path} is corrupted or truncated (cannot unpickle it)") from exc
    except Exception as exc:
        raise MedDetError(f"{path} is corrupted or truncated ({type(exc).__name__}); "
                          "re-create it or use another checkpoint") from exc
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MedDetError(f"{path} is not a meddet checkpoint (no meddet 'meta' entry); "
                          "pass a last.pt or best.pt written by meddet")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise MedDetError(f"{path} has an unreadable format_version "
                          f"{meta.get('format_version')!r}; it was not written by meddet") from None
    if version > FORMAT_VERSION:
        raise MedDetError(f"{path} has checkpoint format {meta.get('format_version')}, newer than "
                          f"this meddet ({__version__}) reads; upgrade meddet")
    if "model" not in ckpt:
        raise MedDetError(f"{path} is a meddet checkpoint without model weights")
    expected = meta.get(CHECKSUM_KEY)
    if verify and version >= 2:
        if not isinstance(expected, str):
            raise MedDetError(f"{path} is corrupted: its metadata lacks the tensor checksum that "
                              "format 2 requires; re-create it or use another checkpoint")
        if tensors_sha256(ckpt) != expected:
            raise MedDetError(f"{path} is corrupted: its tensors do not match the sha256 "
                              "recorded when it was saved (damaged or edited after writing); "
                              "re-create it or use another checkpoint")
    return ckpt


def build_model_from_checkpoint(ckpt_or_path: str | os.PathLike | Mapping[str, Any],
                                device: str | torch.device = "cpu",
                                **overrides: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the detector a checkpoint was trained as and load its weights.

    Args:
        ckpt_or_path: a checkpoint dict from :func:`load_checkpoint` or a path to one.
        device: where to put the model.
        **overrides: extra ``build_detector`` keywords that win over the stored ones
            (e.g. ``score_thr`` at evaluation time).

    Returns:
        ``(model in eval mode, meta)``.

    Raises:
        MedDetError: the checkpoint is not a detector, names an unknown model, or its weights do
            not fit the rebuilt model (the message names the first missing/unexpected keys).
    """
    from meddet.models import DETECTORS, build_detector, skip_weight_init

    ckpt = ckpt_or_path if isinstance(ckpt_or_path, Mapping) else load_checkpoint(ckpt_or_path)
    meta = dict(ckpt["meta"])
    if meta.get("kind", "detector") != "detector":
        raise MedDetError(f"checkpoint holds a {meta.get('kind')!r}, not a detector")
    name = meta.get("model_name")
    if name not in DETECTORS:
        raise MedDetError(f"checkpoint model {name!r} is not in this meddet's zoo "
                          f"({', '.join(sorted(DETECTORS))})")
    kwargs = {**meta.get("model_overrides", {}), **overrides}
    # Weights come from the checkpoint; never fetch ImageNet weights just to overwrite them.
    kwargs.pop("pretrained", None)
    # Every parameter and buffer is overwritten by the (strict) load below, so the random
    # initialisation is skipped: it is most of the build time of a ResNet-152 teacher.
    with skip_weight_init():
        model = build_detector(name, num_classes=int(meta["num_classes"]), **kwargs)
    load_model_weights(model, ckpt["model"], source=f"checkpoint of {name}")
    return model.to(device).eval(), meta


def load_model_weights(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                       source: str = "checkpoint") -> None:
    """``model.load_state_dict(state_dict)`` with a one-line error naming the mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise MedDetError(f"{source} does not fit the model: " + "; ".join(parts) + " keys")
    bad = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise MedDetError(f"{source} does not fit the model: {k} has shape "
                          f"{tuple(state_dict[k].shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state_dict)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) \
        else model


def capture_rng_state() -> dict[str, Any]:
    """All RNG states in a weights-only-loadable form (tensors, lists, ints, floats, str).

    numpy's and Python's states are converted to plain lists because ``weights_only`` loading
    refuses numpy arrays and arbitrary tuples of objects.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(np_state[0]), "keys": [int(k) for k in np_state[1]],
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": [int(x) for x in py_state[1]],
                   "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Undo :func:`capture_rng_state`; missing entries are left as they are."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["name"], np.asarray(s["keys"], dtype=np.uint32), s["pos"],
                             s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"]), s["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
