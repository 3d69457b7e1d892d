"""Run directories: ``runs/<command>/<name>``, auto-numbered like ``exp``, ``exp2``, ...
(``gfl_mbv2``, ``gfl_mbv2-2``, ...: a name that ends in a digit gets a ``-`` before the number).

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
        name: base name for auto-numbering: ``exp``, ``exp2``, ``exp3``, ...; a name that ends
            in a digit is numbered after a ``-`` (``gfl_mbv2``, ``gfl_mbv2-2``), so that the
            number does not read as part of the name.
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
        sep = "-" if name[-1:].isdigit() else ""
        while True:
            path = parent / (name if i == 1 else f"{name}{sep}{i}")
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


def first_missing(path: str | os.PathLike) -> Path | None:
    """The topmost folder of ``path`` (``path`` itself or an ancestor) that does not exist yet:
    what creating ``path`` with its parents would make. ``None`` when ``path`` exists.

    Call it before :func:`new_run_dir` and give the result to :func:`discard_if_failed` as
    ``made``, so that a failed command also takes back the folders it made around its run.
    """
    path = Path(path)
    if path.exists():
        return None
    top = path
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top


def run_dir_target(command: str, out: str | os.PathLike | None,
                   root: str | os.PathLike = "runs") -> Path:
    """The folder :func:`new_run_dir` creates a run in: ``out``, else ``root/command``."""
    return Path(out) if out is not None else Path(root) / command


@contextlib.contextmanager
def discard_if_failed(run_dir: str | os.PathLike, *, created: bool,
                      outputs: Iterable[str] = ("config.yaml",),
                      made: str | os.PathLike | None = None) -> Iterator[None]:
    """Undo a run directory when the command stops on a user error before producing anything.

    If the body raises :class:`MedDetError` and ``run_dir`` holds nothing but ``outputs``
    (files, or folders that are empty), those are removed, and so is ``run_dir`` itself when
    this command ``created`` it. A run that got further (a checkpoint, a log of where it
    stopped) is kept untouched. A bad dataset or teacher found after the run directory was made
    then leaves no half-made run behind.

    ``made`` (from :func:`first_missing`, called before :func:`new_run_dir`) is the topmost
    folder the command created on the way to ``run_dir``, such as ``runs/distill``; the folders
    from ``run_dir``'s parent up to it are removed too when they are left empty.
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
                    _remove_empty_parents(path, made)
        except OSError:
            pass  # cleaning up is best effort; the user's error is what matters
        raise


def _remove_empty_parents(path: Path, made: str | os.PathLike | None) -> None:
    """Remove ``path``'s empty parents up to and including ``made`` (nothing when ``None`` or
    when ``made`` is not above ``path``)."""
    if made is None:
        return
    made = Path(made).absolute()
    parent = path.absolute().parent
    if parent != made and made not in parent.parents:
        return
    while True:
        if any(parent.iterdir()):
            return
        parent.rmdir()
        if parent == made:
            return
        parent = parent.parent
