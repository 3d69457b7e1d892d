"""Finding prediction inputs and reading them as 2-D slices: PNG/JPEG/TIFF, DICOM, NIfTI.

Inputs are discovered first (cheap: file names and, for DICOM in folders, headers only) and
read lazily, one file at a time, so memory stays flat however many images a run covers.
Every readable input becomes one or more :class:`Slice` objects (a 2-D float32 array in the
input's own intensity units, plus where it came from and its pixel spacing); anything that
cannot be used becomes a :class:`Skip` carrying a one-line reason. Nothing here raises for a
bad file: one broken input must not stop a run over thousands.

This module discovers inputs, dispatches each to its reader and reads PNG/JPEG/TIFF itself.
DICOM is read by :mod:`meddet.inference.dicom`, NIfTI by :mod:`meddet.inference.nifti`; the
types they exchange live in :mod:`meddet.inference.sources` and are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from meddet.errors import MedDetError
from meddet.inference.dicom import (
    DICOM_CODECS_HINT,
    group_series,
    has_dicom_magic,
    read_dicom_file,
    read_dicom_series,
)
from meddet.inference.nifti import read_nifti
from meddet.inference.sources import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    InputSource,
    Skip,
    Slice,
    SliceSpec,
    file_suffix,
    finite,
    one_line,
    output_stem,
    parse_slices,
    to_gray,
)

__all__ = [
    "DICOM_CODECS_HINT",
    "IMAGE_SUFFIXES",
    "InputSource",
    "Skip",
    "Slice",
    "SliceSpec",
    "discover_inputs",
    "iter_slices",
    "output_stem",
    "parse_slices",
]


# --------------------------------------------------------------------------- discovery
def _classify(path: Path) -> str:
    suffix = file_suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in DICOM_SUFFIXES or has_dicom_magic(path):
        return "dicom"
    return "unsupported"


def _walk(folder: Path) -> Iterator[Path]:
    # Sorted so that runs are reproducible; hidden files (.DS_Store, editor swap files) and
    # hidden folders are not inputs.
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def discover_inputs(inputs: Sequence[str | os.PathLike]) -> list[InputSource]:
    """Expand the command-line inputs into a list of sources, in a stable order.

    Files are classified by suffix (``.png .jpg .jpeg .tif .tiff``, ``.dcm .dicom .ima``,
    ``.nii .nii.gz``) or, without a known suffix, by the DICOM ``DICM`` marker. Folders are
    walked recursively. DICOM files found in the same folder that share a Series Instance UID
    and have distinct slice positions form one ``dicom_series`` (so ``--slices`` applies to
    it); every other DICOM file is a 2-D input of its own. Files given explicitly are never
    grouped.

    Raises:
        MedDetError: an input path does not exist.
    """
    out: list[InputSource] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise MedDetError(f"input {raw} does not exist")
        if path.is_file():
            out.append(InputSource(path, _classify(path)))
            continue
        by_folder: dict[Path, list[Path]] = {}
        for f in _walk(path):
            kind = _classify(f)
            if kind == "dicom":
                by_folder.setdefault(f.parent, []).append(f)
            else:
                out.append(InputSource(f, kind))
        for folder, files in by_folder.items():
            out.extend(group_series(folder, files))
    return out


# --------------------------------------------------------------------------- reading
def iter_slices(source: InputSource, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Read one source lazily and yield its slices (or a :class:`Skip` per unusable part).

    Never raises for bad input: unreadable files, missing codecs, non-image DICOM objects and
    out-of-range slice indices all become :class:`Skip` items with a one-line reason.
    """
    if source.kind == "image":
        yield from _read_image(source.path, slices)
    elif source.kind == "dicom":
        yield from read_dicom_file(source.path, slices)
    elif source.kind == "dicom_series":
        yield from read_dicom_series(source, slices)
    elif source.kind == "nifti":
        yield from read_nifti(source.path, slices)
    else:
        suffix = file_suffix(source.path) or "no suffix"
        yield Skip(str(source.path), f"unsupported file type ({suffix}); expected PNG, JPEG, "
                   "TIFF, DICOM or NIfTI")


def _read_image(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    from PIL import Image, UnidentifiedImageError

    src = str(path)
    try:
        with Image.open(path) as img:
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames == 1:
                yield Slice(src, output_stem(path), None, finite(_pil_to_array(img)))
                return
            # A multi-page TIFF is a stack: --slices picks pages like slices of a volume.
            valid, bad = slices.select(n_frames)
            stem = output_stem(path)
            for k in valid:
                img.seek(k)
                yield Slice(src, f"{stem}_slice{k}", k, finite(_pil_to_array(img)))
            for k in bad:
                yield Skip(src, f"slice {k} out of range (the stack has {n_frames} pages)")
    except Image.DecompressionBombError:
        # PIL refuses, from the header alone, sizes that would exhaust memory when decoded.
        yield Skip(src, f"image too large to decode safely (over {2 * (Image.MAX_IMAGE_PIXELS or 0)}"
                        " pixels); downscale or crop it")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        yield Skip(src, f"cannot read image: {one_line(exc)}")


def _pil_to_array(img) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "CMYK" or mode.startswith("YCbCr") or mode == "LAB":
        img = img.convert("RGB")
    elif mode == "1":
        img = img.convert("L")
    # 16-bit modes ("I;16", "I;16B") come out of numpy as uint16, 32-bit as int32/float32.
    return to_gray(np.asarray(img))
