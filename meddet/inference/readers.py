"""Finding and reading prediction inputs: PNG/JPEG/TIFF, DICOM files and series, NIfTI volumes.

Inputs are discovered first (cheap: file names and, for DICOM in folders, headers only) and
read lazily, one file at a time, so memory stays flat however many images a run covers.
Every readable input becomes one or more :class:`Slice` objects (a 2-D float32 array in the
input's own intensity units, plus where it came from and its pixel spacing); anything that
cannot be used becomes a :class:`Skip` carrying a one-line reason. Nothing here raises for a
bad file: one broken input must not stop a run over thousands.

Privacy: the only things taken from a DICOM header are pixel geometry and intensity metadata
(rescale, photometric interpretation, pixel spacing, position for ordering a series). Patient
fields are read only to check that they do not appear in the names written to the outputs.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddet.errors import MedDetError

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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# What to install when pydicom has no plugin for a compressed transfer syntax. pylibjpeg covers
# JPEG baseline/extended/lossless, JPEG-LS (libjpeg), JPEG 2000 (openjpeg) and RLE (rle).
DICOM_CODECS_HINT = (
    "install the DICOM codecs with `pip install 'meddet[dicom-codecs]'` "
    "(pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"
)

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


# --------------------------------------------------------------------------- discovery
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _has_dicom_magic(path: Path) -> bool:
    # Part 10 files carry "DICM" after a 128-byte preamble; cheap to test without pydicom.
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _classify(path: Path) -> str:
    suffix = _suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in NIFTI_SUFFIXES:
        return "nifti"
    if suffix in DICOM_SUFFIXES or _has_dicom_magic(path):
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
            out.extend(_group_series(folder, files))
    return out


def _group_series(folder: Path, files: list[Path]) -> list[InputSource]:
    """Group a folder's DICOM files into series; anything ungroupable stays a single file."""
    headers: dict[Path, tuple[str, float | None]] = {}
    for f in files:
        ds = _read_header(f)
        if ds is None:  # unreadable: reported when the file is read on its own
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid or int(ds.get("NumberOfFrames", 1) or 1) > 1:
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


def _display_source(path: Path, identifiers: Iterable[str] = ()) -> str:
    # The path as the user gave it, unless it names the patient: then only a hash is written.
    text = str(path)
    return _hash_name(path) if _contains_identifier(text, identifiers) else text


# --------------------------------------------------------------------------- reading
def iter_slices(source: InputSource, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Read one source lazily and yield its slices (or a :class:`Skip` per unusable part).

    Never raises for bad input: unreadable files, missing codecs, non-image DICOM objects and
    out-of-range slice indices all become :class:`Skip` items with a one-line reason.
    """
    if source.kind == "image":
        yield from _read_image(source.path, slices)
    elif source.kind == "dicom":
        yield from _read_dicom_file(source.path, slices)
    elif source.kind == "dicom_series":
        yield from _read_dicom_series(source, slices)
    elif source.kind == "nifti":
        yield from _read_nifti(source.path, slices)
    else:
        suffix = _suffix(source.path) or "no suffix"
        yield Skip(str(source.path), f"unsupported file type ({suffix}); expected PNG, JPEG, "
                   "TIFF, DICOM or NIfTI")


def _to_gray(arr: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, C]`` → float32 ``[H, W]``; alpha dropped, colour to BT.601 luma."""
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


def _finite(arr: np.ndarray) -> np.ndarray:
    # NaN/inf (seen in float NIfTI masks and TIFFs) would poison the percentile normalisation.
    if np.isfinite(arr).all():
        return arr
    good = arr[np.isfinite(arr)]
    fill = float(good.min()) if good.size else 0.0
    return np.nan_to_num(arr, nan=fill, posinf=fill, neginf=fill)


def _read_image(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    from PIL import Image, UnidentifiedImageError

    src = str(path)
    try:
        with Image.open(path) as img:
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames == 1:
                yield Slice(src, output_stem(path), None, _finite(_pil_to_array(img)))
                return
            # A multi-page TIFF is a stack: --slices picks pages like slices of a volume.
            valid, bad = slices.select(n_frames)
            stem = output_stem(path)
            for k in valid:
                img.seek(k)
                yield Slice(src, f"{stem}_slice{k}", k, _finite(_pil_to_array(img)))
            for k in bad:
                yield Skip(src, f"slice {k} out of range (the stack has {n_frames} pages)")
    except Image.DecompressionBombError:
        # PIL refuses, from the header alone, sizes that would exhaust memory when decoded.
        yield Skip(src, f"image too large to decode safely (over {2 * (Image.MAX_IMAGE_PIXELS or 0)}"
                        " pixels); downscale or crop it")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        yield Skip(src, f"cannot read image: {_one_line(exc)}")


def _pil_to_array(img) -> np.ndarray:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "CMYK" or mode.startswith("YCbCr") or mode == "LAB":
        img = img.convert("RGB")
    elif mode == "1":
        img = img.convert("L")
    # 16-bit modes ("I;16", "I;16B") come out of numpy as uint16, 32-bit as int32/float32.
    return _to_gray(np.asarray(img))


def _read_dicom_file(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    ds_or_skip = _open_dicom(path)
    if isinstance(ds_or_skip, Skip):
        yield ds_or_skip
        return
    ds = ds_or_skip
    ids = _patient_identifiers(ds)
    src, stem = _display_source(path, ids), output_stem(path, ids)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
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


def _read_dicom_series(source: InputSource, slices: SliceSpec) -> Iterator[Slice | Skip]:
    n = len(source.members)
    valid, bad = slices.select(n)
    for k in valid:
        path = source.members[k]
        ds = _open_dicom(path)
        if isinstance(ds, Skip):
            yield ds
            continue
        ids = _patient_identifiers(ds)
        src = _display_source(path, ids)
        arr = _dicom_pixels(ds, src)
        if isinstance(arr, Skip):
            yield arr
            continue
        yield Slice(src, output_stem(path, ids), k, arr, _dicom_spacing(ds))
    for k in bad:
        yield Skip(_display_source(source.path), f"slice {k} out of range (the series has {n} "
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
                if _suffix(path) not in DICOM_SUFFIXES:
                    raise
                # Old files without the Part 10 preamble are still DICOM; accept them only if
                # they parse into something with pixels (a renamed text file will not).
                ds = pydicom.dcmread(path, force=True)
                if "PixelData" not in ds or "Rows" not in ds:
                    raise InvalidDicomError("no DICOM header") from None
    except InvalidDicomError:
        return Skip(src, "not a DICOM file (no DICOM header)")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        return Skip(src, f"unreadable DICOM file: {_one_line(exc)}")
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
        return Skip(src, f"cannot decode pixel data: {_one_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - truncated or inconsistent pixel data
        return Skip(src, f"cannot read pixel data: {_one_line(exc)}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if samples == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = apply_modality_lut(arr, ds)
        gray = _to_gray(arr)
    except Exception as exc:  # noqa: BLE001 - malformed LUT / unexpected layout
        return Skip(src, f"cannot interpret pixel data: {_one_line(exc)}")
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values as white; flip so bright means high signal as in
        # training data.
        gray = gray.max() + gray.min() - gray
    return _finite(gray)


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


def _read_nifti(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Sagittal slices of a NIfTI volume in the closest canonical (RAS+) orientation.

    The stored axis order does not matter: the affine (nibabel's choice: the sform when set,
    else the qform) says which voxel axis runs closest to the patient's left-right, front-back
    and foot-head directions (``io_orientation``; an oblique volume takes the nearest axes, no
    resampling). Sagittal planes are perpendicular to the left-right axis, and slice ``k`` is
    the k-th plane counted from the patient's left. Each slice is shown the radiological way
    for sagittal images: superior at the top, anterior on the left. The row / column spacing
    are the voxel sizes along superior / anterior.
    """
    import nibabel as nib
    from nibabel.orientations import io_orientation

    src = str(path)
    try:
        img = nib.load(path)
        shape = img.shape
        # Extra trailing axes of length 1 (e.g. [X, Y, Z, 1]) carry nothing; a real 4th axis
        # (time, echoes) is a stack of volumes: the first one is used.
        spatial = tuple(shape[:3])
        if len(shape) < 3 or min(spatial) < 1:
            yield Skip(src, f"NIfTI image has shape {shape}; need a 3-D volume")
            return
        notes = []
        if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
            notes.append(f"{len(shape)}-D NIfTI {shape}: using the first volume")
        index = (slice(None),) * 3 + (0,) * (len(shape) - 3)
        vol = np.asarray(img.dataobj[index], dtype=np.float32)
        affine = img.affine
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        yield Skip(src, f"unreadable NIfTI file: {_one_line(exc)}")
        return

    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        yield Skip(src, "NIfTI affine has no usable orientation")
        return
    # Permute/flip the axes into RAS+ without resampling (nibabel.as_closest_canonical).
    perm = [int(np.where(ornt[:, 0] == j)[0][0]) for j in range(3)]
    canon = np.transpose(vol, perm)
    for j, axis in enumerate(perm):
        if ornt[axis, 1] < 0:
            canon = np.flip(canon, axis=j)
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = (float(voxel[perm[2]]), float(voxel[perm[1]]))  # rows = S, columns = A
    n = canon.shape[0]
    stem = output_stem(path)
    valid, bad = slices.select(n)
    for k in valid:
        # canon[k] is [A, S]; superior to the top and anterior to the left.
        arr = np.ascontiguousarray(canon[k].T[::-1, ::-1])
        yield Slice(src, f"{stem}_slice{k}", k, _finite(arr), spacing, list(notes))
    for k in bad:
        yield Skip(src, f"slice {k} out of range (the volume has {n} sagittal slices)")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."
