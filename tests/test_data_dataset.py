"""The COCO dataset, transforms and noise: the tensor contract, round trips and bad data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from meddet.config import AugmentConfig
from meddet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoDetection,
    collate,
    generate_dataset,
    load_image,
    noise,
    parse_noise_spec,
    preprocess,
)
from meddet.errors import MedDetError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "synth"
    generate_dataset(root, num_train=4, num_val=2, num_test=0, size=128, seed=3)
    return root


def _coco_boxes_xyxy(ds, i):
    anns = sorted(ds.coco.imgToAnns[ds.ids[i]], key=lambda a: a["id"])
    b = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    b[:, 2:] += b[:, :2]
    return b, [a["category_id"] for a in anns]


def _write_coco(root, split, images, annotations, categories=None):
    """A hand-made COCO dataset: images is a list of (file_name, HxW uint8 array)."""
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    recs = []
    for i, (name, arr) in enumerate(images, start=1):
        Image.fromarray(arr).save(root / "images" / split / name)
        recs.append({"id": i, "file_name": name, "width": arr.shape[1], "height": arr.shape[0]})
    cats = categories or [{"id": 1, "name": "protrusion"}, {"id": 2, "name": "non-protrusion"}]
    data = {"images": recs, "annotations": annotations, "categories": cats}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return root


def _ann(aid, image_id, bbox, cat=1):
    return {"id": aid, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0}


def _gradient(h, w):
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w)).astype(np.uint8)


# --- the contract -----------------------------------------------------------------------


def test_item_contract(synth_root):
    ds = CocoDetection(synth_root, "train", img_size=128)
    assert len(ds) == 4 and ds.ids == sorted(ds.ids)
    assert ds.class_names == ["protrusion", "non-protrusion"] and ds.cat_ids == [1, 2]
    assert ds.label_to_cat_id(0) == 1 and ds.label_to_cat_id(1) == 2
    assert ds.cat_id_to_label(2) == 1
    img, tgt = ds[0]
    assert img.shape == (3, 128, 128) and img.dtype == torch.float32
    grey = [img[c] * IMAGENET_STD[c] + IMAGENET_MEAN[c] for c in range(3)]
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[0], grey[2], atol=1e-5)
    assert 0 <= float(grey[0].min()) and float(grey[0].max()) <= 1 + 1e-5
    _, cats = _coco_boxes_xyxy(ds, 0)
    assert tgt["boxes"].dtype == torch.float32 and tgt["boxes"].shape == (len(cats), 4)
    assert 1 <= len(cats) <= 6  # the discs in view, one box each
    assert tgt["labels"].dtype == torch.int64 and set(tgt["labels"].tolist()) <= {0, 1}
    assert tgt["image_id"] == ds.ids[0] and tgt["scale"] == 1.0 and tgt["orig_size"] == (128, 128)
    assert tgt["file_name"] == "train_00000.png"
    assert [ds.label_to_cat_id(label) for label in tgt["labels"].tolist()] == cats


def test_scale_round_trip_and_padding(synth_root):
    ds = CocoDetection(synth_root, "val", img_size=256)  # 128 px images -> scale 2
    for i in range(len(ds)):
        _, tgt = ds[i]
        assert tgt["scale"] == 2.0
        boxes, _ = _coco_boxes_xyxy(ds, i)
        np.testing.assert_allclose(tgt["boxes"].numpy() / tgt["scale"], boxes, atol=1e-4)


def test_non_square_image_keeps_aspect_and_pads_bottom_right(tmp_path):
    root = _write_coco(tmp_path, "val", [("a.png", _gradient(60, 100))],
                       [_ann(1, 1, [10.0, 5.0, 30.0, 20.0])])
    ds = CocoDetection(root, "val", img_size=64)
    img, tgt = ds[0]
    assert tgt["scale"] == pytest.approx(0.64) and tgt["orig_size"] == (60, 100)
    np.testing.assert_allclose(tgt["boxes"].numpy() / tgt["scale"], [[10, 5, 40, 25]], atol=1e-4)
    pad_value = -IMAGENET_MEAN[0] / IMAGENET_STD[0]
    rows = round(60 * 0.64)  # 38 image rows, then padding
    assert torch.allclose(img[0, rows:], torch.full_like(img[0, rows:], pad_value))
    assert not torch.allclose(img[0, :rows], torch.full_like(img[0, :rows], pad_value))


def test_preprocess_is_the_evaluation_path(synth_root):
    ds = CocoDetection(synth_root, "val", img_size=256)
    x, scale = preprocess(load_image(synth_root / "images" / "val" / "val_00000.png"), 256)
    img, tgt = ds[0]
    assert torch.equal(x, img) and scale == tgt["scale"]
    with pytest.raises(MedDetError, match="multiple of 32"):
        preprocess(np.zeros((10, 10)), 100)
    with pytest.raises(MedDetError, match="2-D"):
        preprocess(np.zeros((3, 10, 10)), 64)


def test_load_image_modes(tmp_path):
    grey = _gradient(20, 30)
    Image.fromarray(grey).save(tmp_path / "l.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([grey] * 3 + [np.full_like(grey, 7)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_image(tmp_path / "l.png"), grey.astype(np.float32))
    np.testing.assert_array_equal(load_image(tmp_path / "i16.png"), grey.astype(np.float32) * 257)
    for name in ("rgb.png", "rgba.png"):
        arr = load_image(tmp_path / name)
        assert arr.shape == (20, 30) and arr.dtype == np.float32
        np.testing.assert_allclose(arr, grey, atol=0.01)
    with pytest.raises(MedDetError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_collate_keeps_targets(synth_root):
    ds = CocoDetection(synth_root, "train", img_size=128)
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 3, 128, 128)
    assert [t["image_id"] for t in targets] == ds.ids[:3]


# --- augmentation -----------------------------------------------------------------------


def test_hflip_mirrors_image_and_boxes(synth_root):
    flip = AugmentConfig(hflip=1.0, scale_jitter=(1.0, 1.0), brightness=0, contrast=0, gamma=0)
    plain = CocoDetection(synth_root, "train", img_size=128)
    flipped = CocoDetection(synth_root, "train", img_size=128, train=True, augment=flip)
    img, tgt = plain[1]
    fimg, ftgt = flipped[1]
    assert torch.allclose(fimg, img.flip(-1), atol=1e-5)
    b, fb = tgt["boxes"], ftgt["boxes"]
    assert torch.allclose(fb[:, 0], 128 - b[:, 2]) and torch.allclose(fb[:, 2], 128 - b[:, 0])
    assert torch.equal(fb[:, 1::2], b[:, 1::2]) and torch.equal(ftgt["labels"], tgt["labels"])


def test_train_augmentation_varies_and_keeps_boxes_valid(synth_root):
    ds = CocoDetection(synth_root, "train", img_size=128, train=True,
                       augment=AugmentConfig(scale_jitter=(0.7, 1.3)))
    assert ds.augment == AugmentConfig(scale_jitter=(0.7, 1.3))
    torch.manual_seed(0)
    first = [ds[0] for _ in range(6)]
    torch.manual_seed(0)
    again = [ds[0] for _ in range(6)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # reproducible
    assert len({round(t["scale"], 6) for _, t in first}) > 1  # yet random
    for img, t in first:
        assert img.shape == (3, 128, 128)
        boxes = t["boxes"]
        assert len(boxes) == len(t["labels"]) > 0
        assert (boxes >= 0).all() and (boxes <= 128).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    evaluation = CocoDetection(synth_root, "train", img_size=128, train=False,
                               augment=AugmentConfig())
    assert evaluation.augment is None and torch.equal(evaluation[0][0], evaluation[0][0])


def test_crop_is_a_window_of_the_full_input_holding_an_object(synth_root):
    still = dict(hflip=0.0, scale_jitter=(1.0, 1.0), brightness=0, contrast=0, gamma=0)
    full = CocoDetection(synth_root, "train", img_size=128, train=True,
                         augment=AugmentConfig(**still))
    cropped = CocoDetection(synth_root, "train", img_size=128, train=True,
                            augment=AugmentConfig(**still, crop=64))
    img, tgt = full[0]
    seen = set()
    for k in range(12):
        torch.manual_seed(k)
        win, wt = cropped[0]
        assert win.shape == (3, 64, 64)
        # Locate the window in the full input: exactly one offset reproduces it.
        hits = [(x, y) for y in range(65) for x in range(65)
                if torch.equal(img[:, y:y + 64, x:x + 64], win)]
        assert len(hits) == 1
        x0, y0 = hits[0]
        seen.add((x0, y0))
        shifted = tgt["boxes"] - torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        inside = ((shifted[:, :2] >= 0) & (shifted[:, 2:] <= 64)).all(dim=1)
        assert inside.any()  # the chosen object is whole in the window
        whole = {tuple(b.tolist()) for b in shifted[inside]}
        assert whole <= {tuple(b.tolist()) for b in wt["boxes"]}
        assert (wt["boxes"] >= 0).all() and (wt["boxes"] <= 64).all()
        assert len(wt["boxes"]) == len(wt["labels"])
    assert len(seen) > 1  # random


def test_bad_crop_is_a_config_error():
    from meddet.config import load_config

    with pytest.raises(MedDetError, match="multiple of 32"):
        load_config(None, {"data": {"img_size": 256, "augmentation": {"crop": 100}}})


def test_crop_at_or_above_the_input_size_keeps_the_whole_image(synth_root):
    still = dict(hflip=0.0, scale_jitter=(1.0, 1.0), brightness=0, contrast=0, gamma=0)
    whole = CocoDetection(synth_root, "train", img_size=128, train=True,
                          augment=AugmentConfig(**still))
    for crop in (128, 256):  # e.g. `--config cpu-crop --img-size 128`
        same = CocoDetection(synth_root, "train", img_size=128, train=True,
                             augment=AugmentConfig(**still, crop=crop))
        torch.manual_seed(0)
        a = whole[0]
        torch.manual_seed(0)
        b = same[0]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])



@pytest.mark.parametrize("balance, lo, hi", [(False, 0.10, 0.25), (True, 0.42, 0.58)])
def test_balanced_crop_holds_the_rare_class_as_often_as_the_common_one(balance, lo, hi):
    from meddet.data.dataset import _crop_around_object

    # Six 10 px objects 80 px apart on a 512 px input, one of class 1: a 64 px window holds
    # exactly one whole, so the share of windows holding the class-1 object is the draw's.
    img = np.zeros((512, 512), np.float32)
    xs = np.arange(6) * 80.0 + 20
    boxes = np.stack([xs, np.full(6, 250.0), xs + 10, np.full(6, 260.0)], 1).astype(np.float32)
    labels = np.asarray([2, 2, 1, 2, 2, 2])
    rng = np.random.default_rng(0)
    held = [1 in _crop_around_object(img, boxes, labels, 64, rng, balance=balance)[2]
            for _ in range(600)]
    assert lo < np.mean(held) < hi  # uniform: 1/6; balanced: 1/2


# --- bad data -----------------------------------------------------------------------------


def test_malformed_json_names_the_file(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40))], [])
    (root / "annotations" / "train.json").write_text('{"images": [')
    with pytest.raises(MedDetError, match=r"train\.json is not valid JSON"):
        CocoDetection(root, "train", img_size=64)


def test_missing_split_and_folder(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40))], [])
    with pytest.raises(MedDetError, match="available splits: train"):
        CocoDetection(root, "val", img_size=64)
    with pytest.raises(MedDetError, match="does not exist"):
        CocoDetection(tmp_path / "nope", "train", img_size=64)


def test_missing_image_file_names_the_file(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40))], [])
    (root / "images" / "train" / "a.png").unlink()
    with pytest.raises(MedDetError, match=r"a\.png .*does not exist"):
        CocoDetection(root, "train", img_size=64)


def test_unknown_category_names_the_annotation(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40))],
                       [_ann(17, 1, [1.0, 1.0, 5.0, 5.0], cat=9)])
    with pytest.raises(MedDetError, match=r"train\.json: annotation id 17 has category_id 9"):
        CocoDetection(root, "train", img_size=64)


@pytest.mark.parametrize("bbox, why", [
    ([1.0, 1.0, 0.0, 5.0], "non-positive"),
    ([1.0, 1.0, 5.0, -2.0], "non-positive"),
    ([30.0, 30.0, 20.0, 5.0], "outside"),
    ([-3.0, 1.0, 5.0, 5.0], "outside"),
])
def test_bad_box_fails_or_is_skipped_and_counted(tmp_path, bbox, why):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40)),
                                           ("b.png", _gradient(40, 40))],
                       [_ann(1, 1, [2.0, 2.0, 10.0, 10.0]), _ann(5, 2, bbox, cat=2)])
    with pytest.raises(MedDetError, match=rf"annotation id 5 .*{why}"):
        CocoDetection(root, "train", img_size=64)
    with pytest.warns(UserWarning, match="skipped 1 invalid box"):
        ds = CocoDetection(root, "train", img_size=64, on_bad_box="skip")
    assert ds.num_skipped == 1 and ds.skipped[0][0] == 5
    assert 5 not in ds.coco.anns and len(ds[1][1]["boxes"]) == 0
    assert len(ds[0][1]["boxes"]) == 1


def test_images_without_annotations_are_negatives(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40)),
                                           ("b.png", _gradient(40, 40))],
                       [_ann(1, 1, [2.0, 2.0, 10.0, 10.0])])
    ds = CocoDetection(root, "train", img_size=64)
    _, tgt = ds[1]
    assert tgt["boxes"].shape == (0, 4) and tgt["labels"].shape == (0,)
    _, targets = collate([ds[0], ds[1]])
    assert [len(t["boxes"]) for t in targets] == [1, 0]


def test_image_size_mismatch_is_reported(tmp_path):
    root = _write_coco(tmp_path, "train", [("a.png", _gradient(40, 40))], [])
    Image.fromarray(_gradient(30, 40)).save(root / "images" / "train" / "a.png")
    with pytest.raises(MedDetError, match=r"a\.png is 40x30 but .*40x40"):
        CocoDetection(root, "train", img_size=64)[0]


# --- noise ---------------------------------------------------------------------------------


def test_noise_spec_parses_and_is_reproducible():
    corrupt = parse_noise_spec("rician:10, ghosting:0.3,gaussian:0.05")
    img = np.clip(_gradient(64, 64).astype(np.float32) / 128, 0, 1)
    a = corrupt(img, np.random.default_rng(1))
    b = corrupt(img, np.random.default_rng(1))
    c = corrupt(img, np.random.default_rng(2))
    assert a.shape == img.shape and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0 <= a.min() and a.max() <= 1 and not np.allclose(a, img)


@pytest.mark.parametrize("spec, needle", [
    ("", "empty"),
    ("speckle:3", "unknown noise kind 'speckle'"),
    ("rician", "needs a number"),
    ("rician:abc", "needs a number"),
    ("rician:0", "must be > 0"),
    ("gaussian:-1", "must be >= 0"),
    ("rician:10,,gaussian:0.1", "unknown noise kind ''"),
])
def test_bad_noise_specs(spec, needle):
    with pytest.raises(MedDetError, match=needle):
        parse_noise_spec(spec)


def test_noise_functions_behave():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64), np.float32)
    img[16:48, 16:48] = 1.0
    assert np.allclose(noise.motion_ghosting(img, 0.0, rng), img)
    ghosted = noise.motion_ghosting(img, 0.4, rng, axis=1, period=4.0)
    assert ghosted[32, 0:16].max() > 0.05  # a ghost of the square appears outside it
    noisy = noise.rician_noise(img, 20.0, rng)
    assert abs(float(noisy[16:48, 16:48].std()) - 1 / 20) < 0.01
    assert noisy[:8, :8].mean() > 0  # Rayleigh floor in the background
    ringing = noise.gibbs_ringing(img, 0.5)
    assert ringing[32, 12:16].max() > 0.02 and np.allclose(noise.gibbs_ringing(img, 1.0), img)


def test_dataset_corruption_is_seeded_per_image(synth_root):
    corrupt = parse_noise_spec("rician:5")
    clean = CocoDetection(synth_root, "val", img_size=128)
    a = CocoDetection(synth_root, "val", img_size=128, corrupt=corrupt, seed=1)
    b = CocoDetection(synth_root, "val", img_size=128, corrupt=corrupt, seed=1)
    c = CocoDetection(synth_root, "val", img_size=128, corrupt=corrupt, seed=2)
    assert torch.equal(a[0][0], b[0][0]) and torch.equal(a[0][0], a[0][0])
    assert not torch.equal(a[0][0], c[0][0]) and not torch.equal(a[0][0], clean[0][0])
    assert not torch.equal(a[0][0], a[1][0])
    assert torch.equal(a[0][1]["boxes"], clean[0][1]["boxes"])


def test_noise_spec_pickles_for_dataloader_workers():
    import pickle

    corrupt = parse_noise_spec("gaussian:0.1")
    again = pickle.loads(pickle.dumps(corrupt))
    img = np.full((8, 8), 0.5, np.float32)
    assert np.array_equal(corrupt(img, np.random.default_rng(0)), again(img, np.random.default_rng(0)))
    assert again.spec == "gaussian:0.1"
