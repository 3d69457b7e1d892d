"""What the prediction readers exchange: inputs, slice selection, slices, skips and their names.

A discovered input is an :class:`InputSource`; reading it yields :class:`Slice` objects (a 2-D
float32 array plus where it came from and its pixel spacing) or :class:`Skip` objects carrying
a one-line reason. :class:`SliceSpec` (parsed from ``--slices`` by :func:`parse_slices`) says
which slices of a volume to read. The helpers here are shared by every reader: file suffixes,
output names that never carry a patient identifier, grey conversion, replacing non-finite
values, and turning an exception into one line of text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddet.errors import MedDetError

__all__ = [
    "DICOM_SUFFIXES",
    "IMAGE_SUFFIXES",
    "NIFTI_SUFFIXES",
    "InputSource",
    "Skip",
    "Slice",
    "SliceSpec",
    "display_source",
    "file_suffix",
    "finite",
    "one_line",
    "output_stem",
    "parse_slices",
    "to_gray",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# ITU-R BT.601 luma, the weights PIL uses for mode "L": colour inputs become grey this way.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class SliceSpec:
    """Which slices of a volume to predict on.

    ``mode`` is ``"mid"`` (the middle slice), ``"all"``, or ``"list"`` with explicit 0-based
    ``indices``. 2-D inputs ignore it.
    """

    mode: str = "all"
    indices: tuple[int, ...] = ()

    def select(self, n: int) -> tuple[list[int], list[int]]:
        """Return ``(valid indices, out-of-range indices)`` for a volume of ``n`` slices."""
        if self.mode == "all":
            return list(range(n)), []
        if self.mode == "mid":
            return [n // 2], []
        valid = [i for i in self.indices if 0 <= i < n]
        return valid, [i for i in self.indices if not 0 <= i < n]


def parse_slices(value: str | None) -> SliceSpec:
    """Parse ``--slices``: ``mid``, ``all`` or a comma-separated list of 0-based indices.

    Raises:
        MedDetError: anything else, or a negative / repeated index.
    """
    if value is None or value.strip().lower() == "all":
        return SliceSpec("all")
    text = value.strip().lower()
    if text == "mid":
        return SliceSpec("mid")
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not re.fullmatch(r"\d+", p) for p in parts):
        raise MedDetError(f"--slices {value!r} is not valid; use mid, all, or 0-based indices "
                          "like 10 or 8,10,12")
    indices = tuple(int(p) for p in parts)
    if len(set(indices)) != len(indices):
        raise MedDetError(f"--slices {value!r} repeats an index")
    return SliceSpec("list", indices)


@dataclass(frozen=True)
class InputSource:
    """One discovered input, not read yet.

    Attributes:
        path: the file (or, for a DICOM series, the folder holding it).
        kind: ``"image"``, ``"dicom"``, ``"dicom_series"``, ``"nifti"`` or ``"unsupported"``.
        members: the slice files of a DICOM series, ordered along the slice normal.
    """

    path: Path
    kind: str
    members: tuple[Path, ...] = ()


@dataclass
class Slice:
    """One 2-D image ready for pre-processing.

    Attributes:
        source: the input file as shown in outputs (the path given on the command line, or a
            hash when that path contains a patient identifier).
        stem: base name for output files, derived from the input file name (or a hash).
        index: slice index within a volume or series; ``None`` for a 2-D file.
        array: ``float32 [H, W]`` in the input's intensity units (DICOM: after the modality
            LUT, MONOCHROME1 inverted; colour: BT.601 luma).
        spacing: ``(row_mm, col_mm)`` pixel spacing, or ``None`` when unknown.
        notes: non-fatal remarks about how the input was read (e.g. "using the first volume").
    """

    source: str
    stem: str
    index: int | None
    array: np.ndarray
    spacing: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Skip:
    """An input (or slice) that was not used, and why (one line)."""

    source: str
    reason: str


def file_suffix(path: Path) -> str:
    """Lower-case suffix of ``path``, with ``.nii.gz`` kept whole (``""`` when there is none)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# --------------------------------------------------------------------------- naming
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _hash_name(path: Path) -> str:
    return "img_" + hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:12]


def output_stem(path: Path, identifiers: Iterable[str] = ()) -> str:
    """A file-system-safe base name for the outputs of ``path``.

    Derived from the file name (``.nii.gz`` and other suffixes removed, unsafe characters
    replaced by ``_``, at most 80 characters); a hash of the absolute path when that leaves
    nothing or when the name contains one of ``identifiers`` (patient name parts, ID, birth
    date, accession number read from a DICOM header).
    """
    name = path.name
    for suffix in (".nii.gz",) + NIFTI_SUFFIXES + IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = _UNSAFE.sub("_", name).strip("._-")[:80]
    if not stem or _contains_identifier(name, identifiers):
        return _hash_name(path)
    return stem


def _contains_identifier(text: str, identifiers: Iterable[str]) -> bool:
    low = text.lower()
    return any(ident and ident in low for ident in identifiers)


def display_source(path: Path, identifiers: Iterable[str] = ()) -> str:
    """``path`` as text for the outputs, or a hash of it when it contains one of ``identifiers``.

    ``identifiers`` are lower-case strings (see :func:`output_stem`).
    """
    # The path as the user gave it, unless it names the patient: then only a hash is written.
    text = str(path)
    return _hash_name(path) if _contains_identifier(text, identifiers) else text


# --------------------------------------------------------------------------- pixels and errors
def to_gray(arr: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` → float32 ``[H, W]``; alpha dropped, colour to BT.601 luma.

    Raises:
        ValueError: any other shape.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if arr.shape[-1] in (2, 4):  # grey+alpha / RGBA
            arr = arr[..., :-1]
        if arr.shape[-1] == 3:
            return (arr.astype(np.float32) * _LUMA).sum(-1, dtype=np.float32)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape}")
    return arr.astype(np.float32)


def finite(arr: np.ndarray) -> np.ndarray:
    """``arr`` with NaN and ±inf replaced by its smallest finite value (0 when there is none)."""
    # NaN/inf (seen in float NIfTI masks and TIFFs) would poison the percentile normalisation.
    if np.isfinite(arr).all():
        return arr
    good = arr[np.isfinite(arr)]
    fill = float(good.min()) if good.size else 0.0
    return np.nan_to_num(arr, nan=fill, posinf=fill, neginf=fill)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), at most 200 chars."""
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."
