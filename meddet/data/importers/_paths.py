"""Finding files in a source dataset: image and split folders, and paths for messages."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Folder names that datasets use for their splits, and the project's name for each.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test"}


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as given (for messages and keys)."""
    try:
        return Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) \
            else str(path)
    except ValueError:  # different drives on Windows
        return str(path)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not hidden), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def split_folders(folder: Path) -> dict[str, Path]:
    """Sub-folders of ``folder`` named like a split (``train``, ``valid``, ...), by split."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            split = SPLIT_ALIASES.get(sub.name.lower())
            if sub.is_dir() and split is not None and split not in found:
                found[split] = sub
    return found


def find_with_suffix(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    """``folder/stem<suffix>`` for the first suffix (either case) that exists."""
    for suffix in suffixes:
        for cand in (folder / f"{stem}{suffix}", folder / f"{stem}{suffix.upper()}"):
            if cand.is_file():
                return cand
    return None
