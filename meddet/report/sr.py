"""The report as a DICOM Structured Report (Comprehensive 3D SR, TID 1500 Measurement Report).

Written with ``highdicom``. One measurement group per disc level:

* an assessed level is a *Planar ROI* group (TID 1410): tracking identifier ``disc C5/6``,
  finding type = the called class (private coding scheme ``99MEDDET``), finding site = the
  SNOMED CT "Level of C5/C6 intervertebral disc" code, the supporting box as a closed
  POLYLINE in the pixel coordinates of the key slice (which it references by SOP Instance
  UID), the algorithm's name and version, and the confidence as "Certainty of Finding"
  (DCM 111012) in percent;
* a level not assessed is an image-level group (TID 1501) with the same tracking identifier
  and finding site and the qualitative evaluation "Finding" = "Not Evaluated" (SCT 373121007).

Privacy: the SR copies from the source images only the Type 1 and 2 attributes of the
Patient and General Study modules (:data:`COPIED_FROM_SOURCE`), which the standard requires
of an object in the same study; optional ones that ``highdicom`` would copy too (Study
Description, patient age, size and weight, the source's equipment and institution) are
removed. The SR names ``meddet`` as the device observer and manufacturer.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np

from meddet.report.build import SpineReport
from meddet.report.series import SagittalSeries

__all__ = ["COPIED_FROM_SOURCE", "PRIVATE_SCHEME", "read_sr_findings", "sr_bytes", "sr_dataset"]

PRIVATE_SCHEME = "99MEDDET"
_LEVEL_CODES = {  # SNOMED CT "Level of .../... intervertebral disc"
    "C2/3": "243902007", "C3/4": "243903002", "C4/5": "243904008", "C5/6": "243905009",
    "C6/7": "243906005", "C7/T1": "243925008", "T1/2": "243908006", "T2/3": "243909003",
    "T3/4": "243910008", "T4/5": "243911007", "T5/6": "243912000", "T6/7": "243913005",
    "T7/8": "243914004", "T8/9": "243915003", "T9/10": "243916002", "T10/11": "243917006",
    "T11/12": "243918001", "T12/L1": "243926009",
}
_CODE_LEVELS = {v: k for k, v in _LEVEL_CODES.items()}
# What the SR takes from the source headers: the Type 1 and 2 attributes of the Patient and
# General Study modules.
COPIED_FROM_SOURCE = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
})
# Attributes the SR sets itself that may happen to equal the source's.
_OWN = frozenset({"SpecificCharacterSet", "Manufacturer", "Modality", "InstanceNumber"})


def _level_meaning(level: str) -> str:
    a, b = level.split("/")
    b = b if b[0].isalpha() else a[0] + b
    return f"Level of {a}/{b} intervertebral disc"


def _class_code(name: str):
    from highdicom.sr import CodedConcept

    value = re.sub(r"[^A-Z0-9]", "", name.upper())[:16] or "CLASS"
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=name[:64])


def sr_dataset(report: SpineReport, series: SagittalSeries):
    """Build the SR (``highdicom.sr.Comprehensive3DSR``) of a report on a DICOM series.

    Raises:
        ValueError: the series is not DICOM (no source headers to reference).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from meddet import __version__

    if series.kind != "dicom" or not series.headers:
        raise ValueError("a DICOM SR references DICOM source images; this series has none")
    headers = series.headers
    first = headers[0]
    # Identical inputs give identical UIDs, so writing the same report twice is idempotent.
    seed = [first.SeriesInstanceUID, *(f"{f.level}:{f.finding}:{f.confidence}:{f.box}"
                                       for f in report.findings)]
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["meddet-device", report.model]), name="meddet",
        manufacturer_name="meddet", model_name=(report.model or "detector")[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    algorithm = hd.sr.AlgorithmIdentification(name=f"meddet {report.model}"[:64],
                                              version=__version__)
    groups = []
    for f in report.findings:
        tracking = hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[*seed, "tracking", f.level]),
            identifier=f"disc {f.level}")
        site = hd.sr.FindingSite(anatomic_location=hd.sr.CodedConcept(
            value=_LEVEL_CODES[f.level], scheme_designator="SCT",
            meaning=_level_meaning(f.level)))
        if f.assessed:
            corners = np.asarray(f.box_source, float)
            polyline = np.vstack([corners, corners[:1]])
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                source_image=hd.sr.SourceImageForRegion.from_source_image(headers[f.key_slice]))
            certainty = hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding,
                                          value=round(100.0 * float(f.confidence), 2),
                                          unit=codes.UCUM.Percent, algorithm_id=algorithm)
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, referenced_region=region,
                finding_type=_class_code(f.finding), finding_sites=[site],
                algorithm_id=algorithm, measurements=[certainty]))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=tracking, finding_sites=[site], algorithm_id=algorithm,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                    name=codes.DCM.Finding, value=codes.SCT.NotEvaluated)]))
    content = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups)
    sr = hd.sr.Comprehensive3DSR(
        evidence=headers, content=content,
        series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]), series_number=900,
        sop_instance_uid=generate_uid(entropy_srcs=[*seed, "instance"]), instance_number=1,
        manufacturer="meddet", is_complete=True, is_final=False, is_verified=False,
        series_description="meddet per-level disc report")
    # highdicom also copies optional study and patient attributes (e.g. Study Description);
    # keep only the identifiers the Patient and General Study modules require.
    for element in list(sr):
        if element.keyword in first and element.keyword not in COPIED_FROM_SOURCE \
                and element.keyword not in _OWN and element.value == first[element.keyword].value:
            del sr[element.tag]
    # It also describes the equipment that acquired the source images (institution, station):
    # optional, and not an identifier the SR needs.
    if "ContributingEquipmentSequence" in sr:
        del sr.ContributingEquipmentSequence
    return sr


def sr_bytes(report: SpineReport, series: SagittalSeries) -> bytes:
    """The SR of :func:`sr_dataset` as a DICOM Part 10 file."""
    buf = io.BytesIO()
    sr_dataset(report, series).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_sr_findings(source: Any) -> list[dict[str, Any]]:
    """Read the per-level findings back from an SR written by :func:`sr_bytes`.

    Args:
        source: a path, a file object or a ``pydicom.Dataset``.

    Returns:
        One dict per level, in document order: ``level``, ``finding`` (``"not assessed"``
        for a level without a disc), ``confidence`` (0-1 or ``None``), ``box_source``
        (corners ``[4, 2]`` ``(column, row)`` or ``None``) and ``referenced_sop_instance_uid``.
    """
    import highdicom as hd
    import pydicom

    ds = source if isinstance(source, pydicom.Dataset) else pydicom.dcmread(source)
    report = hd.sr.Comprehensive3DSR.from_dataset(ds).content
    out = []
    groups = list(report.get_planar_roi_measurement_groups()) + \
        list(report.get_image_measurement_groups())
    for g in groups:
        level = _CODE_LEVELS.get(g.finding_sites[0].value.value) if g.finding_sites else None
        item: dict[str, Any] = {"level": level, "finding": "not assessed", "confidence": None,
                                "box_source": None, "referenced_sop_instance_uid": None}
        if isinstance(g, hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations):
            item["finding"] = g.finding_type.meaning
            (m,) = g.get_measurements()
            item["confidence"] = float(m.value) / 100.0
            roi = g.roi
            item["box_source"] = np.asarray(roi.value)[:4].tolist()
            item["referenced_sop_instance_uid"] = \
                roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        out.append(item)
    order = {name: i for i, name in enumerate(_LEVEL_CODES)}
    return sorted(out, key=lambda d: order.get(d["level"], len(order)))
