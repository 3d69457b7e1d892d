"""Spacing-aware prediction: the training pixel size recorded in checkpoints, and slices
resampled to it instead of to a fixed size."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from meddet.data import CocoDetection, generate_dataset
from meddet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from meddet.engine.checkpoint import SPACING_KEY, make_meta, save_checkpoint, spacing_meta
from meddet.errors import MedDetError
from meddet.inference import Predictor, SliceSpec, predict_inputs
from meddet.models import build_detector


def test_spacing_meta_is_the_median_input_pixel_of_the_training_images(tmp_path):
    root = tmp_path / "ds"
    generate_dataset(root, num_train=3, num_val=0, num_test=0, size=128, seed=2)
    ds = CocoDetection(root, "train", img_size=64)
    recorded = [r["pixel_mm"] for r in json.loads(
        (root / "annotations" / "train.json").read_text())["images"]]
    # 128 px images shown at 64 px: each input pixel covers two image pixels.
    assert spacing_meta(ds, 64) == {SPACING_KEY: round(float(np.median(recorded)) * 2, 4)}
    # Data without a pixel size (imported sets), or with it on only some images: nothing.
    plain = SimpleNamespace(coco=SimpleNamespace(imgs={1: {"width": 10, "height": 10}}))
    assert spacing_meta(plain, 64) == {}
    mixed = SimpleNamespace(coco=SimpleNamespace(imgs={
        1: {"width": 10, "height": 10, "pixel_mm": 0.5}, 2: {"width": 10, "height": 10}}))
    assert spacing_meta(mixed, 64) == {}
    assert spacing_meta(object(), 64) == {}


# --------------------------------------------------------------------------- the predictor
class _BrightBox(torch.nn.Module):
    """A stand-in detector: one box around the input pixels brighter than mid-grey, mapped to
    the image with the meta's ``scale`` and clipped to its ``orig_size``, as GFLDetector does."""

    name = "bright-box"

    def __init__(self) -> None:
        super().__init__()
        self.postprocessor = SimpleNamespace(score_thr=0.0)
        self.seen: list[torch.Tensor] = []

    def forward(self, images, metas):
        out = []
        for img, meta in zip(images, metas):
            grey = img[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            self.seen.append(grey)
            ys, xs = torch.nonzero(grey > 0.5, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            h, w = meta["orig_size"]
            box = (box / meta["scale"]).clamp(min=0)
            box = torch.minimum(box, torch.tensor([w, h, w, h], dtype=torch.float32))
            out.append({"boxes": box, "scores": torch.ones(1),
                        "labels": torch.zeros(1, dtype=torch.long)})
        return out


def _slice(h=20, w=30, box=(5, 9, 20, 12)):
    """A dark ``h x w`` slice with a bright rectangle ``(x1, y1, x2, y2)``."""
    arr = np.zeros((h, w), np.float32)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 100.0
    return arr


def _predictor(resample="auto", spacing=1.0, img_size=64):
    return Predictor(_BrightBox(), ["disc"], img_size=img_size, resample=resample,
                     input_spacing_mm=spacing)


def test_spacing_mode_keeps_the_trained_pixel_size():
    # 1 mm pixels into a model trained at 1 mm: the slice goes in unscaled, top-left, padded.
    pred = _predictor()
    tensor, meta = pred.prepare(_slice(), (1.0, 1.0))
    grey = tensor[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    ys, xs = torch.nonzero(grey > 0.5, as_tuple=True)
    assert (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())) == (9, 11, 5, 19)
    assert meta["resample"] == {"mode": "spacing", "from_mm": [1.0, 1.0], "to_mm": [1.0, 1.0],
                                "factor": [1.0, 1.0]}
    # The fixed-size path stretches the 30 px slice to 64 px: the disc is 64/30 times taller.
    tensor, meta = _predictor("fixed").prepare(_slice(), (1.0, 1.0))
    grey = tensor[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    ys = torch.nonzero(grey > 0.5, as_tuple=True)[0]
    assert int(ys.max() - ys.min() + 1) in (6, 7) and meta["resample"]["mode"] == "fixed"
    assert meta["scale"] == pytest.approx(64 / 30)


def test_anisotropic_and_too_large_slices_map_back_to_their_own_pixels():
    # 2 x 0.5 mm pixels into a 1 mm model: 40x60 becomes 80x30, too tall for 64 px, so both
    # axes shrink by 0.8 (1.25 mm pixels); boxes come back in the slice's own pixels.
    pred = _predictor()
    arr = _slice(40, 60, box=(20, 10, 50, 15))
    tensor, meta = pred.prepare(arr, (2.0, 0.5))
    assert meta["resample"]["to_mm"] == [1.25, 1.25]
    assert meta["resample"]["factor"] == [1.6, 0.4]
    det = pred.predict_arrays([arr], [(2.0, 0.5)])[0]
    assert np.allclose(det["boxes"][0], [20, 10, 50, 15], atol=1.0)
    # Without a spacing the same slice is resized to the input size, and also maps back.
    det = pred.predict_arrays([arr])[0]
    assert np.allclose(det["boxes"][0], [20, 10, 50, 15], atol=1.0)


def test_resample_modes_and_their_errors():
    assert _predictor().resample_factors((20, 30), None) is None  # no spacing: fixed
    assert _predictor(spacing=None).resample_factors((20, 30), (1.0, 1.0)) is None
    assert _predictor("fixed").resample_factors((20, 30), (1.0, 1.0)) is None
    assert _predictor(spacing=0.5).resample_factors((20, 30), (1.0, 1.0)) == (2.0, 2.0)
    assert _predictor().resample_factors((20, 30), (0.0, 1.0)) is None  # degenerate header
    assert "0.5 mm" in _predictor(spacing=0.5).describe_resample()
    assert "does not record" in _predictor(spacing=None).describe_resample()
    with pytest.raises(MedDetError, match="--resample spacing needs"):
        _predictor("spacing", spacing=None)
    with pytest.raises(MedDetError, match="--resample must be one of auto, spacing, fixed"):
        _predictor().set_resample("nearest")


def test_checkpoint_spacing_follows_the_input_size(tmp_path):
    model = build_detector("meddet_lite", num_classes=1)
    meta = make_meta(model_name="meddet_lite", num_classes=1, class_names=["disc"],
                     img_size=64, **{SPACING_KEY: 0.5})
    ckpt = save_checkpoint(tmp_path / "m.pt", {"model": model.state_dict(), "meta": meta})
    assert Predictor.from_checkpoint(ckpt).input_spacing_mm == 0.5
    # At 128 px the same field of view needs pixels half the size.
    assert Predictor.from_checkpoint(ckpt, img_size=128).input_spacing_mm == 0.25
    plain = save_checkpoint(tmp_path / "p.pt", {"model": model.state_dict(), "meta": make_meta(
        model_name="meddet_lite", num_classes=1, class_names=["disc"], img_size=64)})
    assert Predictor.from_checkpoint(plain).input_spacing_mm is None
    # Given by hand (checkpoints written before the record existed), at the trained size.
    assert Predictor.from_checkpoint(plain, input_spacing_mm=0.7).input_spacing_mm == 0.7
    assert Predictor.from_checkpoint(plain, img_size=128,
                                     input_spacing_mm=0.7).input_spacing_mm == 0.35


def test_predict_inputs_records_what_was_done(tmp_path):
    import nibabel as nib
    from PIL import Image

    vol = np.zeros((3, 20, 30), np.float32)  # [R-L, A-P, S-I] voxels of 2 mm
    vol[:, 4:10, 8:12] = 100.0
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "v.nii.gz")
    Image.fromarray((_slice() * 2.5).astype(np.uint8)).save(tmp_path / "a.png")
    pred = _predictor(spacing=1.0)
    summary = predict_inputs(pred, [tmp_path / "v.nii.gz", tmp_path / "a.png"], tmp_path / "out",
                             slices=SliceSpec("mid"))
    assert summary.resampled == {"spacing": 1, "fixed": 1}
    doc = json.loads(summary.json_path.read_text())
    assert doc["resample"] == "auto" and doc["input_spacing_mm"] == 1.0
    modes = {Path(r["source"]).name: r["resample"] for r in doc["images"]}
    assert modes["v.nii.gz"]["mode"] == "spacing"
    assert modes["v.nii.gz"]["from_mm"] == [2.0, 2.0] and modes["v.nii.gz"]["to_mm"] == [1.0, 1.0]
    assert modes["a.png"]["mode"] == "fixed"
    assert doc["summary"]["resampled"] == {"spacing": 1, "fixed": 1}
    note = doc["summary"]["notes"][-1]
    assert "1 slice(s) resampled" in note and "no pixel spacing in the input" in note
    # The 2 mm slice (30 rows, 20 columns) is shown at 60x40 px; its boxes are in its own pixels.
    rec = next(r for r in doc["images"] if r["source"].endswith("v.nii.gz"))
    x1, y1, x2, y2 = rec["detections"][0]["box"]
    assert rec["width"] == 20 and rec["height"] == 30 and 0 <= x1 < x2 <= 20 and y2 <= 30
    seen = pred.model.seen[0]
    assert seen[:60, :40].max() > 0.5 and seen[60:].max() == 0 and seen[:, 40:].max() == 0


def test_cli_resample_spacing_needs_a_recorded_spacing(tmp_path, capsys):
    from meddet.cli import main

    model = build_detector("meddet_lite", num_classes=1)
    ckpt = save_checkpoint(tmp_path / "p.pt", {"model": model.state_dict(), "meta": make_meta(
        model_name="meddet_lite", num_classes=1, class_names=["disc"], img_size=64)})
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--resample", "spacing", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resample spacing needs" in err
