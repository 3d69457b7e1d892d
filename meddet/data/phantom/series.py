"""A series of neighbouring sagittal slices through one phantom spine, and its DICOM files.

The default phantom draws one independent image per case. A clinical sagittal series is a
stack of parallel slices through the *same* spine, a few millimetres apart; this module renders
such a stack so that everything built on top of per-slice detections (grouping a disc across
slices, naming its level, a per-level report) can be tested against a known truth.

What changes from slice to slice, and what does not:

* The anatomy is one :class:`~meddet.data.phantom.model.Case`: bodies, discs, curve and pose
  are shared, so a disc sits at the same place on every slice.
* ``Case.lateral`` follows the slice's distance from the mid-line (in cord half-widths,
  :data:`CORD_HALF_WIDTH_MM`), so the cord and the posterior elements narrow off the mid-line.
* A herniation is focal across the body: it has a lateral centre and half-width
  (central or paracentral), and its depth falls off across the slices; on a slice where it is
  shallower than :data:`~meddet.data.phantom._common.MIN_SEVERITY` the disc is labelled
  non-protrusion. A level is a protrusion when it protrudes on at least one slice.
* Every slice gets its own noise and ghosting (a new acquisition seed).

Cases are drawn with :func:`~meddet.data.phantom.model.sample_case` and kept to views of the
whole neck (no tight crops) in which all six discs C2/3 ... C7/T1 are labelled, as in a
cervical sagittal series planned from the skull base to T1.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meddet.data.phantom._common import (
    DISC_NAMES,
    MIN_SEVERITY,
    NON_PROTRUSION_ID,
    PROTRUSION_ID,
    REF_PIXEL_MM,
    REF_SIZE,
    quantize,
    without_protrusion,
)
from meddet.data.phantom.model import Case, sample_case
from meddet.data.phantom.render import labelled, render_case

__all__ = [
    "CORD_HALF_WIDTH_MM",
    "PhantomSeries",
    "RenderedSeries",
    "render_series",
    "sample_series",
    "write_series_dicom",
]

# Half the transverse width of the cervical cord (about 12 mm across).
CORD_HALF_WIDTH_MM = 6.0
# Largest ``Case.lateral`` the renderer draws (its sampling range).
_MAX_LATERAL = 0.75
# The DICOM geometry of a sagittal slice shown anterior-left, superior-top (LPS patient axes):
# columns run anterior -> posterior (+Y), rows run superior -> inferior (-Z).
SAGITTAL_ORIENTATION = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


# Header values that are the same in every file: a made-up study of an MR T2 spin echo.
_CONSTANT_TAGS = {
    "SpecificCharacterSet": "ISO_IR 100", "PatientBirthDate": "", "PatientSex": "O",
    "StudyTime": "120000", "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
    "StudyDescription": "Cervical spine MRI (phantom)", "InstitutionName": "MedDet Phantom Imaging",
    "Modality": "MR", "SeriesNumber": 1, "PatientPosition": "HFS",
    "SeriesDescription": "SAG T2 (phantom)", "BodyPartExamined": "CSPINE",
    "Manufacturer": "meddet", "PositionReferenceIndicator": "",
    "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"], "ScanningSequence": "SE",
    "SequenceVariant": "NONE", "ScanOptions": "", "MRAcquisitionType": "2D",
    "RepetitionTime": "3000", "EchoTime": "100", "EchoTrainLength": "16",
    "MagneticFieldStrength": "1.5", "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
    "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0,
}


@dataclass(frozen=True)
class PhantomSeries:
    """Everything that defines a phantom series.

    Attributes:
        case: the anatomy and the mid-line acquisition (``case.lateral`` is ignored).
        offsets_mm: position of each slice along the patient's right-to-left axis, mm
            (0 = mid-line, positive = patient's left), in increasing order.
        hernia_centre_mm: lateral centre of each disc's herniation, mm (C2/3 ... C7/T1).
        hernia_halfwidth_mm: lateral half-extent of each disc's herniation, mm.
        noise_seeds: acquisition seed of each slice.
    """

    case: Case
    offsets_mm: tuple[float, ...]
    hernia_centre_mm: tuple[float, ...]
    hernia_halfwidth_mm: tuple[float, ...]
    noise_seeds: tuple[int, ...]

    @property
    def pixel_mm(self) -> float:
        """Side of one image pixel, mm."""
        return REF_PIXEL_MM * REF_SIZE / self.case.size / self.case.scale

    def slice_case(self, k: int) -> Case:
        """The case rendered for slice ``k``: lateral position, herniations, noise seed."""
        case = self.case
        x = self.offsets_mm[k]
        discs = tuple(self._disc_at(j, x) for j in range(len(case.discs)))
        lateral = min(abs(x) / CORD_HALF_WIDTH_MM, _MAX_LATERAL)
        acq = case.acquisition
        if acq is not None:
            acq = dataclasses.replace(acq, seed=self.noise_seeds[k])
        return dataclasses.replace(case, lateral=float(lateral), discs=discs, acquisition=acq)

    def _disc_at(self, j: int, x: float):
        disc = self.case.discs[j]
        if not disc.is_protrusion:
            return disc
        u = (x - self.hernia_centre_mm[j]) / self.hernia_halfwidth_mm[j]
        depth = disc.protrusion * float(np.sqrt(max(0.0, 1.0 - u * u)))
        # The same threshold as the label of the default phantom (depth in px at 256 px).
        if depth * self.case.scale < MIN_SEVERITY:
            return without_protrusion(disc)
        return dataclasses.replace(disc, protrusion=depth)


def _all_discs_in_view(case: Case) -> bool:
    return bool(labelled(case, np.ones((len(DISC_NAMES), 4), np.float32)).all())


def sample_series(
    rng: np.random.Generator,
    size: int = 256,
    *,
    n_slices: int = 5,
    slice_mm: float = 3.0,
    protrusion_rate: float = 0.3,
    snr_range: tuple[float, float] = (8.0, 40.0),
) -> PhantomSeries:
    """Draw a series of ``n_slices`` parallel sagittal slices, ``slice_mm`` apart, centred on
    the mid-line of one spine.

    The case is drawn like a default phantom image (:func:`sample_case`) but always shows the
    whole neck with all six discs labelled; herniations are central or paracentral (centre
    within ±4 mm of the mid-line, half-width 4-9 mm).

    Raises:
        ValueError: ``n_slices < 1`` or ``slice_mm <= 0``.
    """
    if n_slices < 1 or slice_mm <= 0:
        raise ValueError(f"need n_slices >= 1 and slice_mm > 0, got {n_slices}, {slice_mm}")
    u = rng.uniform
    while True:
        case = sample_case(rng, size, snr_range=snr_range, protrusion_rate=protrusion_rate)
        if case.scale > 1.3:  # a tight crop: show the whole neck instead
            case = dataclasses.replace(case, scale=float(u(0.8, 1.3)),
                                       shift=(float(u(-12.0, 12.0)), float(u(-10.0, 10.0))))
        if _all_discs_in_view(case):
            break
    n_discs = len(case.discs)
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2) * slice_mm
    return PhantomSeries(
        case=case,
        offsets_mm=tuple(float(x) for x in offsets),
        hernia_centre_mm=tuple(float(u(-4.0, 4.0)) for _ in range(n_discs)),
        hernia_halfwidth_mm=tuple(float(u(4.0, 9.0)) for _ in range(n_discs)),
        noise_seeds=tuple(int(rng.integers(2**63 - 1)) for _ in range(n_slices)),
    )


@dataclass(frozen=True)
class RenderedSeries:
    """A rendered phantom series.

    Attributes:
        images: float32 ``[N, H, W]`` in [0, 1], slice ``k`` at ``offsets_mm[k]``.
        boxes: float32 ``[N, 6, 4]`` disc boxes C2/3 ... C7/T1 per slice, ``xyxy`` pixel
            edges (all zeros for a disc without a box on that slice).
        category_ids: int ``[N, 6]``: 1 protrusion, 2 non-protrusion, per slice and disc.
        offsets_mm: ``[N]`` right-to-left position of each slice, mm.
        pixel_mm: in-plane pixel side, mm.
        slice_mm: distance between neighbouring slices, mm.
    """

    images: np.ndarray
    boxes: np.ndarray
    category_ids: np.ndarray
    offsets_mm: np.ndarray
    pixel_mm: float
    slice_mm: float

    @property
    def level_names(self) -> tuple[str, ...]:
        return DISC_NAMES

    def level_truth(self) -> dict[str, int]:
        """Category id per level: protrusion when the disc protrudes on any slice."""
        cats = self.category_ids
        return {name: PROTRUSION_ID if (cats[:, j] == PROTRUSION_ID).any() else NON_PROTRUSION_ID
                for j, name in enumerate(DISC_NAMES)}


def render_series(series: PhantomSeries, *, artifacts: bool = True) -> RenderedSeries:
    """Render every slice of ``series`` (see :func:`~meddet.data.phantom.render.render_case`)."""
    out = [render_case(series.slice_case(k), artifacts=artifacts)
           for k in range(len(series.offsets_mm))]
    offsets = np.asarray(series.offsets_mm, np.float64)
    slice_mm = float(offsets[1] - offsets[0]) if len(offsets) > 1 else 0.0
    return RenderedSeries(
        images=np.stack([r.image for r in out]),
        boxes=np.stack([r.boxes for r in out]),
        category_ids=np.asarray([r.category_ids for r in out], np.int64),
        offsets_mm=offsets,
        pixel_mm=series.pixel_mm,
        slice_mm=slice_mm,
    )


def write_series_dicom(
    rendered: RenderedSeries,
    folder: str | Path,
    *,
    seed: int = 0,
    patient_name: str = "Doe^Jane",
    patient_id: str | None = None,
    orientation: tuple[float, ...] = SAGITTAL_ORIENTATION,
    series_uid: str | None = None,
    study_uid: str | None = None,
) -> list[Path]:
    """Write a rendered series as single-frame MR Image Storage files, one per slice.

    Pixels are stored as 12-bit unsigned values (``quantize`` to 16 bit, then >> 4). The
    geometry follows the rendering: ``orientation`` (default anterior-left, superior-top
    sagittal) and slice ``k`` at ``offsets_mm[k]`` along the patient's left axis. UIDs are
    derived from ``seed`` so that the same call writes the same files; ``series_uid`` and
    ``study_uid`` override them (two calls with one study UID make a study of two series).
    The header carries a made-up patient (name, ID), a study date and an institution name
    so that tests can check what a derived object copies.

    Returns:
        The written files, in slice order (``slice_000.dcm`` ...).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def uid(*parts) -> str:
        return generate_uid(entropy_srcs=["meddet-phantom-series", str(seed), *map(str, parts)])

    study_uid = study_uid or uid("study")
    series_uid = series_uid or uid("series")
    frame_uid = uid("frame", series_uid)
    n, h, w = rendered.images.shape
    px = rendered.pixel_mm
    row_dir = np.asarray(orientation[:3], float)
    col_dir = np.asarray(orientation[3:], float)
    # The image centre sits on the patient's origin; the slices step along the left axis.
    corner = -(w / 2) * px * row_dir - (h / 2) * px * col_dir
    date = datetime.date(2024, 1, 1) + datetime.timedelta(days=seed % 3650)
    paths = []
    for k in range(n):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MRImageStorage
        sop_uid = uid("instance", series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = pydicom.uid.MRImageStorage
        ds.SOPInstanceUID = sop_uid
        for keyword, value in _CONSTANT_TAGS.items():
            setattr(ds, keyword, value)
        ds.PatientName = patient_name
        ds.PatientID = patient_id or f"PHANTOM{seed:06d}"
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = date.strftime("%Y%m%d")
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.InstanceNumber = k + 1
        ds.SliceThickness = f"{max(rendered.slice_mm, 1.0):.3f}"
        if n > 1:
            ds.SpacingBetweenSlices = f"{rendered.slice_mm:.3f}"
        pos = corner + rendered.offsets_mm[k] * np.array([1.0, 0.0, 0.0])  # LPS: +X = left
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
        ds.PixelSpacing = [f"{px:.6f}", f"{px:.6f}"]
        ds.Rows, ds.Columns = h, w
        pixels = (quantize(rendered.images[k], 16) >> 4).astype(np.uint16)
        ds.PixelData = pixels.tobytes()
        path = folder / f"slice_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
