"""Reading one sagittal series for a report: a folder of DICOM slices or a NIfTI volume.

Unlike ``meddet predict``, which reads whatever it can and skips the rest, a report is about
exactly one series, so anything that makes the series unusable is an error raised before any
output is written: no series, several series, one slice, a non-sagittal orientation, slices of
different sizes or orientations, or pixels that cannot be decoded.

Every slice is turned into the *canonical* frame the detector was trained on (superior at the
top, anterior at the left) by a transpose and flips chosen from the DICOM direction cosines;
:meth:`SagittalSeries.to_source` maps boxes back to each file's own pixel grid, which is what a
DICOM Structured Report must reference.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddet.errors import MedDetError

__all__ = ["SagittalSeries", "load_series"]


@dataclass(frozen=True)
class Canon:
    """How a source pixel grid becomes the canonical one: transpose first, then flips.

    Attributes:
        transpose: the source rows run along the patient's feet-head axis.
        flip_rows: after the transpose, the top row is inferior.
        flip_cols: after the transpose, the left column is posterior.
        shape: canonical ``(rows, cols)``.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    shape: tuple[int, int] = (0, 0)

    def apply(self, arr: np.ndarray) -> np.ndarray:
        out = arr.T if self.transpose else arr
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def points_to_source(self, pts: np.ndarray) -> np.ndarray:
        """``[K, 2]`` canonical ``(x, y)`` (pixel edges) → source ``(column, row)``."""
        pts = np.asarray(pts, np.float64).copy()
        h, w = self.shape
        if self.flip_cols:
            pts[:, 0] = w - pts[:, 0]
        if self.flip_rows:
            pts[:, 1] = h - pts[:, 1]
        if self.transpose:
            pts = pts[:, ::-1]
        return pts


@dataclass
class SagittalSeries:
    """One sagittal series, slices ordered from the patient's left to right.

    Attributes:
        path: what was given on the command line.
        kind: ``"dicom"`` or ``"nifti"``.
        images: canonical ``float32 [H, W]`` slices (superior top, anterior left).
        lateral_mm: position of each slice from the middle of the series, mm, positive
            towards the patient's left.
        pixel_mm: canonical ``(row_mm, col_mm)`` pixel size, or ``None`` when unknown.
        canon: the source → canonical transform (identity for NIfTI, whose reader already
            shows slices this way).
        headers: DICOM headers without pixel data, one per slice (empty for NIfTI).
        sources: file (DICOM) or ``file#k`` (NIfTI) of each slice, as shown in outputs.
        notes: remarks on how the series was read.
    """

    path: Path
    kind: str
    images: list[np.ndarray]
    lateral_mm: list[float]
    pixel_mm: tuple[float, float] | None
    canon: Canon
    headers: list[Any] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_arrays(cls, images, lateral_mm, pixel_mm=None, *, path: str = "arrays"
                    ) -> SagittalSeries:
        """A series from canonical ``[H, W]`` arrays (e.g. a rendered phantom series)."""
        images = [np.asarray(a, np.float32) for a in images]
        return cls(Path(path), "arrays", images, [float(v) for v in lateral_mm],
                   None if pixel_mm is None else (float(pixel_mm[0]), float(pixel_mm[1])),
                   Canon(shape=images[0].shape), [], [f"{path}#{k}" for k in range(len(images))])

    def __len__(self) -> int:
        return len(self.images)

    def middle(self, lateral_mm: float) -> list[int]:
        """Indices of the slices within ``lateral_mm`` of the middle (at least the one closest
        to it)."""
        pos = np.asarray(self.lateral_mm, float)
        picked = [int(k) for k in np.flatnonzero(np.abs(pos) <= lateral_mm + 1e-6)]
        return picked or [int(np.argmin(np.abs(pos)))]

    def to_source(self, box: np.ndarray) -> np.ndarray:
        """Canonical ``xyxy`` box → the corners ``[4, 2]`` ``(column, row)`` in the source
        file's pixels, clockwise from the top-left of the canonical box."""
        x1, y1, x2, y2 = (float(v) for v in box)
        pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        return self.canon.points_to_source(pts)


# --------------------------------------------------------------------------- loading
def load_series(path: str | Path) -> SagittalSeries:
    """Read a sagittal series: a folder of single-frame DICOM files (one series), a single
    DICOM file (rejected: one slice) or a NIfTI volume (``.nii``, ``.nii.gz``).

    Raises:
        MedDetError: the path holds no usable sagittal series of at least two slices.
    """
    from meddet.inference.sources import NIFTI_SUFFIXES, file_suffix

    path = Path(path)
    if not path.exists():
        raise MedDetError(f"series {path} does not exist; pass a folder of DICOM slices or a "
                          "NIfTI volume")
    if path.is_file() and file_suffix(path) in NIFTI_SUFFIXES:
        return _load_nifti(path)
    if path.is_file() and not _is_dicom(path):
        raise MedDetError(f"{path} is neither a NIfTI volume (.nii, .nii.gz) nor DICOM; pass a "
                          "folder of DICOM slices or a NIfTI volume")
    files = [path] if path.is_file() else _dicom_files(path)
    if not files:
        raise MedDetError(f"{path} holds no DICOM files; pass a folder of DICOM slices or a "
                          "NIfTI volume (.nii, .nii.gz)")
    return _load_dicom(path, files)


def _is_dicom(path: Path) -> bool:
    from meddet.inference.dicom import has_dicom_magic
    from meddet.inference.sources import DICOM_SUFFIXES, file_suffix

    return file_suffix(path) in DICOM_SUFFIXES or has_dicom_magic(path)


def _dicom_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.rglob("*"))
            if f.is_file() and not f.name.startswith(".") and _is_dicom(f)]


def _read_header(path: Path):
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        from meddet.inference.sources import one_line

        raise MedDetError(f"{path} is not a readable DICOM file ({one_line(exc)}); remove it "
                          "from the series folder") from exc


def _vec(ds, keyword: str, n: int, where: Path) -> np.ndarray:
    val = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in val], float)
    except (TypeError, ValueError):
        arr = np.zeros(0)
    if arr.shape != (n,):
        raise MedDetError(f"{where} has no usable {keyword}; a report needs the slice geometry "
                          "of every file")
    return arr


def _plane_name(normal: np.ndarray) -> str:
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _load_dicom(path: Path, files: list[Path]) -> SagittalSeries:
    headers = [(f, _read_header(f)) for f in files]
    # Structured reports, presentation states and key-object notes often sit beside the images
    # of an exported series: only objects with an image matrix (Rows) are slices.
    images = [(f, ds) for f, ds in headers if "Rows" in ds]
    skipped = len(headers) - len(images)
    headers = images
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds in headers})
    if len(uids) > 1:
        raise MedDetError(f"{path} mixes {len(uids)} series (different Series Instance UIDs); "
                          "pass the folder of one series")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in headers]
    if any(n > 1 for n in frames):
        raise MedDetError(f"{path}: multi-frame (enhanced) DICOM is not supported; export the "
                          "series as single-frame files")
    if len(headers) < 2:
        raise MedDetError(f"{path}: the series has {len(headers)} slice(s); a report needs at "
                          "least 2 neighbouring sagittal slices")
    f0, ds0 = headers[0]
    iop = _vec(ds0, "ImageOrientationPatient", 6, f0)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    plane = _plane_name(normal)
    if plane != "sagittal":
        raise MedDetError(f"{path}: the slices are {plane} (slice normal "
                          f"{np.round(normal, 2).tolist()} in patient LPS axes); meddet report "
                          "needs a sagittal series")
    size0 = (int(ds0.Rows), int(ds0.Columns))
    positions = []
    for f, ds in headers:
        if not np.allclose(_vec(ds, "ImageOrientationPatient", 6, f), iop, atol=1e-3):
            raise MedDetError(f"{path}: {f.name} has another orientation than {f0.name}; pass "
                              "one series of parallel slices")
        if (int(ds.Rows), int(ds.Columns)) != size0:
            raise MedDetError(f"{path}: {f.name} is {ds.Rows}x{ds.Columns}, {f0.name} "
                              f"{size0[0]}x{size0[1]}; the slices of a series share one size")
        positions.append(float(np.dot(normal, _vec(ds, "ImagePositionPatient", 3, f))))
    if len(set(np.round(positions, 3))) != len(positions):
        raise MedDetError(f"{path}: two files share one slice position; pass one series "
                          "without duplicates")
    # Order from the patient's left (+X in LPS) to right.
    left = np.sign(normal[0])
    order = sorted(range(len(headers)), key=lambda i: -left * positions[i])
    pos = np.asarray([left * positions[i] for i in order])
    lateral = pos - (pos.max() + pos.min()) / 2

    # Canonical frame: columns posterior (+Y in LPS), rows inferior (-Z).
    transpose = bool(abs(row[2]) > abs(row[1]))
    x_dir, y_dir = (col, row) if transpose else (row, col)
    canon_shape = size0[::-1] if transpose else size0
    canon = Canon(transpose, bool(y_dir[2] > 0), bool(x_dir[1] < 0), canon_shape)

    from meddet.inference.dicom import read_dicom_file
    from meddet.inference.sources import Skip, SliceSpec

    images, sources, spacing = [], [], None
    for i in order:
        (item,) = list(read_dicom_file(headers[i][0], SliceSpec("all")))
        if isinstance(item, Skip):
            raise MedDetError(f"{item.source}: {item.reason}")
        images.append(canon.apply(item.array))
        sources.append(item.source)
        spacing = spacing or item.spacing
    pixel_mm = None if spacing is None else (spacing[::-1] if transpose else spacing)
    notes = [f"{skipped} DICOM object(s) without an image (e.g. reports) ignored"] if skipped \
        else []
    if canon.transpose or canon.flip_rows or canon.flip_cols:
        notes.append("slices turned to superior-top, anterior-left for the detector")
    return SagittalSeries(path, "dicom", images, [float(v) for v in lateral],
                          None if pixel_mm is None else (float(pixel_mm[0]), float(pixel_mm[1])),
                          canon, [headers[i][1] for i in order], sources, notes)


def _load_nifti(path: Path) -> SagittalSeries:
    import nibabel as nib
    from nibabel.orientations import io_orientation

    from meddet.inference.nifti import read_nifti
    from meddet.inference.sources import Skip, SliceSpec

    items = list(read_nifti(path, SliceSpec("all")))
    bad = [i for i in items if isinstance(i, Skip)]
    if bad:
        raise MedDetError(f"{path}: {bad[0].reason}")
    if len(items) < 2:
        raise MedDetError(f"{path}: the volume has {len(items)} sagittal slice(s); a report "
                          "needs at least 2")
    affine = nib.load(path).affine
    ornt = io_orientation(affine)
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    # Voxel size along the patient's R, A, S axes: a volume acquired in another plane has its
    # thickest voxels across that plane, and its sagittal reformats are too coarse to read.
    ras = [float(voxel[int(np.flatnonzero(ornt[:, 0] == j)[0])]) for j in range(3)]
    thick = int(np.argmax(ras))
    if ras[thick] > 1.5 * min(ras) and thick != 0:
        plane = ("sagittal", "coronal", "axial")[thick]
        raise MedDetError(f"{path}: the volume was acquired {plane} (voxels "
                          f"{ras[0]:.2g} x {ras[1]:.2g} x {ras[2]:.2g} mm R x A x S); meddet "
                          "report needs a sagittal series")
    n = len(items)
    # read_nifti counts slices from the patient's left; RAS index k lies (mid - k) voxels left.
    lateral = [((n - 1) / 2 - k) * ras[0] for k in range(n)]
    first = items[0]
    notes = list(dict.fromkeys(note for item in items for note in item.notes))
    return SagittalSeries(path, "nifti", [i.array for i in items], lateral, first.spacing,
                          Canon(shape=first.array.shape), [],
                          [f"{path}#{i.index}" for i in items], notes)
