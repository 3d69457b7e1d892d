"""Helpers shared by the CLI commands: JSON output, config loading, console."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from meddet._io import atomic_write_json
from meddet.errors import MedDetError

# Human-readable output goes to stderr when stdout carries JSON (``--json -``).
console = Console(stderr=False, highlight=False)
err_console = Console(stderr=True, highlight=False)


def human_console(json_dest: str | None) -> Console:
    """The console for tables and progress: stderr when JSON goes to stdout."""
    return err_console if json_dest == "-" else console


def emit_json(obj: Any, dest: str | None) -> None:
    """Write ``obj`` as JSON to ``dest``: ``-`` is stdout, a path is written atomically."""
    if dest is None:
        return
    if dest == "-":
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()
        return
    try:
        atomic_write_json(dest, obj)
    except OSError as exc:
        raise MedDetError(f"cannot write JSON to {dest}: {exc.strerror}; pass a writable path "
                          "or '-' for stdout") from exc


def check_output_path(dest: str | None, what: str = "--json") -> None:
    """Fail before any work when ``dest`` (a file to write later) cannot be created.

    ``None`` and ``-`` (stdout) pass. The nearest existing ancestor must be a writable folder.
    """
    if dest is None or dest == "-":
        return
    import os
    from pathlib import Path

    path = Path(dest)
    if path.is_dir():
        raise MedDetError(f"{what} {dest} is a folder; pass a file path such as {path / 'out.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MedDetError(f"{what} {dest} cannot be written ({parent} is not a writable folder); "
                          "pass a writable path or '-' for stdout")


def parse_csv_list(value: str | None, what: str) -> list[str]:
    """Split ``a,b,c`` into ``["a", "b", "c"]``; empty items are an error."""
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise MedDetError(f"{what} {value!r} has an empty item; use a comma-separated list like a,b")
    return items
