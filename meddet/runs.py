"""Run directories: ``runs/<command>/<name>``, auto-numbered like ``exp``, ``exp2``, ...

Each run directory holds the fully resolved ``config.yaml`` (with the package version), so a
run can always be explained and repeated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

from meddet import __version__
from meddet._io import atomic_write_text
from meddet.errors import MedDetError


def new_run_dir(command: str, out: str | os.PathLike | None = None, name: str = "exp",
                root: str | os.PathLike = "runs") -> Path:
    """Create and return a fresh run directory.

    Args:
        command: the CLI command, e.g. ``"pretrain-teacher"``; the parent folder.
        out: an explicit directory; used as is (created if missing).
        name: base name for auto-numbering: ``exp``, ``exp2``, ``exp3``, ...
        root: the folder that holds all runs.

    Raises:
        MedDetError: the directory cannot be created.
    """
    try:
        if out is not None:
            path = Path(out)
            path.mkdir(parents=True, exist_ok=True)
            return path
        parent = Path(root) / command
        parent.mkdir(parents=True, exist_ok=True)
        i = 1
        while True:
            path = parent / (name if i == 1 else f"{name}{i}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                i += 1
    except OSError as exc:
        raise MedDetError(f"cannot create run directory {out or root}: {exc.strerror}; "
                          "choose a writable location with --out") from exc


def write_run_config(run_dir: str | os.PathLike, config: dict, command: str) -> Path:
    """Write ``config.yaml`` (resolved config + package version + command) into ``run_dir``."""
    doc = {"meddet_version": __version__, "command": command, **config}
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def discard_if_failed(run_dir: str | os.PathLike, *, created: bool,
                      outputs: Iterable[str] = ("config.yaml",)) -> Iterator[None]:
    """Undo a run directory when the command stops on a user error before producing anything.

    If the body raises :class:`MedDetError` and ``run_dir`` holds nothing but ``outputs``
    (files, or folders that are empty), those are removed, and so is ``run_dir`` itself when
    this command ``created`` it. A run that got further (a checkpoint, a log of where it
    stopped) is kept untouched. A bad dataset or teacher found after the run directory was made
    then leaves no half-made run behind.
    """
    try:
        yield
    except MedDetError:
        path = Path(run_dir)
        allowed = set(outputs)
        try:
            entries = list(path.iterdir())
            if all(e.name in allowed and (e.is_file() or not any(e.iterdir())) for e in entries):
                for e in entries:
                    e.unlink() if e.is_file() else e.rmdir()
                if created:
                    path.rmdir()
        except OSError:
            pass  # cleaning up is best effort; the user's error is what matters
        raise
