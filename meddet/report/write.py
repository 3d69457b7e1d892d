"""Writing a report: ``report.md`` with a key image per level, ``report.json``, and for DICOM
input ``report_sr.dcm`` (see :mod:`meddet.report.sr`) and the key images as DICOM Secondary
Capture in ``key_images/`` (see :mod:`meddet.report.sc`).

Everything is rendered in memory first and then written file by file with atomic writes, so a
failure while rendering leaves no partial report behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meddet._io import atomic_write_bytes, atomic_write_text
from meddet.inference.overlay import render_overlay
from meddet.report.build import NOT_ASSESSED, SCORE_RULE, SpineReport
from meddet.report.series import SagittalSeries

__all__ = ["ReportFiles", "render_markdown", "write_report"]

DISCLAIMER = ("Produced by software for research use; it is not a medical device and must not "
              "be used for diagnosis.")


@dataclass
class ReportFiles:
    """The files a report wrote (paths inside its folder)."""

    out_dir: Path
    markdown: Path
    json: Path
    images: list[Path] = field(default_factory=list)
    sr: Path | None = None
    secondary_capture: list[Path] = field(default_factory=list)


def _image_name(level: str) -> str:
    return "level_" + level.replace("/", "-") + ".png"


def _key_images(report: SpineReport, series: SagittalSeries) -> dict[str, bytes]:
    """One PNG per assessed level (its key slice, its box) and an overview of the middle
    slice with every level's box."""
    names = report.class_names
    out: dict[str, bytes] = {}
    for f in report.assessed:
        label = names.index(f.finding) if f.finding in names else 0
        out[_image_name(f.level)] = render_overlay(
            series.images[f.key_slice], np.asarray([f.box], np.float32),
            np.asarray([f.confidence]), np.asarray([label]),
            [f"{f.level} {n}" for n in names])
    assessed = report.assessed
    if assessed:
        mid = report.used_slices[len(report.used_slices) // 2]
        out["overview.png"] = render_overlay(
            series.images[mid], np.asarray([f.box for f in assessed], np.float32),
            np.asarray([f.confidence for f in assessed]), np.arange(len(assessed)),
            [f"{f.level} {f.finding}" for f in assessed])
    return out


def _fmt_slice(report: SpineReport, k: int | None, lateral: float | None) -> str:
    if k is None:
        return ""
    side = "" if lateral is None or abs(lateral) < 0.05 else \
        f", {abs(lateral):.1f} mm {'left' if lateral > 0 else 'right'}"
    return f"{k}{side}"


def render_markdown(report: SpineReport, *, sr_name: str | None = None,
                    sc_folder: str | None = None) -> str:
    """The human-readable report (Markdown, images referenced from ``images/``)."""
    s = report.settings
    used = report.used_slices
    lines = [
        "# Cervical spine: per-level findings",
        "",
        f"- Series: `{report.series}` ({report.kind}, {report.n_slices} sagittal slices)",
        f"- Detector: {report.model or 'unknown'}"
        + (f" (`{report.checkpoint}`)" if report.checkpoint else "")
        + f", detections scoring at least {s.score_thr:g}",
        f"- Slices read: {len(used)} within {s.lateral_mm:g} mm of the middle slice "
        f"({used[0]}-{used[-1]})" if used else "- Slices read: none",
        f"- Level naming: {s.assumption}"
        + (f"; disc spacing {report.pitch_mm:.1f} mm ({report.pitch_source})"
           if report.pitch_mm else ""),
        f"- Per-level confidence: {SCORE_RULE.format(positive=s.positive, thr=s.positive_thr)}",
        f"- A disc is named when detected on at least {s.min_slices} slice(s)",
    ]
    if sr_name:
        lines.append(f"- DICOM Structured Report: `{sr_name}`")
    if sc_folder:
        lines.append(f"- Key images as DICOM Secondary Capture: `{sc_folder}/`")
    lines += ["", "| Level | Finding | Confidence | Key slice | Detected on slices |",
              "|---|---|---|---|---|"]
    for f in report.findings:
        conf = "" if f.confidence is None else f"{f.confidence:.2f}"
        slices = ", ".join(str(k) for k in f.slices)
        lines.append(f"| {f.level} | {f.finding} | {conf} | "
                     f"{_fmt_slice(report, f.key_slice, f.lateral_mm)} | {slices} |")
    missing = [f.level for f in report.findings if f.finding == NOT_ASSESSED]
    if missing:
        lines += ["", f"Not assessed (no disc named at this level): {', '.join(missing)}."]
    if report.set_aside:
        lines += ["", "Detections not used for a level:"]
        for a in report.set_aside:
            lines.append(f"- at (x, y) = ({a['centre'][0]:g}, {a['centre'][1]:g}) px on slices "
                         f"{', '.join(map(str, a['slices']))}, best score {a['best_score']:.2f}: "
                         f"{a['reason']}")
    for note in report.notes:
        lines += ["", f"Note: {note}"]
    if report.assessed:
        lines += ["", "## Key images", "", "![all levels on the middle slice](images/overview.png)"]
        for f in report.assessed:
            lines += ["", f"### {f.level}: {f.finding} ({f.confidence:.2f}), slice "
                      f"{_fmt_slice(report, f.key_slice, f.lateral_mm)}", "",
                      f"![{f.level}](images/{_image_name(f.level)})"]
    lines += ["", f"_{DISCLAIMER}_", ""]
    return "\n".join(lines)


def write_report(report: SpineReport, series: SagittalSeries, out_dir: str | os.PathLike, *,
                 sr: bool = True, sc: bool = True) -> ReportFiles:
    """Write ``report.md``, ``report.json``, ``images/*.png`` and, for DICOM input,
    ``report_sr.dcm`` (when ``sr``) and ``key_images/*.dcm`` (when ``sc``) into ``out_dir``.

    Returns:
        The :class:`ReportFiles` written.
    """
    out = Path(out_dir)
    sr_bytes = None
    if sr and series.kind == "dicom":
        from meddet.report.sr import sr_bytes as make_sr

        sr_bytes = make_sr(report, series)
    images = _key_images(report, series)
    sc_files: dict[str, bytes] = {}
    if sc and series.kind == "dicom" and images:
        from meddet.report.sc import key_image_files

        sc_files = key_image_files(images, series)
    sr_name = "report_sr.dcm" if sr_bytes is not None else None
    text = render_markdown(report, sr_name=sr_name, sc_folder="key_images" if sc_files else None)
    doc = report.as_dict()
    doc["files"] = {"markdown": "report.md", "images": [f"images/{n}" for n in images],
                    "sr": sr_name,
                    "secondary_capture": [f"key_images/{n}" for n in sc_files]}

    files = ReportFiles(out, out / "report.md", out / "report.json")
    for name, data in images.items():
        atomic_write_bytes(out / "images" / name, data)
        files.images.append(out / "images" / name)
    for name, data in sc_files.items():
        atomic_write_bytes(out / "key_images" / name, data)
        files.secondary_capture.append(out / "key_images" / name)
    if sr_bytes is not None:
        files.sr = out / sr_name
        atomic_write_bytes(files.sr, sr_bytes)
    atomic_write_text(files.json, json.dumps(doc, indent=2) + "\n")
    atomic_write_text(files.markdown, text)
    return files
