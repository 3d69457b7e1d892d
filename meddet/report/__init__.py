"""A per-level radiology report for one sagittal cervical series.

* :mod:`meddet.report.series` reads one series (DICOM folder or NIfTI) and checks it;
* :mod:`meddet.report.levels` groups detections across slices and names the disc levels;
* :mod:`meddet.report.build` runs the detector and makes one finding per level;
* :mod:`meddet.report.write` writes Markdown, key images and JSON;
* :mod:`meddet.report.sr` writes and reads the DICOM Structured Report (TID 1500).
"""

from meddet.report.build import (
    LevelFinding,
    ReportSettings,
    SpineReport,
    build_report,
    report_series,
)
from meddet.report.series import SagittalSeries, load_series
from meddet.report.write import ReportFiles, write_report

__all__ = [
    "LevelFinding",
    "ReportFiles",
    "ReportSettings",
    "SagittalSeries",
    "SpineReport",
    "build_report",
    "load_series",
    "report_series",
    "write_report",
]
