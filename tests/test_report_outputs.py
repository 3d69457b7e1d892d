"""`meddet report` on DICOM and NIfTI series: reading one series, the written files, the DICOM
Structured Report (round trip, identifiers, dciodvfy) and the bad series it refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_report_levels import CLASSES, truth_detections

from meddet.cli import main
from meddet.data.phantom.series import render_series, sample_series, write_series_dicom
from meddet.errors import MedDetError
from meddet.report import build_report, load_series, write_report
from meddet.report.sr import COPIED_FROM_SOURCE, read_sr_findings

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A rendered 5-slice, 128 px phantom series and its DICOM folder."""
    rendered = render_series(sample_series(np.random.default_rng(4), 128, n_slices=5))
    folder = tmp_path_factory.mktemp("dicom") / "sag_t2"
    write_series_dicom(rendered, folder, seed=4)
    return rendered, folder


@pytest.fixture(scope="module")
def report_dir(phantom, tmp_path_factory):
    """A report of the DICOM phantom series from simulated detections (see
    ``truth_detections``), written with its SR."""
    rendered, folder = phantom
    series = load_series(folder)
    n = len(series)
    # The reader orders slices from the patient's left; the renderer from the right.
    dets = {n - 1 - k: d for k, d in truth_detections(
        rendered, np.random.default_rng(0), miss=0.1, fp_rate=0.2).items()}
    report = build_report(series, dets, CLASSES)
    out = tmp_path_factory.mktemp("report")
    write_report(report, series, out)
    return report, series, out


def test_a_dicom_series_is_read_in_order_with_its_geometry(phantom):
    rendered, folder = phantom
    series = load_series(folder)
    assert series.kind == "dicom" and len(series) == 5
    np.testing.assert_allclose(series.lateral_mm, [6, 3, 0, -3, -6])  # left to right
    assert series.pixel_mm == pytest.approx((rendered.pixel_mm, rendered.pixel_mm), rel=1e-5)
    # 12-bit pixels of the rendering, the most-left slice first, unturned (already canonical).
    expected = np.rint(rendered.images[-1] * 65535).astype(np.uint16) >> 4
    np.testing.assert_array_equal(series.images[0], expected.astype(np.float32))
    assert not (series.canon.transpose or series.canon.flip_rows or series.canon.flip_cols)
    assert series.middle(3.0) == [1, 2, 3] and series.middle(0.0) == [2]


def test_a_turned_series_is_read_upright_and_boxes_map_back(phantom, tmp_path):
    """Rows stored inferior to superior and columns along the feet-head axis: the reader turns
    the slices upright and :meth:`to_source` maps a box back to the file's own pixels."""
    rendered, _ = phantom
    flipped = type(rendered)(rendered.images[:, ::-1, :].transpose(0, 2, 1).copy(),
                             rendered.boxes, rendered.category_ids, rendered.offsets_mm,
                             rendered.pixel_mm, rendered.slice_mm)
    # Stored pixel (r, c) is upright (H - 1 - c, r): rows run superior (+Z), columns
    # posterior (+Y).
    write_series_dicom(flipped, tmp_path, orientation=(0, 0, 1, 0, 1, 0))
    series = load_series(tmp_path)
    assert (series.canon.transpose, series.canon.flip_rows, series.canon.flip_cols) == \
        (True, True, False)
    upright = np.rint(rendered.images[2] * 65535).astype(np.uint16) >> 4
    np.testing.assert_array_equal(series.images[2], upright.astype(np.float32))
    # Upright (x, y) lies at stored (column, row) = (H - y, x).
    h = rendered.images.shape[1]
    corners = series.to_source(np.array([10.0, 20.0, 30.0, 26.0]))
    np.testing.assert_allclose(corners, [[h - 20, 10], [h - 20, 30], [h - 26, 30], [h - 26, 10]])


def test_non_image_objects_beside_the_slices_are_ignored(phantom, report_dir, tmp_path):
    """An exported series folder may hold reports too (here: the SR of this very series)."""
    folder = tmp_path / "export"
    shutil.copytree(phantom[1], folder)
    shutil.copy(report_dir[2] / "report_sr.dcm", folder / "zz_sr.dcm")
    series = load_series(folder)
    assert len(series) == 5
    assert series.notes == ["1 DICOM object(s) without an image (e.g. reports) ignored"]


def test_report_files_list_every_level(report_dir):
    report, _, out = report_dir
    doc = json.loads((out / "report.json").read_text())
    assert [lv["level"] for lv in doc["levels"]] == ["C2/3", "C3/4", "C4/5", "C5/6", "C6/7",
                                                      "C7/T1"]
    assert doc["level_assumption"].startswith("the most cranial disc found is C2/3 (assumed")
    assert "highest score over the slices" in doc["score_combination"]
    md = (out / "report.md").read_text()
    for f in report.findings:
        assert f"| {f.level} | {f.finding} |" in md
    for name in doc["files"]["images"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(doc["files"]["images"]) == len(report.assessed) + 1  # + the overview
    assert doc["files"]["sr"] == "report_sr.dcm"


def test_the_sr_reads_back_into_the_same_findings(report_dir):
    report, series, out = report_dir
    back = read_sr_findings(out / "report_sr.dcm")
    assert [b["level"] for b in back] == [f.level for f in report.findings]
    uids = [h.SOPInstanceUID for h in series.headers]
    for f, b in zip(report.findings, back):
        assert b["finding"] == f.finding
        if f.assessed:
            assert b["confidence"] == pytest.approx(f.confidence, abs=1e-4)
            np.testing.assert_allclose(b["box_source"], f.box_source, atol=1e-3)
            assert b["referenced_sop_instance_uid"] == uids[f.key_slice]
        else:
            assert b["confidence"] is None and b["box_source"] is None
    assert any(f.assessed for f in report.findings)


def test_the_sr_copies_the_study_and_patient_identifiers_and_nothing_else(report_dir):
    _, series, out = report_dir
    sr = pydicom.dcmread(out / "report_sr.dcm")
    src = series.headers[0]
    shared = {el.keyword for el in sr if el.keyword in src and src[el.keyword].value == el.value}
    assert shared == COPIED_FROM_SOURCE | {"SpecificCharacterSet", "Manufacturer"}
    assert sr.PatientName == "Doe^Jane" and sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.Modality == "SR" and sr.SeriesInstanceUID != src.SeriesInstanceUID
    text = str(sr)
    for value in (src.InstitutionName, src.SeriesDescription, src.StudyDescription):
        assert value not in text


def test_the_key_images_are_secondary_captures_of_the_png_with_the_same_identifiers(
        report_dir):
    from PIL import Image

    _, series, out = report_dir
    doc = json.loads((out / "report.json").read_text())
    pngs, dcms = doc["files"]["images"], doc["files"]["secondary_capture"]
    assert [Path(p).stem for p in dcms] == [Path(p).stem for p in pngs]
    src = series.headers[0]
    for png, dcm in zip(pngs, dcms):
        sc = pydicom.dcmread(out / dcm)
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.BurnedInAnnotation == "YES"
        with Image.open(out / png) as img:
            np.testing.assert_array_equal(sc.pixel_array, np.asarray(img.convert("RGB")))
        shared = {el.keyword for el in sc if el.keyword in src
                  and src[el.keyword].value == el.value and el.keyword.startswith(
                      ("Patient", "Study", "Accession", "Referring", "Institution", "Series"))}
        assert shared == COPIED_FROM_SOURCE


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_finds_no_error_in_the_sr_and_the_key_images(report_dir):
    _, _, out = report_dir
    files = [out / "report_sr.dcm", *sorted((out / "key_images").glob("*.dcm"))]
    assert len(files) >= 2
    for path in files:
        run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (run.stdout + run.stderr).splitlines()
        assert lines[0] in ("Comprehensive3DSR", "SCImage"), lines
        assert not [ln for ln in lines if ln.startswith("Error")], (path.name, lines)


# --------------------------------------------------------------------------- the command
def _bad_series(kind: str, tmp_path: Path, phantom) -> Path:
    rendered, folder = phantom
    if kind == "one slice":
        one = tmp_path / "one"
        one.mkdir()
        shutil.copy(sorted(folder.glob("*.dcm"))[0], one)
        return one
    if kind == "axial":
        write_series_dicom(rendered, tmp_path / "axial", orientation=AXIAL)
        return tmp_path / "axial"
    if kind == "mixed":
        write_series_dicom(rendered, tmp_path / "mixed" / "a", seed=1)
        write_series_dicom(rendered, tmp_path / "mixed" / "b", seed=2)
        return tmp_path / "mixed"
    if kind == "png":
        from PIL import Image

        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.png")
        return tmp_path / "slice.png"
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


@pytest.mark.parametrize("kind,message", [
    ("one slice", "has 1 slice(s); a report needs at least 2"),
    ("axial", "the slices are axial"),
    ("mixed", "mixes 2 series"),
    ("empty", "holds no DICOM files"),
    ("png", "is neither a NIfTI volume (.nii, .nii.gz) nor DICOM"),
])
def test_a_bad_series_is_one_line_exit_2_and_no_output(kind, message, phantom, tmp_path,
                                                       capsys, random_mbv2_ckpt, monkeypatch):
    path = _bad_series(kind, tmp_path, phantom)
    out = tmp_path / "out"
    code = main(["report", str(path), "--model", str(random_mbv2_ckpt), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("Error:") and len(err.splitlines()) == 1 and message in err
    assert not out.exists()
    # Without --out, no runs/report/expN is made either.
    monkeypatch.chdir(tmp_path)
    assert main(["report", str(path), "--model", str(random_mbv2_ckpt)]) == 2
    assert not (tmp_path / "runs").exists()


def test_a_bad_first_level_is_refused_before_reading(phantom, tmp_path, capsys, random_mbv2_ckpt):
    code = main(["report", str(phantom[1]), "--model", str(random_mbv2_ckpt),
                 "--first-level", "C9/10", "--out", str(tmp_path / "out")])
    assert code == 2 and "--first-level 'C9/10'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_writes_a_report_and_an_sr_on_dicom(phantom, tmp_path, capsys,
                                                        random_mbv2_ckpt):
    out = tmp_path / "rep"
    code = main(["report", str(phantom[1]), "--model", str(random_mbv2_ckpt), "--out", str(out),
                 "--score-thr", "0", "--first-level", "C3/4"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "C3/4 (as given with --first-level)" in printed
    doc = json.loads((out / "report.json").read_text())
    assert doc["used_slices"] == [0, 1, 2, 3, 4] and doc["kind"] == "dicom"
    back = read_sr_findings(out / "report_sr.dcm")
    assert [(b["level"], b["finding"]) for b in back] == \
        [(lv["level"], lv["finding"]) for lv in doc["levels"]]
    assert (out / "config.yaml").exists()


def test_the_command_reports_a_nifti_volume_without_an_sr(phantom, tmp_path, capsys,
                                                          random_mbv2_ckpt):
    import nibabel as nib

    rendered, _ = phantom
    # RAS+ voxel axes (x left to right, y posterior to anterior, z inferior to superior):
    # the rendered slice k (anterior left, superior top) stored as vol[k, ::-1, ::-1].T-wise.
    vol = np.stack([img[::-1, ::-1].T for img in rendered.images])  # [R, A, S]
    px = rendered.pixel_mm
    path = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([3.0, px, px, 1.0])), path)
    series = load_series(path)
    np.testing.assert_allclose(series.images[0], rendered.images[0])
    np.testing.assert_allclose(series.lateral_mm, [6, 3, 0, -3, -6])
    out = tmp_path / "rep"
    assert main(["report", str(path), "--model", str(random_mbv2_ckpt), "--out", str(out),
                 "--score-thr", "0"]) == 0
    assert json.loads((out / "report.json").read_text())["files"]["sr"] is None
    assert not (out / "report_sr.dcm").exists() and (out / "report.md").exists()


def test_an_axially_acquired_nifti_is_refused(tmp_path):
    import nibabel as nib

    path = tmp_path / "ax.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.diag([1.0, 1.0, 5.0, 1.0])),
             path)
    with pytest.raises(MedDetError, match="acquired axial"):
        load_series(path)
