"""The synthetic CDH-MRI generator: layout, COCO validity, determinism, label semantics, and the
anatomy invariants of the default phantom (boxes on discs along the curved spine)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from meddet.data import CATEGORIES, generate_dataset, load_image
from meddet.data.generate import PHANTOMS, image_rng, make_image
from meddet.data.phantom import v1
from meddet.data.synth import (
    CONTRASTS,
    MIN_SEVERITY,
    NON_PROTRUSION_ID,
    PROTRUSION_ID,
    Tissue,
    _layout,
    render_case,
    render_clean,
    sample_case,
    spine_maps,
    to_image,
    with_protrusion,
    without_protrusion,
)
from meddet.errors import MedDetError

SMALL = {"num_train": 6, "num_val": 2, "num_test": 2, "size": 128, "seed": 7}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = generate_dataset(out, **SMALL)
    return out, summary


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_layout_and_coco_validity(small):
    out, summary = small
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        pngs = sorted((out / "images" / split).glob("*.png"))
        assert len(pngs) == n
        coco = _load_coco(out / "annotations" / f"{split}.json")
        assert coco.dataset["categories"] == [{"id": 1, "name": "protrusion"},
                                              {"id": 2, "name": "non-protrusion"}]
        assert len(coco.imgs) == n
        for img in coco.imgs.values():
            assert (out / "images" / split / img["file_name"]).is_file()
            assert {"snr", "ghosting"} <= set(img["acquisition"])
            assert 8 <= img["acquisition"]["snr"] <= 40
            with Image.open(out / "images" / split / img["file_name"]) as im:
                assert im.mode == "L" and im.size == (img["width"], img["height"]) == (128, 128)
            anns = coco.imgToAnns[img["id"]]
            # One box per disc C2/3 ... C7/T1 in view (a zoomed view shows only some).
            assert 1 <= len(anns) <= 6
            assert len({a["disc"] for a in anns}) == len(anns)
            assert img["contrast"] in CONTRASTS and img["pixel_mm"] > 0
            for a in anns:
                x, y, w, h = a["bbox"]
                assert w > 0 and h > 0
                assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert summary["splits"][split]["images"] == n
    assert summary["phantom"] == "v2"
    cats = {a["category_id"] for s in ("train", "val", "test")
            for a in json.loads((out / "annotations" / f"{s}.json").read_text())["annotations"]}
    assert cats == {PROTRUSION_ID, NON_PROTRUSION_ID}
    assert list(CATEGORIES) == [{"id": 1, "name": "protrusion"}, {"id": 2, "name": "non-protrusion"}]


def test_same_flags_give_identical_bytes(small, tmp_path):
    out, _ = small
    again = tmp_path / "again"
    generate_dataset(again, **SMALL)
    assert _files(out) == _files(again)


def test_images_do_not_depend_on_other_split_counts(small, tmp_path):
    out, _ = small
    other = tmp_path / "other"
    generate_dataset(other, num_train=2, num_val=3, num_test=0, size=128, seed=7)
    for name in ("train/train_00000.png", "train/train_00001.png", "val/val_00001.png"):
        assert (other / "images" / name).read_bytes() == (out / "images" / name).read_bytes()


def test_sixteen_bit_output(tmp_path):
    generate_dataset(tmp_path / "d16", num_train=1, num_val=0, num_test=0, size=128, bit_depth=16)
    path = tmp_path / "d16" / "images" / "train" / "train_00000.png"
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    arr = load_image(path)
    assert arr.dtype == np.float32 and arr.max() > 255  # the 16-bit range is used


# --- the label depends on the posterior disc contour and nothing else -----------------------


def _case_without_protrusions(seed=3, size=256):
    """A case with every disc in view (whole-neck pose) and a T2 contrast."""
    case = sample_case(np.random.default_rng(seed), size, protrusion_rate=0.0)
    case = dataclasses.replace(case, scale=1.0, shift=(0.0, 0.0), angle=0.05, tissue=Tissue(),
                               gamma=1.0)
    assert all(not d.is_protrusion for d in case.discs)
    return case


def _with_disc(case, k, disc):
    discs = list(case.discs)
    discs[k] = disc
    return dataclasses.replace(case, discs=tuple(discs))


@pytest.mark.parametrize("depth", [MIN_SEVERITY, 6.0])
def test_protrusion_changes_only_the_posterior_contour_and_flips_the_label(depth):
    case = _case_without_protrusions()
    k = 3
    herniated = _with_disc(case, k, with_protrusion(case.discs[k], depth))
    a, b = render_case(case), render_case(herniated)
    assert a.category_ids[k] == NON_PROTRUSION_ID and b.category_ids[k] == PROTRUSION_ID
    assert a.category_ids[:k] + a.category_ids[k + 1:] == b.category_ids[:k] + b.category_ids[k + 1:]

    # Same noise seeds, same everything else: pixels differ only behind the body line (d > 0,
    # up to AA), near this disc's level; the rest of the image is identical.
    clean_a, _, s, d = render_clean(case)
    clean_b = render_clean(herniated)[0]
    changed = np.abs(clean_a - clean_b) > 1e-6
    assert changed.any()
    disc_c = _layout(case)["disc_c"][k]
    reach = case.discs[k].height / 2 + 8
    slack = 256 / case.size / case.scale  # one image pixel, in reference px
    assert (d[changed] > -1.5 - slack).all()
    assert (np.abs(s[changed] - disc_c) < reach).all()
    assert (d[changed] < case.canal).all()  # inside the canal, not the cord's far side or beyond

    # The box grows (towards the canal) to include the herniation; other boxes are unchanged.
    assert np.array_equal(np.delete(a.boxes, k, 0), np.delete(b.boxes, k, 0))
    ba, bb = a.boxes[k], b.boxes[k]
    assert bb[0] <= ba[0] and bb[1] <= ba[1] and bb[2] >= ba[2] and bb[3] >= ba[3]
    assert (bb - ba).any()


def test_degenerated_dark_disc_is_not_a_protrusion():
    case = _case_without_protrusions()
    k = 2
    healthy = _with_disc(case, k, dataclasses.replace(case.discs[k], degeneration=0.0))
    dark = _with_disc(case, k, dataclasses.replace(case.discs[k], degeneration=1.0,
                                                   height=case.discs[k].height * 0.6))
    img_h, lab_h, _, d = render_clean(healthy)
    img_d, lab_d, _, _ = render_clean(dark)
    inner_h = (lab_h == k + 1) & (d < -3)
    inner_d = (lab_d == k + 1) & (d < -3)
    assert img_d[inner_d].mean() < 0.7 * img_h[inner_h].mean()  # visibly darker
    assert inner_d.sum() < inner_h.sum()  # and thinner
    assert render_case(dark).category_ids[k] == NON_PROTRUSION_ID
    # ... while the smallest herniation of the bright healthy disc is a protrusion.
    bulge = _with_disc(healthy, k, with_protrusion(healthy.discs[k], MIN_SEVERITY))
    assert render_case(bulge).category_ids[k] == PROTRUSION_ID
    assert render_case(_with_disc(bulge, k, without_protrusion(bulge.discs[k]))).category_ids[k] \
        == NON_PROTRUSION_ID


def _auc(scores, labels) -> float:
    scores, labels = np.asarray(scores), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_disc_brightness_and_level_do_not_predict_the_label():
    brightness, level, labels = [], [], []
    for i in range(40):
        case = sample_case(image_rng(11, "train", i), 128, protrusion_rate=0.4)
        img, lab, _, d = render_clean(case)
        for k, disc in enumerate(case.discs):
            inner = (lab == k + 1) & (d < -2)
            if inner.sum() < 4:  # out of view in a zoomed image
                continue
            brightness.append(img[inner].mean() / img.max())
            level.append(k)
            labels.append(disc.is_protrusion)
    assert 0.3 < np.mean(labels) < 0.5
    assert 0.38 < _auc(brightness, labels) < 0.62
    assert 0.38 < _auc(level, labels) < 0.62


def test_severity_is_graded_with_subtle_cases():
    sev = []
    for i in range(60):
        case = sample_case(image_rng(5, "train", i), 256, protrusion_rate=1.0)
        sev += [d.protrusion * case.scale for d in case.discs]
    sev = np.asarray(sev)
    assert sev.min() >= MIN_SEVERITY - 1e-6
    assert 0.2 < (sev < 2).mean() < 0.5  # many one-to-two pixel bulges
    assert (sev > 6).mean() > 0.05  # and some extrusions that indent the cord


def test_make_image_matches_written_file(small):
    out, _ = small
    _, rendered = make_image(7, "val", 1, size=128)
    from meddet.data.synth import quantize

    written = np.asarray(Image.open(out / "images" / "val" / "val_00001.png"))
    assert np.array_equal(written, quantize(rendered.image))


# --- the default phantom's anatomy ----------------------------------------------------------


def _cases(n, size=128, seed=21):
    return [sample_case(image_rng(seed, "train", i), size) for i in range(n)]


def test_every_case_renders_in_range_with_broad_variety():
    cases = _cases(40)
    zoomed, contrasts, n_boxes = 0, set(), []
    for case in cases:
        r = render_case(case)
        assert r.image.dtype == np.float32 and r.image.shape == (128, 128)
        assert np.isfinite(r.image).all() and r.image.min() >= 0 and r.image.max() <= 1
        assert r.image.std() > 0.03  # never a blank or flat image
        shown = r.boxes[:, 2] > r.boxes[:, 0]
        n_boxes.append(int(shown.sum()))
        b = r.boxes[shown]
        assert (b[:, 3] > b[:, 1]).all() and (b >= 0).all() and (b <= 128).all()
        zoomed += case.scale > 1.3
        contrasts.add(case.tissue.contrast)
    assert contrasts == set(CONTRASTS)  # T2, fat-suppressed T2, T1 and random contrasts
    assert 0.1 <= zoomed / len(cases) <= 0.5  # tight fields of view as well as whole necks
    assert min(n_boxes) >= 1 and np.mean(n_boxes) > 4


def test_rendering_is_deterministic():
    case = _cases(1, size=256, seed=4)[0]
    a, b = render_case(case), render_case(case)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.boxes, b.boxes)


def test_spine_frame_round_trip():
    # to_image inverts the (s, d) maps: every pixel near the spine maps back onto itself, up to
    # the interpolation of the maps between their grid points (tenths of a pixel at most).
    for case in _cases(6, size=256, seed=8):
        s, d = spine_maps(case.pose)
        ys, xs = np.mgrid[0:256, 0:256] + 0.5
        x, y = to_image(case.pose, s, d)
        near = np.abs(d) < 40
        assert np.hypot(x - xs, y - ys)[near].max() < 0.3


def test_boxes_lie_on_their_discs():
    for case in _cases(12, size=256, seed=9):
        r = render_case(case)
        lay = _layout(case)
        widths = np.asarray(case.body_widths)
        disc_w = (widths[:-1] + widths[1:]) / 2
        for k, box in enumerate(r.boxes):
            if box[2] <= box[0]:
                continue
            x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            disc = case.discs[k]
            # The box centre lies in the disc space of its own level, between the front of the
            # disc and its posterior margin (plus any herniation).
            assert abs(r.s[y, x] - lay["disc_c"][k]) < disc.height / 2 + 3
            assert -disc_w[k] - 2 < r.d[y, x] < 1 + disc.protrusion


@pytest.mark.parametrize("lordosis, bowed", [(20.0, True), (0.0, False)])
def test_disc_boxes_follow_the_curved_spine(lordosis, bowed):
    case = dataclasses.replace(_case_without_protrusions(seed=5), lordosis=lordosis,
                               s_shape=0.0, angle=0.0)
    boxes = render_case(case).boxes
    assert (boxes[:, 2] > boxes[:, 0]).all()
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    # Horizontal offset of each box centre from the chord through the first and last ones:
    # a lordotic neck bows forward (image left, negative x) in the middle.
    chord = cx[0] + (cx[-1] - cx[0]) * (cy - cy[0]) / (cy[-1] - cy[0])
    bow = (cx - chord)[1:-1]
    if bowed:
        assert bow.min() < -3
    else:
        assert np.abs(bow).max() <= 1.5
    # ... and every box is centred where the spine frame puts its disc.
    lay = _layout(case)
    widths = np.asarray(case.body_widths)
    x, y = to_image(case.pose, lay["disc_c"], -(widths[:-1] + widths[1:]) / 4)
    assert np.abs(cx - x).max() < 2.5 and np.abs(cy - y).max() < 2.5


def test_class_balance_is_kept():
    labels = []
    for case in _cases(60, seed=13):
        r = render_case(case)
        labels += [c == PROTRUSION_ID for c, b in zip(r.category_ids, r.boxes) if b[2] > b[0]]
    assert 0.2 < np.mean(labels) < 0.4  # protrusion_rate 0.3 among the labelled discs


def test_first_phantom_is_reachable_and_unchanged(tmp_path):
    # The first phantom draws the same images as before the default changed (values recorded
    # from it): boxes, labels and pixels.
    _, r = make_image(3, "train", 0, size=128, phantom="v1")
    assert r.boxes.tolist() == [[57, 39, 68, 44], [57, 48, 70, 55], [56, 59, 68, 64],
                                [56, 68, 70, 74], [56, 78, 68, 83], [56, 88, 69, 92]]
    assert r.category_ids == (2, 1, 2, 1, 2, 2)
    assert float(r.image.mean()) == pytest.approx(0.1018077, abs=1e-6)
    assert set(PHANTOMS) == {"v1", "v2", "random"} and PHANTOMS["v1"] is v1
    summary = generate_dataset(tmp_path / "v1", num_train=1, num_val=0, num_test=0, size=128,
                               seed=3, phantom="v1")
    assert summary["phantom"] == "v1"
    written = np.asarray(Image.open(tmp_path / "v1" / "images" / "train" / "train_00000.png"))
    assert np.array_equal(written, v1.quantize(r.image))
    with pytest.raises(MedDetError, match="--phantom"):
        generate_dataset(tmp_path / "v3", num_train=1, num_val=0, num_test=0, phantom="v3")


# --- bad input: one clear error, nothing written ---------------------------------------------


@pytest.mark.parametrize("kwargs, needle", [
    ({"size": 100}, "--size"),
    ({"size": 96}, "--size"),
    ({"num_train": -1}, "--num-train"),
    ({"num_val": -3}, "--num-val"),
    ({"protrusion_rate": 1.5}, "--protrusion-rate"),
    ({"protrusion_rate": -0.1}, "--protrusion-rate"),
    ({"snr_range": (10, 5)}, "--snr-range"),
    ({"snr_range": (0, 5)}, "--snr-range"),
    ({"bit_depth": 12}, "--bit-depth"),
    ({"seed": -1}, "--seed"),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, kwargs, needle):
    args = {"num_train": 1, "num_val": 0, "num_test": 0, "size": 128, **kwargs}
    with pytest.raises(MedDetError, match=needle) as err:
        generate_dataset(tmp_path / "out", **args)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite_and_is_replaced(tmp_path):
    out = tmp_path / "ds"
    generate_dataset(out, num_train=2, num_val=0, num_test=0, size=128)
    with pytest.raises(MedDetError, match="--overwrite"):
        generate_dataset(out, num_train=1, num_val=0, num_test=0, size=128)
    generate_dataset(out, num_train=1, num_val=0, num_test=0, size=128, overwrite=True)
    assert [p.name for p in (out / "images" / "train").iterdir()] == ["train_00000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(MedDetError, match="notes.txt"):
        generate_dataset(tmp_path, num_train=1, num_val=0, num_test=0, size=128, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_cli_phantom_flag(tmp_path, capsys):
    from meddet.cli import main

    flags = ["--num-train", "1", "--num-val", "0", "--num-test", "0", "--size", "128",
             "--seed", "3"]
    assert main(["data", "synth", str(tmp_path / "old"), *flags, "--phantom", "v1"]) == 0
    _, r = make_image(3, "train", 0, size=128, phantom="v1")
    written = np.asarray(Image.open(tmp_path / "old" / "images" / "train" / "train_00000.png"))
    assert np.array_equal(written, v1.quantize(r.image))
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "bad"), *flags, "--phantom", "v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--phantom" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
