"""The report's key images as DICOM Secondary Capture, so a PACS shows them beside the series.

One RGB Secondary Capture image per key image of ``report.md`` (the overview and one per
assessed level, boxes and labels burned in), in a new series of the source study, written with
``highdicom``. Like the SR (:mod:`meddet.report.sr`), the images carry only the patient and
study identifiers listed in :data:`meddet.report.sr.COPIED_FROM_SOURCE`.
"""

from __future__ import annotations

import io

import numpy as np

from meddet.report.series import SagittalSeries

__all__ = ["key_image_files"]


def key_image_files(images: dict[str, bytes], series: SagittalSeries) -> dict[str, bytes]:
    """Secondary Capture files of key images.

    Args:
        images: PNG name → PNG bytes (RGB, as :mod:`meddet.report.write` renders them).
        series: the DICOM series they were drawn from.

    Returns:
        ``name.dcm`` → DICOM Part 10 bytes, in the order of ``images``.

    Raises:
        ValueError: the series is not DICOM.
    """
    import highdicom as hd
    from PIL import Image
    from pydicom.uid import generate_uid

    if series.kind != "dicom" or not series.headers:
        raise ValueError("Secondary Capture images belong to the study of a DICOM series")
    src = series.headers[0]
    seed = ["meddet-key-images", src.SeriesInstanceUID,
            *(f"{name}:{len(data)}" for name, data in images.items())]
    series_uid = generate_uid(entropy_srcs=[*seed, "series"])
    out: dict[str, bytes] = {}
    for i, (name, png) in enumerate(images.items()):
        with Image.open(io.BytesIO(png)) as img:
            pixels = np.asarray(img.convert("RGB"))
        sc = hd.sc.SCImage(
            pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", study_instance_uid=src.StudyInstanceUID,
            series_instance_uid=series_uid, series_number=901,
            sop_instance_uid=generate_uid(entropy_srcs=[*seed, name]), instance_number=i + 1,
            manufacturer="meddet", patient_id=src.get("PatientID"),
            patient_name=src.get("PatientName"), patient_birth_date=src.get("PatientBirthDate"),
            patient_sex=src.get("PatientSex") or None,
            accession_number=src.get("AccessionNumber"), study_id=src.get("StudyID"),
            study_date=src.get("StudyDate"), study_time=src.get("StudyTime"),
            referring_physician_name=src.get("ReferringPhysicianName"),
            # Upright sagittal: columns run posterior, rows run to the feet.
            patient_orientation=("P", "F"))
        sc.SeriesDescription = "meddet key images"
        sc.BurnedInAnnotation = "YES"  # level names and scores are drawn into the pixels
        # An unpaired body part: Laterality (Type 2C) is then absent.
        sc.BodyPartExamined = "CSPINE"
        buf = io.BytesIO()
        sc.save_as(buf, enforce_file_format=True)
        out[name.rsplit(".", 1)[0] + ".dcm"] = buf.getvalue()
    return out
