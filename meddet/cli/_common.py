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


def parse_csv_list(value: str | None, what: str) -> list[str]:
    """Split ``a,b,c`` into ``["a", "b", "c"]``; empty items are an error."""
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise MedDetError(f"{what} {value!r} has an empty item; use a comma-separated list like a,b")
    return items
