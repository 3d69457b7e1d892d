"""Atomic file writes: a reader never sees a half-written file.

Every artifact (checkpoints, JSON, CSV, YAML, PNG) is written to a temporary file in the
destination directory, flushed and fsync'ed, then moved over the target with ``os.replace``,
which is atomic on POSIX and Windows when source and target share a filesystem.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` hold the bytes of ``src``, atomically: a hard link where the file system
    allows one (no bytes copied; safe because every writer here replaces files by renaming,
    never rewrites them in place), else a byte copy."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with open(src, "rb") as fh:
        atomic_save(dst, lambda out: shutil.copyfileobj(fh, out))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Serialise ``obj`` as JSON and write it to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_save(path: str | os.PathLike, writer: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``writer(fh)`` on a temporary binary file, then move it over ``path``.

    Use it for writers that take a file object, e.g. ``torch.save(obj, fh)`` or
    ``fig.savefig(fh, format="png")``.
    """
    with atomic_open(path, "wb") as fh:
        writer(fh)
