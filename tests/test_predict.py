"""`meddet predict` and its readers, on the DICOM / NIfTI files that ship with pydicom / nibabel."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
import torch
from nibabel.testing import data_path as NIBABEL_DATA
from PIL import Image

from meddet.cli import main
from meddet.errors import MedDetError
from meddet.inference import Predictor, Skip, Slice, predict_inputs
from meddet.inference.readers import (
    discover_inputs,
    iter_slices,
    output_stem,
    parse_slices,
)

PYDICOM_DATA = Path(pydicom.data.__file__).parent / "test_files"
# Real data beside the repository (``../shared/data``); MEDDET_SHARED_DATA points elsewhere.
SHARED = Path(os.environ.get("MEDDET_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL_MRI = SHARED / "real-mri"
CLASS_NAMES = ["protrusion", "non-protrusion"]
IMG_SIZE = 64


def dicom_file(name: str) -> Path:
    # Only files shipped inside the wheel: get_testdata_file would try to download others.
    path = PYDICOM_DATA / name
    if not path.is_file():
        pytest.skip(f"pydicom does not ship {name}")
    return path


def nifti_file(name: str) -> Path:
    path = Path(NIBABEL_DATA) / name
    if not path.is_file():
        pytest.skip(f"nibabel does not ship {name}")
    return path


def read_all(path: Path, slices: str = "all") -> list[Slice | Skip]:
    spec = parse_slices(slices)
    return [item for src in discover_inputs([path]) for item in iter_slices(src, spec)]


def small_model() -> torch.nn.Module:
    from meddet.models import build_detector

    torch.manual_seed(0)
    # The nmODE path is covered by test_export; a plain GFL model keeps these tests fast.
    model = build_detector("gfl_mbv2", num_classes=2)
    with torch.no_grad():
        # Spread the class logits around 0 so a fresh model reports detections above 0.3
        # (the default init gives every location the prior 0.01).
        torch.nn.init.normal_(model.head.gfl_cls.weight, std=0.05)
        model.head.gfl_cls.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from meddet.engine.checkpoint import make_meta, save_checkpoint

    model = small_model()
    meta = make_meta(model_name="gfl_mbv2", num_classes=2, class_names=CLASS_NAMES,
                     img_size=IMG_SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta})
    return path


# --------------------------------------------------------------------------- readers
def test_parse_slices():
    assert parse_slices("mid").select(7) == ([3], [])
    assert parse_slices("all").select(3) == ([0, 1, 2], [])
    assert parse_slices("1, 4,9").select(5) == ([1, 4], [9])
    for bad in ("", "-1", "a,b", "1,,2", "2,2"):
        with pytest.raises(MedDetError):
            parse_slices(bad)


def test_dicom_transfer_syntaxes_decode_to_the_same_pixels():
    ref = read_all(dicom_file("MR_small.dcm"))[0]
    assert isinstance(ref, Slice) and ref.array.shape == (64, 64)
    assert ref.spacing == (0.3125, 0.3125) and ref.index is None and ref.stem == "MR_small"
    for name in ("MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm",
                 "MR_small_RLE.dcm", "MR_small_padded.dcm", "MR_small_jp2klossless.dcm",
                 "MR_small_jpeg_ls_lossless.dcm"):
        path = PYDICOM_DATA / name
        if not path.is_file():
            continue
        (item,) = read_all(path)
        if isinstance(item, Skip):
            # A lossless syntax without an installed decoder: the reason names the extra.
            assert "meddet[dicom-codecs]" in item.reason and "pylibjpeg" in item.reason, item
            continue
        np.testing.assert_array_equal(item.array, ref.array, err_msg=name)


def test_bad_dicom_inputs_are_skipped_with_reasons(tmp_path):
    (trunc,) = read_all(dicom_file("MR_truncated.dcm"))
    assert isinstance(trunc, Skip) and "pixel data" in trunc.reason
    fake = tmp_path / "notes.dcm"
    fake.write_text("this is a text file, not DICOM\n" * 10)
    (item,) = read_all(fake)
    assert isinstance(item, Skip) and "not a DICOM file" in item.reason
    sr = PYDICOM_DATA / "test-SR.dcm"
    if sr.is_file():
        (item,) = read_all(sr)
        assert isinstance(item, Skip) and item.reason.startswith("not an image")


def test_dicom_rescale_and_monochrome1(tmp_path):
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    raw = ds.pixel_array.astype(np.float32)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.PhotometricInterpretation = "MONOCHROME1"
    path = tmp_path / "mono1.dcm"
    ds.save_as(path)
    (item,) = read_all(path)
    rescaled = raw * 2 - 100
    np.testing.assert_allclose(item.array, rescaled.max() + rescaled.min() - rescaled)


def test_dicom_folder_with_distinct_positions_is_a_series(tmp_path):
    src = pydicom.dcmread(dicom_file("MR_small.dcm"))
    for i, z in enumerate([30.0, 10.0, 20.0]):  # written out of order on purpose
        src.ImagePositionPatient = [0.0, 0.0, z]
        src.InstanceNumber = i + 1
        src.save_as(tmp_path / f"IM{i}.dcm")
    (series,) = discover_inputs([tmp_path])
    assert series.kind == "dicom_series"
    assert [p.name for p in series.members] == ["IM1.dcm", "IM2.dcm", "IM0.dcm"]
    (mid,) = read_all(tmp_path, "mid")
    assert (mid.index, mid.stem) == (1, "IM2")
    items = read_all(tmp_path, "0,5")
    assert isinstance(items[0], Slice) and isinstance(items[1], Skip)
    # Copies of one slice (same position) are separate images, not a series.
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("MR_small.dcm", "MR_small_implicit.dcm"):
        shutil.copy(dicom_file(name), copies / name)
    assert [s.kind for s in discover_inputs([copies])] == ["dicom", "dicom"]


def test_nifti_sagittal_slices_in_canonical_orientation(tmp_path):
    path = nifti_file("anatomical.nii")
    img = nib.load(path)
    canon = nib.as_closest_canonical(img).get_fdata(dtype=np.float32)
    items = read_all(path)
    assert len(items) == canon.shape[0]
    k = canon.shape[0] // 2
    (mid,) = read_all(path, "mid")
    # Superior at the top, anterior on the left.
    np.testing.assert_allclose(mid.array, canon[k].T[::-1, ::-1])
    assert mid.index == k and mid.stem == f"anatomical_slice{k}"

    # The same volume stored in another orientation (PIR, anisotropic voxels) gives the
    # same slices and the right spacing.
    data = np.transpose(canon, (1, 2, 0))[::-1, ::-1, :]  # axes: A->P flipped, S->I, R
    affine = np.array([[0, 0, 1.5, 0], [-2.0, 0, 0, 0], [0, -3.0, 0, 0], [0, 0, 0, 1]])
    other = tmp_path / "pir.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), other)
    items = read_all(other)
    assert len(items) == canon.shape[0]
    np.testing.assert_allclose(items[k].array, canon[k].T[::-1, ::-1])
    assert items[k].spacing == (3.0, 2.0)
    assert output_stem(other) == "pir"


def _t2_like_volume(tmp_path: Path) -> Path:
    """The real sagittal T2 volume when available, else a synthetic stand-in stored the same
    way (axes P, S, R: sagittal planes along the last stored axis)."""
    real = REAL_MRI / "sct_t2_cervical.nii.gz"
    if real.is_file():
        return real
    data = np.random.default_rng(0).integers(0, 1000, (30, 27, 26)).astype(np.int16)
    affine = np.array([[0, 0, 1.0, -13], [-1.0, 0, 0, 15], [0, 1.0, 0, -9], [0, 0, 0, 1]])
    path = tmp_path / "t2_like.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_nifti_sagittal_slices_are_upright_in_the_stored_axis_order(tmp_path):
    path = _t2_like_volume(tmp_path)
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("P", "S", "R")
    vol = np.asarray(img.dataobj, dtype=np.float32)
    (mid,) = read_all(path, "mid")
    # Worked out by hand from the stored axes (P, S, R): sagittal plane k is vol[:, :, k]
    # (counted from the patient's left); rows run from superior to inferior (stored S axis
    # reversed), columns from anterior to posterior (stored P axis as is).
    k = vol.shape[2] // 2
    assert mid.index == k
    np.testing.assert_array_equal(mid.array, vol[:, ::-1, k].T)


def test_nifti_real_t1_stored_ras_is_upright():
    path = REAL_MRI / "sct_t1w_cervical.nii.gz"
    if not path.is_file():
        pytest.skip(f"the real T1 volume is not at {path}")
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    vol = np.asarray(img.dataobj, dtype=np.float32)
    (mid,) = read_all(path, "mid")
    # Stored R, A, S: plane k is vol[k] ([A, S]); superior to the top, anterior to the left.
    np.testing.assert_array_equal(mid.array, vol[vol.shape[0] // 2].T[::-1, ::-1])


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_nifti_reoriented_copies_give_identical_sagittal_slices(tmp_path, perm):
    from nibabel.orientations import apply_orientation, inv_ornt_aff

    path = _t2_like_volume(tmp_path)
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    reference = read_all(path)
    assert len(reference) == data.shape[int(np.argmax(np.abs(img.affine[0, :3])))]
    for flips in itertools.product((1, -1), repeat=3):
        # Store the same voxels with their axes permuted and flipped; the affine follows, so
        # every voxel keeps its place in the patient.
        ornt = np.array([[p, f] for p, f in zip(perm, flips)], dtype=float)
        moved = apply_orientation(data, ornt)
        affine = img.affine @ inv_ornt_aff(ornt, data.shape)
        other = tmp_path / "moved.nii.gz"
        nib.save(nib.Nifti1Image(moved, affine), other)
        got = read_all(other)
        assert len(got) == len(reference)
        for a, b in zip(reference, got):
            np.testing.assert_array_equal(a.array, b.array)
            assert a.spacing == b.spacing


def test_nifti_oblique_affine_uses_the_closest_axes(tmp_path):
    path = _t2_like_volume(tmp_path)
    img = nib.load(path)
    angle = np.deg2rad(20)  # a tilted acquisition: 20 degrees about the left-right axis
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    other = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), rot @ img.affine), other)
    (a,), (b,) = read_all(path, "mid"), read_all(other, "mid")
    np.testing.assert_array_equal(a.array, b.array)


def test_nifti_4d_uses_the_first_volume():
    path = nifti_file("example4d.nii.gz")
    (item,) = read_all(path, "mid")
    assert item.notes and "first volume" in item.notes[0]
    vol = nib.as_closest_canonical(nib.load(path)).get_fdata()[..., 0]
    np.testing.assert_allclose(item.array, vol[vol.shape[0] // 2].T[::-1, ::-1], rtol=1e-6)


def test_png_jpeg_tiff_8_and_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    g16 = rng.integers(0, 65535, (40, 50), dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.tif")
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g8.jpg")
    items = {item.stem: item for item in read_all(tmp_path)}
    assert set(items) == {"g16", "rgb", "g8"} or len(items) == 4
    for item in read_all(tmp_path / "g16.tif") + read_all(tmp_path / "g16.png"):
        np.testing.assert_array_equal(item.array, g16.astype(np.float32))
    (item,) = read_all(tmp_path / "rgb.png")
    np.testing.assert_allclose(item.array, rgb @ np.array([0.299, 0.587, 0.114]), rtol=1e-5)
    (item,) = read_all(tmp_path / "g8.jpg")
    assert item.array.shape == (40, 50)


# --------------------------------------------------------------------------- predictor
def test_predictor_boxes_are_in_original_pixels():
    pred = Predictor(small_model(), CLASS_NAMES, img_size=IMG_SIZE, score_thr=0.3)
    arrays = [np.random.default_rng(1).random((200, 100)).astype(np.float32),
              np.random.default_rng(2).random((60, 64)).astype(np.float32)]
    dets = pred.predict_arrays(arrays)
    for arr, det in zip(arrays, dets):
        assert len(det["boxes"]) > 0 and (det["scores"] >= 0.3).all()
        h, w = arr.shape
        assert (det["boxes"][:, [0, 2]] <= w + 1e-3).all()
        assert (det["boxes"][:, [1, 3]] <= h + 1e-3).all()


def test_predict_cli_end_to_end(tmp_path, checkpoint, capsys):
    inputs = tmp_path / "inputs"
    pngs = inputs / "pngs"
    pngs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(pngs / f"p{i}.png")
    tiff = inputs / "scan16.tif"
    Image.fromarray(rng.integers(0, 4000, (70, 90), dtype=np.uint16)).save(tiff)
    mr = inputs / "mr"
    mr.mkdir()
    for name in ("MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm",
                 "MR_truncated.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        shutil.copy(dicom_file(name), mr / name)
    # JPEG-LS decodes only with the dicom-codecs extra installed.
    jpeg_ls_ok = isinstance(read_all(mr / "MR_small_jpeg_ls_lossless.dcm")[0], Slice)
    (mr / "report.dcm").write_text("not a DICOM file\n" * 20)
    # A file named after the patient: its outputs must not carry that name.
    ds = pydicom.dcmread(dicom_file("MR_small.dcm"))
    shutil.copy(dicom_file("MR_small.dcm"), mr / f"{ds.PatientID}_scan.dcm")
    nii = nifti_file("anatomical.nii")
    out = tmp_path / "out"

    rc = main(["predict", str(checkpoint), str(pngs), str(tiff), str(mr), str(nii),
               "--out", str(out), "--slices", "mid", "--batch-size", "3"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = captured.out.replace("\n", "")  # rich may fold long paths
    assert "MR_truncated.dcm" in printed and "report.dcm" in printed
    if not jpeg_ls_ok:
        assert "pip install 'meddet[dicom-codecs]'" in printed

    doc = json.loads((out / "predictions.json").read_text())
    sources = [Path(r["source"]).name for r in doc["images"]]
    assert sorted(sources)[:2] == ["MR_small.dcm", "MR_small_RLE.dcm"]
    assert {"p0.png", "p1.png", "scan16.tif", "anatomical.nii"} <= set(sources)
    assert doc["summary"]["images"] == len(doc["images"]) == 8 + jpeg_ls_ok
    skipped = {"MR_truncated.dcm", "report.dcm"} | (set() if jpeg_ls_ok
                                                    else {"MR_small_jpeg_ls_lossless.dcm"})
    assert {Path(s["source"]).name for s in doc["skipped"]} == skipped
    assert doc["summary"]["skipped"] == len(skipped)
    assert sum(doc["summary"]["findings"].values()) > 0
    for rec in doc["images"]:
        assert (out / rec["overlay"]).is_file()
        for det in rec["detections"]:
            assert det["class"] in CLASS_NAMES and det["score"] >= 0.3
            if rec["pixel_spacing_mm"] is None:
                assert det["box_mm"] is None
            else:
                row, col = rec["pixel_spacing_mm"]
                np.testing.assert_allclose(det["box_mm"], np.multiply(det["box"],
                                                                      [col, row, col, row]),
                                           atol=0.02)
    nii_rec = next(r for r in doc["images"] if r["source"].endswith("anatomical.nii"))
    assert nii_rec["slice_index"] == 16 and nii_rec["pixel_spacing_mm"] == [2.0, 2.0]
    assert nii_rec["overlay"] == "overlays/anatomical_slice16.png"
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert "MR_small.png" in overlays and "scan16.png" in overlays

    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {Path(r["source"]).name for r in rows} == set(sources)

    # Nothing identifying the patient, in any output or file name.
    identifiers = [str(ds.PatientName), str(ds.PatientID), "CompressedSamples"]
    for path in out.rglob("*"):
        assert not any(i.lower() in path.name.lower() for i in identifiers), path
        if path.is_file() and path.suffix in {".json", ".csv", ".yaml"}:
            text = path.read_text()
            assert not any(i in text for i in identifiers), path


def test_predict_reports_when_nothing_is_readable(tmp_path, checkpoint, capsys):
    bad = tmp_path / "bad.dcm"
    bad.write_text("hello")
    rc = main(["predict", str(checkpoint), str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no image could be read" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # no output folder for a run that predicted nothing
    assert main(["predict", str(checkpoint), str(tmp_path / "missing.png")]) == 2
    assert main(["predict", str(checkpoint), str(bad), "--slices", "x"]) == 2


def test_predict_inputs_streams_in_batches(tmp_path):
    pred = Predictor(small_model(), CLASS_NAMES, img_size=IMG_SIZE, score_thr=0.9)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((32, 32), i * 10, np.uint8)).save(folder / f"same.{i}.png")
    seen = []
    summary = predict_inputs(pred, [folder, folder / "same.0.png"], tmp_path / "o",
                             batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert summary.images == 6 and seen[0] == (0, 6) and seen[-1] == (6, 6)
    names = sorted(p.name for p in (tmp_path / "o" / "overlays").iterdir())
    assert len(names) == 6 and len(set(names)) == 6  # the repeated input gets a unique name
