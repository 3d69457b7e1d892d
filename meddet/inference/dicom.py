"""Reading DICOM for prediction: single files, multi-frame files and series of slice files.

Discovery reads headers only: :func:`has_dicom_magic` recognises Part 10 files without a known
suffix, and :func:`group_series` turns the DICOM files of one folder into series (same Series
Instance UID, distinct positions along the slice normal). :func:`read_dicom_file` and
:func:`read_dicom_series` then decode pixels one file at a time: the modality LUT is applied,
MONOCHROME1 is inverted and the pixel spacing is taken from the header. Undecodable or
non-image objects become :class:`~meddet.inference.sources.Skip` items; nothing here raises for
a bad file.

Privacy: the only things taken from a DICOM header are pixel geometry and intensity metadata
(rescale, photometric interpretation, pixel spacing, position for ordering a series). Patient
fields are read only to check that they do not appear in the names written to the outputs.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meddet.inference.sources import (
    DICOM_SUFFIXES,
    InputSource,
    Skip,
    Slice,
    SliceSpec,
    display_source,
    file_suffix,
    finite,
    one_line,
    output_stem,
    to_gray,
)

__all__ = [
    "DICOM_CODECS_HINT",
    "group_series",
    "has_dicom_magic",
    "read_dicom_file",
    "read_dicom_series",
]

# What to install when pydicom has no plugin for a compressed transfer syntax. pylibjpeg covers
# JPEG baseline/extended/lossless, JPEG-LS (libjpeg), JPEG 2000 (openjpeg) and RLE (rle).
DICOM_CODECS_HINT = (
    "install the DICOM codecs with `pip install 'meddet[dicom-codecs]'` "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
)


# --------------------------------------------------------------------------- discovery
def has_dicom_magic(path: Path) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` after the preamble)."""
    # Part 10 files carry "DICM" after a 128-byte preamble; cheap to test without pydicom.
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def group_series(folder: Path, files: list[Path]) -> list[InputSource]:
    """Group a folder's DICOM files into series; anything ungroupable stays a single file.

    Args:
        folder: the folder holding ``files`` (the path of every series found in it).
        files: DICOM files directly inside ``folder``.

    Returns:
        ``dicom_series`` sources (members ordered along the slice normal) and ``dicom`` sources
        for the remaining files, sorted by their first file's path.
    """
    headers: dict[Path, tuple[str, float | None]] = {}
    for f in files:
        ds = _read_header(f)
        if ds is None:  # unreadable: reported when the file is read on its own
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid or _frame_count(ds) != 1:
            continue
        headers[f] = (uid, _slice_position(ds))

    series: dict[str, list[Path]] = {}
    for f, (uid, _) in headers.items():
        series.setdefault(uid, []).append(f)
    grouped: set[Path] = set()
    out: list[InputSource] = []
    for members in series.values():
        positions = [headers[f][1] for f in members]
        # A series only when every slice has a position and no two coincide; copies of one
        # image (e.g. the same slice in several transfer syntaxes) stay separate images.
        if len(members) < 2 or any(p is None for p in positions) \
                or len(set(positions)) != len(positions):
            continue
        ordered = tuple(f for _, f in sorted(zip(positions, members), key=lambda t: t[0]))
        out.append(InputSource(folder, "dicom_series", ordered))
        grouped.update(members)
    out.extend(InputSource(f, "dicom") for f in files if f not in grouped)
    out.sort(key=lambda s: str(s.members[0] if s.members else s.path))
    return out


def _read_header(path: Path):
    """The grouping tags of a DICOM file without its pixels, or ``None`` if unreadable."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
                "SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                "InstanceNumber", "NumberOfFrames"])
    except Exception:  # noqa: BLE001 - pydicom raises many types for damaged files
        return None


def _slice_position(ds) -> float | None:
    """Position along the slice normal (mm), or the instance number, or ``None``."""
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
        row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
        return float(np.dot(np.cross(row, col), np.asarray(ipp, float)))
    num = ds.get("InstanceNumber")
    return None if num is None or num == "" else float(num)


def _patient_identifiers(ds) -> set[str]:
    """Lower-case identifying strings of a DICOM header, for checking output names.

    Very short values (< 3 characters) are ignored: they would match almost any file name.
    """
    values: list[str] = []
    name = ds.get("PatientName")
    if name is not None:
        values.append(str(name))
        values.extend(re.split(r"[\^= ]+", str(name)))
    for keyword in ("PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs"):
        val = ds.get(keyword)
        if val:
            values.extend(str(v) for v in (val if isinstance(val, (list, tuple)) else [val]))
    return {v.strip().lower() for v in values if len(v.strip()) >= 3}


# --------------------------------------------------------------------------- reading
def _frame_count(ds) -> int | None:
    """``NumberOfFrames`` as an int (1 when absent), or ``None`` when the header value is not a
    positive whole number (a damaged header must become a skip, not an exception)."""
    try:
        n = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def read_dicom_file(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Yield the image of one DICOM file, or the frames ``slices`` picks from a multi-frame one.

    Each :class:`Slice` is ``float32 [H, W]`` after the modality LUT, with the header's pixel
    spacing; a codec problem in a multi-frame file is reported once, as one :class:`Skip`.
    """
    ds_or_skip = _open_dicom(path)
    if isinstance(ds_or_skip, Skip):
        yield ds_or_skip
        return
    ds = ds_or_skip
    ids = _patient_identifiers(ds)
    src, stem = display_source(path, ids), output_stem(path, ids)
    n_frames = _frame_count(ds)
    if n_frames is None:
        yield Skip(src, f"unreadable NumberOfFrames {ds.get('NumberOfFrames')!r} in the header")
        return
    if n_frames == 1:
        arr = _dicom_pixels(ds, src)
        if isinstance(arr, Skip):
            yield arr
        else:
            yield Slice(src, stem, None, arr, _dicom_spacing(ds))
        return
    valid, bad = slices.select(n_frames)
    for k in valid:
        arr = _dicom_pixels(ds, src, frame=k)
        if isinstance(arr, Skip):
            yield arr
            return  # a codec problem affects every frame: report it once
        yield Slice(src, f"{stem}_slice{k}", k, arr, _dicom_spacing(ds))
    for k in bad:
        yield Skip(src, f"slice {k} out of range (the file has {n_frames} frames)")


def read_dicom_series(source: InputSource, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Yield the slices ``slices`` picks from a ``dicom_series`` source, one file read at a time.

    Slice ``k`` is ``source.members[k]`` (ordered along the slice normal); each member is named
    and checked for patient identifiers on its own.
    """
    n = len(source.members)
    valid, bad = slices.select(n)
    for k in valid:
        path = source.members[k]
        ds = _open_dicom(path)
        if isinstance(ds, Skip):
            yield ds
            continue
        ids = _patient_identifiers(ds)
        src = display_source(path, ids)
        arr = _dicom_pixels(ds, src)
        if isinstance(arr, Skip):
            yield arr
            continue
        yield Slice(src, output_stem(path, ids), k, arr, _dicom_spacing(ds))
    for k in bad:
        yield Skip(display_source(source.path), f"slice {k} out of range (the series has {n} "
                   "slices)")


def _open_dicom(path: Path):
    """``pydicom.Dataset`` of an image object, or a :class:`Skip` saying why not."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    src = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path)
            except InvalidDicomError:
                if file_suffix(path) not in DICOM_SUFFIXES:
                    raise
                # Old files without the Part 10 preamble are still DICOM; accept them only if
                # they parse into something with pixels (a renamed text file will not).
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds or "Rows" not in ds:
                    raise InvalidDicomError("no DICOM header") from None
    except InvalidDicomError:
        return Skip(src, "not a DICOM file (no DICOM header)")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        return Skip(src, f"unreadable DICOM file: {one_line(exc)}")
    if "PixelData" not in ds and "FloatPixelData" not in ds \
            and "DoubleFloatPixelData" not in ds:
        what = _sop_class_name(ds)
        return Skip(src, f"not an image: DICOM object without pixel data ({what})")
    return ds


def _sop_class_name(ds) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None),
                                           "MediaStorageSOPClassUID", None)
    return getattr(uid, "name", None) or str(uid or "unknown SOP class")


def _dicom_pixels(ds, src: str, frame: int | None = None) -> np.ndarray | Skip:
    """Pixel values after the modality LUT (rescale slope/intercept), MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, pixel_array

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array if frame is None else pixel_array(ds, index=frame)
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if getattr(ts, "is_compressed", False) and ("plugin" in msg or "decompress" in msg
                                                    or "dependenc" in msg):
            return Skip(src, f"cannot decode {ts.name} pixel data: {DICOM_CODECS_HINT}")
        return Skip(src, f"cannot decode pixel data: {one_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - truncated or inconsistent pixel data
        return Skip(src, f"cannot read pixel data: {one_line(exc)}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if samples == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = apply_modality_lut(arr, ds)
        gray = to_gray(arr)
    except Exception as exc:  # noqa: BLE001 - malformed LUT / unexpected layout
        return Skip(src, f"cannot interpret pixel data: {one_line(exc)}")
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values as white; flip so bright means high signal as in
        # training data.
        gray = gray.max() + gray.min() - gray
    return finite(gray)


def _dicom_spacing(ds) -> tuple[float, float] | None:
    """Pixel Spacing (row, column) in mm, also looked up in the shared functional groups."""
    spacing = ds.get("PixelSpacing")
    if spacing is None:
        try:
            spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        except (AttributeError, IndexError, KeyError):
            spacing = None
    try:
        row, col = (float(v) for v in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None
