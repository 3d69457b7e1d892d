"""The randomised phantom (``--phantom random``): the default phantom stays as it was, every
family widens its ranges and can be switched off on its own, and the acquisition extras do what
they say."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from meddet.cli import main
from meddet.data import generate_dataset
from meddet.data.generate import PHANTOMS, image_rng, make_image
from meddet.data.noise import signal_level
from meddet.data.phantom import randomised as R
from meddet.data.phantom.model import sample_case as sample_v2
from meddet.data.synth import quantize
from meddet.errors import MedDetError


def test_default_phantom_is_unchanged():
    # The study's benchmark: v2 images as they were before the randomised phantom existed
    # (8-bit pixels and boxes recorded from the code of that time).
    expected = ["f9aa915d30fff4e765c190c2354d41c62f972be339bbd66116c0d5e721a603e1",
                "cc245cde09d50773989646729cef0e33dd7dd037b26e4d725b1212fd4eed509f"]
    for i, digest in enumerate(expected):
        _, r = make_image(5, "train", i, size=128)
        assert hashlib.sha256(quantize(r.image).tobytes()).hexdigest() == digest
    _, r = make_image(5, "train", 0, size=128)
    assert r.boxes[0].tolist() == [55.0, 29.0, 71.0, 38.0]
    assert r.category_ids == (1, 2, 2, 2, 1, 2)
    assert PHANTOMS["random"] is R


def test_every_family_off_gives_the_default_phantom_pixel_for_pixel():
    for i in range(2):
        _, v2 = make_image(3, "train", i, size=128)
        case, rnd = make_image(3, "train", i, size=128, phantom="random", random_off=R.FAMILIES)
        assert case.off == R.FAMILIES
        assert np.array_equal(rnd.image, v2.image) and np.array_equal(rnd.boxes, v2.boxes)


def _cases(n, off=(), seed=1):
    return [R.sample_case(image_rng(seed, "train", i), 128, off=off) for i in range(n)]


def test_switching_one_family_off_keeps_every_other_draw():
    for i in range(6):
        full = R.sample_case(image_rng(2, "train", i), 128)
        v2 = sample_v2(image_rng(2, "train", i), 128)
        no_noise = R.sample_case(image_rng(2, "train", i), 128, off=("noise",))
        assert (no_noise.acquisition.snr, no_noise.noise_model) == (v2.acquisition.snr, "rician")
        assert (no_noise.gamma, no_noise.scale, no_noise.acq_pixel_mm, no_noise.thickness_mm,
                no_noise.tissue, no_noise.discs, no_noise.acquisition.bias) == \
            (full.gamma, full.scale, full.acq_pixel_mm, full.thickness_mm, full.tissue,
             full.discs, full.acquisition.bias)
        no_disc = R.sample_case(image_rng(2, "train", i), 128, off=("disc", "gamma"))
        assert no_disc.body_widths == v2.body_widths and no_disc.gamma == v2.gamma
        assert [d.height for d in no_disc.discs] == [d.height for d in v2.discs]
        assert (no_disc.acquisition.snr, no_disc.noise_model) == \
            (full.acquisition.snr, full.noise_model)


def test_families_reach_beyond_the_default_ranges():
    cases = _cases(60)
    v2 = [sample_v2(image_rng(1, "train", i), 128) for i in range(60)]
    gammas = [c.gamma for c in cases]
    assert min(gammas) < 0.7 and max(gammas) > 1.5  # v2: 0.75-1.35
    assert max(c.scale for c in cases) > 4.0  # a field of view under 51 mm; v2 stops at 3.4
    thin = min(d.height for c in cases for d in c.discs)
    assert thin < 0.8 * min(d.height for c in v2 for d in c.discs)
    assert {c.noise_model for c in cases} == set(R.NOISE_MODELS)
    assert all(2 <= c.coils <= 8 for c in cases if c.noise_model == "chi")
    assert 0.3 < np.mean([c.acq_pixel_mm > 0 for c in cases]) < 0.9
    assert 0.3 < np.mean([c.thickness_mm > 0 for c in cases]) < 0.7
    assert 0.3 < np.mean([c.tissue.contrast == "random" for c in cases]) < 0.8
    off = _cases(20, off=R.FAMILIES)
    assert all(c.acq_pixel_mm == 0 and c.thickness_mm == 0 and c.noise_model == "rician"
               for c in off)


def test_thick_slice_is_a_gaussian_of_the_given_fwhm_along_one_axis():
    case = dataclasses.replace(_cases(1)[0], thickness_mm=4.0, thickness_axis=1)
    img = np.zeros((4, 128), np.float32)
    img[:, 64] = 1.0
    out = R._thick_slice(img, case)
    x = np.arange(128)
    sigma = np.sqrt((out[0] * (x - 64) ** 2).sum() / out[0].sum())
    assert sigma == pytest.approx(4.0 / 2.3548 / R.pixel_mm(case), rel=0.02)
    assert out.sum() == pytest.approx(4.0, rel=1e-4)  # the blur keeps the signal
    # Along the other axis an image that only varies across columns is left as it is.
    along_rows = R._thick_slice(img, dataclasses.replace(case, thickness_axis=0))
    assert np.allclose(along_rows, img, atol=1e-5)
    # Mirrored at the edges: a bright first column does not reach the last one.
    edge = np.zeros((4, 128), np.float32)
    edge[:, 0] = 1.0
    assert R._thick_slice(edge, case)[0, -10:].max() < 1e-6


def test_chi_noise_floor_grows_with_the_coils():
    # In air the sum of squares of n coils' complex noise has E[M^2] = 2 n sigma^2.
    img = np.zeros((200, 200), np.float32)
    img[:100] = 1.0
    sigma = signal_level(img) / 10.0
    for coils in (1, 4):
        out = R._chi_noise(img, 10.0, coils, np.random.default_rng(0))
        assert np.mean(out[100:] ** 2) == pytest.approx(2 * coils * sigma**2, rel=0.03)


def test_coarse_matrix_is_interpolated_to_the_image_size():
    base = dataclasses.replace(_cases(1, off=R.FAMILIES)[0], size=128)
    from meddet.data.phantom.render import render_clean

    clean = render_clean(base)[0]
    fine = R.acquire(clean, base)
    coarse = R.acquire(clean, dataclasses.replace(base, acq_pixel_mm=4 * R.pixel_mm(base)))
    assert coarse.shape == fine.shape == (128, 128)
    # Interpolated from 32 px: neighbouring pixels differ far less than with pixel-level noise.
    step = lambda a: float(np.abs(np.diff(a, axis=1)).mean())  # noqa: E731
    assert step(coarse) < 0.5 * step(fine)


def test_dataset_records_and_errors(tmp_path):
    out = tmp_path / "rnd"
    summary = generate_dataset(out, num_train=2, num_val=0, num_test=0, size=128, seed=4,
                               phantom="random", random_off=["fov", "contrast"])
    assert summary["phantom"] == "random" and summary["random_off"] == ["contrast", "fov"]
    coco = json.loads((out / "annotations" / "train.json").read_text())
    assert coco["info"]["generator"]["random_off"] == ["contrast", "fov"]
    for rec in coco["images"]:
        assert set(rec["randomised"]) >= {"noise_model", "acq_pixel_mm", "thickness_mm"}
        assert rec["pixel_mm"] > 0
    with pytest.raises(MedDetError, match="--random-off: unknown randomisation family 'hue'"):
        generate_dataset(tmp_path / "x", num_train=1, num_val=0, num_test=0, size=128,
                         phantom="random", random_off=["hue"])
    with pytest.raises(MedDetError, match="--phantom random"):
        generate_dataset(tmp_path / "y", num_train=1, num_val=0, num_test=0, size=128,
                         random_off=["fov"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_random_off(tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["data", "synth", str(out), "--phantom", "random", "--random-off", "noise",
                 "--num-train", "1", "--num-val", "0", "--num-test", "0", "--size", "128"]) == 0
    coco = json.loads((out / "annotations" / "train.json").read_text())
    assert coco["info"]["generator"]["random_off"] == ["noise"]
    assert coco["images"][0]["randomised"]["noise_model"] == "rician"
    capsys.readouterr()
    assert main(["data", "synth", str(tmp_path / "bad"), "--phantom", "random",
                 "--random-off", "noise,colour", "--num-train", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'colour'" in err and "spacing" in err


def test_recipe_is_cpu_crop_on_the_randomised_data():
    from meddet.config import load_config

    rnd, crop = load_config("cpu-random").model_dump(), load_config("cpu-crop").model_dump()
    assert rnd["data"].pop("root") == "cdh-random"
    crop["data"].pop("root")
    # One recipe, two data sets: when cpu-crop changes, copy the change into cpu-random.yaml.
    assert rnd == crop, "meddet/configs/cpu-random.yaml no longer matches cpu-crop.yaml"
    # cpu-random-wide: its own data, four times the images for half the epochs (twice the
    # steps), validation as often in steps; the rest is cpu-crop's.
    wide = load_config("cpu-random-wide").model_dump()
    assert wide["data"].pop("root") == "cdh-random-wide"
    assert (wide["train"].pop("epochs"), wide["train"].pop("eval_every")) == (40, 4)
    crop["train"].pop("epochs"), crop["train"].pop("eval_every")
    assert wide == crop, "meddet/configs/cpu-random-wide.yaml no longer matches cpu-crop.yaml"


def test_disc_thickness_maps_the_same_draws_onto_a_wider_range():
    """--disc-thickness: the default range reproduces the randomised phantom exactly; a
    range of [0.25, 0.3] makes every disc 0.25-0.3 x 0.85-1.15 of v2's height, and leaves
    every other family's draws as they were."""
    for i in range(3):
        a, ra = make_image(2, "train", i, size=128, phantom="random")
        b, rb = make_image(2, "train", i, size=128, phantom="random",
                           disc_thickness=R.DISC_THICKNESS)
        assert np.array_equal(ra.image, rb.image) and np.array_equal(ra.boxes, rb.boxes)
        v2, _ = make_image(2, "train", i, size=128, phantom="random", random_off=("disc",))
        thin, rt = make_image(2, "train", i, size=128, phantom="random",
                              disc_thickness=(0.25, 0.3))
        ratio = np.array([t.height / d.height for t, d in zip(thin.discs, v2.discs)])
        assert np.all(ratio >= 0.25 * 0.85 - 1e-9) and np.all(ratio <= 0.3 * 1.15 + 1e-9)
        assert thin.body_widths == a.body_widths and thin.tissue == a.tissue
        assert thin.scale == a.scale and thin.acquisition == a.acquisition
        # thinner discs, lower boxes (where a disc is in view in both)
        both = (ra.boxes[:, 2] > 0) & (rt.boxes[:, 2] > 0)
        assert np.median((rt.boxes[both, 3] - rt.boxes[both, 1])
                         / (ra.boxes[both, 3] - ra.boxes[both, 1])) < 1


def test_disc_thickness_records_and_errors(tmp_path, capsys):
    out = tmp_path / "thin"
    assert main(["data", "synth", str(out), "--phantom", "random", "--disc-thickness",
                 "0.25,1.25", "--num-train", "1", "--num-val", "0", "--num-test", "0",
                 "--size", "128"]) == 0
    gen = json.loads((out / "annotations" / "train.json").read_text())["info"]["generator"]
    assert gen["disc_thickness"] == [0.25, 1.25]
    # sets made without the option keep their records as they were
    plain = generate_dataset(tmp_path / "plain", num_train=1, num_val=0, num_test=0, size=128,
                             phantom="random")
    assert "disc_thickness" not in plain
    capsys.readouterr()
    for args, msg in ((["--disc-thickness", "0.3,1"], "add --phantom random"),
                      (["--phantom", "random", "--disc-thickness", "0.05,1"], "0.1 <= LOW"),
                      (["--phantom", "random", "--disc-thickness", "1,0.5"], "0.1 <= LOW"),
                      (["--phantom", "random", "--disc-thickness", "thin"], "LOW,HIGH")):
        assert main(["data", "synth", str(tmp_path / "bad"), *args, "--num-train", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--disc-thickness" in err and msg in err, err
    assert not (tmp_path / "bad").exists()


def test_wide_geometry_adds_draws_after_the_default_ones():
    """--geometry wide: thickness, depth and every other family draw as before; the bodies are
    1-1.3 x taller, corners and concavity 0.3-1 x, wedges scaled by one factor, and the disc
    reaches under the endplates only as far as concavity and wedge need (at most v2's 3 px)."""
    for i in range(3):
        a, ra = make_image(4, "train", i, size=128, phantom="random")
        d, rd = make_image(4, "train", i, size=128, phantom="random", geometry="default")
        assert np.array_equal(ra.image, rd.image) and a == d
        w, rw = make_image(4, "train", i, size=128, phantom="random", geometry="wide")
        assert w.discs == a.discs and w.body_widths == a.body_widths
        assert w.tissue == a.tissue and w.acquisition == a.acquisition and w.scale == a.scale
        body = np.array(w.body_heights) / np.array(a.body_heights)
        assert np.allclose(body, body[0]) and 1.0 <= body[0] <= 1.3
        assert 0.3 <= w.corner / a.corner <= 1.0
        assert 0.3 <= w.concavity / a.concavity <= 1.0
        wedge = np.array(w.body_wedge) / np.array(a.body_wedge)
        assert np.allclose(wedge, wedge[0]) and 0.3 <= wedge[0] <= 1.0
        need = w.concavity + max(abs(x) for x in w.body_wedge) + 0.5
        assert a.disc_overhang == 3.0 and w.disc_overhang == pytest.approx(min(3.0, need))
    # Thinner boxes for the same discs: a straight spine, one case rendered both ways.
    a = R.sample_case(image_rng(4, "train", 0), 128, off=("fov",))
    w = R.sample_case(image_rng(4, "train", 0), 128, off=("fov",), geometry="wide")
    straight = {"angle": 0.0, "lordosis": 0.0, "s_shape": 0.0, "body_heights": a.body_heights}
    ra = R.render_case(dataclasses.replace(a, **straight))
    rw = R.render_case(dataclasses.replace(w, **straight))
    both = (ra.boxes[:, 2] > 0) & (rw.boxes[:, 2] > 0)
    assert both.sum() >= 3
    assert np.all(rw.boxes[both, 3] - rw.boxes[both, 1] <= ra.boxes[both, 3] - ra.boxes[both, 1])
    assert np.any(rw.boxes[both, 3] - rw.boxes[both, 1] < ra.boxes[both, 3] - ra.boxes[both, 1])


def test_geometry_records_and_errors(tmp_path, capsys):
    out = tmp_path / "wide"
    assert main(["data", "synth", str(out), "--phantom", "random", "--geometry", "wide",
                 "--num-train", "1", "--num-val", "0", "--num-test", "0", "--size", "128"]) == 0
    gen = json.loads((out / "annotations" / "train.json").read_text())["info"]["generator"]
    assert gen["geometry"] == "wide" and "disc_thickness" not in gen
    capsys.readouterr()
    for args, msg in ((["--geometry", "wide"], "add --phantom random"),
                      (["--phantom", "random", "--geometry", "tall"], "default, wide")):
        assert main(["data", "synth", str(tmp_path / "bad"), *args, "--num-train", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--geometry" in err and msg in err, err
    assert not (tmp_path / "bad").exists()
    with pytest.raises(MedDetError, match="unknown geometry"):
        R.sample_case(image_rng(0, "train", 0), 128, geometry="tall")


def test_random_fraction_leaves_the_other_images_at_v2():
    """--random-fraction P: an image is either the randomised phantom's own draw or, with
    every family off, v2's image pixel for pixel; about P of them are randomised."""
    n, mixed = 40, 0
    for i in range(n):
        case, r = make_image(6, "train", i, size=128, phantom="random", random_fraction=0.5)
        if case.off == R.FAMILIES:
            _, v2 = make_image(6, "train", i, size=128)
            assert np.array_equal(r.image, v2.image) and np.array_equal(r.boxes, v2.boxes)
        else:
            full, rf = make_image(6, "train", i, size=128, phantom="random")
            assert case == full and np.array_equal(r.image, rf.image)
            mixed += 1
    assert 10 <= mixed <= 30  # binomial(40, 0.5): outside only with probability < 0.2 %
    # fraction 1 is the randomised phantom itself
    a, _ = make_image(6, "train", 0, size=128, phantom="random", random_fraction=1.0)
    b, _ = make_image(6, "train", 0, size=128, phantom="random")
    assert a == b


def test_random_fraction_records_and_errors(tmp_path, capsys):
    out = tmp_path / "mix"
    assert main(["data", "synth", str(out), "--phantom", "random", "--random-fraction", "0.5",
                 "--num-train", "1", "--num-val", "0", "--num-test", "0", "--size", "128"]) == 0
    gen = json.loads((out / "annotations" / "train.json").read_text())["info"]["generator"]
    assert gen["random_fraction"] == 0.5
    assert main(["data", "synth", str(out), "--overwrite", "--phantom", "random",
                 "--random-fraction", "0.5", "--num-train", "6", "--num-val", "0",
                 "--num-test", "0", "--size", "128", "--seed", "6"]) == 0
    images = json.loads((out / "annotations" / "train.json").read_text())["images"]
    v2 = [make_image(6, "train", i, size=128, phantom="random", random_fraction=0.5)[0].off
          == R.FAMILIES for i in range(6)]
    assert [im["randomised"].get("off") == list(R.FAMILIES) for im in images] == v2
    assert 0 < sum(v2) < 6
    capsys.readouterr()
    for args, msg in ((["--random-fraction", "0.5"], "add --phantom random"),
                      (["--phantom", "random", "--random-fraction", "0"], "(0, 1]"),
                      (["--phantom", "random", "--random-fraction", "1.5"], "(0, 1]"),
                      (["--phantom", "random", "--random-always", "disc"], "--random-fraction"),
                      (["--phantom", "random", "--random-fraction", "0.5", "--random-always",
                        "shape"], "'shape'")):
        assert main(["data", "synth", str(tmp_path / "bad"), *args, "--num-train", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--random-" in err and msg in err, err
    assert not (tmp_path / "bad").exists()


def test_random_always_draws_those_families_in_every_image(tmp_path):
    """--random-fraction P --random-always disc: the images left at v2 still draw the disc
    family (the same draws as the fully randomised image), and nothing else."""
    kept = 0
    for i in range(12):
        case, _ = make_image(6, "train", i, size=128, phantom="random", random_fraction=0.5,
                             random_always=("disc",))
        full, _ = make_image(6, "train", i, size=128, phantom="random")
        assert case.discs == full.discs and case.body_widths == full.body_widths
        if case.off:
            kept += 1
            assert case.off == tuple(f for f in R.FAMILIES if f != "disc")
            v2, _ = make_image(6, "train", i, size=128, phantom="random",
                               random_off=R.FAMILIES)
            assert case.tissue == v2.tissue and case.acquisition == v2.acquisition
        else:
            assert case == full
    assert 0 < kept < 12
    gen = generate_dataset(tmp_path / "d", num_train=1, num_val=0, num_test=0,
                           size=128, phantom="random", random_fraction=0.5,
                           random_always=("disc",))
    assert gen["random_always"] == ["disc"]


def test_iso_discs_make_the_disc_as_bright_as_the_marrow_on_a_dark_rim():
    """--iso-discs P: in about P of the images with the contrast family on, the discs take the
    marrow's intensity (mean within 15 %), the nucleus at most half as far from the annulus as
    drawn, the cortical rim darker than both; every other draw, and every image with P = 0, is
    as without the option."""
    iso = 0
    for i in range(40):
        full = R.sample_case(image_rng(8, "train", i), 128)
        none = R.sample_case(image_rng(8, "train", i), 128, iso_discs=0.0)
        assert none == full and not full.iso_disc
        case = R.sample_case(image_rng(8, "train", i), 128, iso_discs=1.0)
        # only the tissue may change
        assert dataclasses.replace(case, tissue=full.tissue, iso_disc=False) == full
        if not case.iso_disc:  # marrow too dark for a darker rim, or disc as bright as CSF
            assert case.tissue == full.tissue
            continue
        iso += 1
        t, f = case.tissue, full.tissue
        mean = 0.5 * (t.nucleus + t.annulus)
        clipped = {t.nucleus, t.annulus} & {0.02, 1.0}  # the intensity scale's ends
        assert abs(mean - t.marrow) <= 0.15 * t.marrow + 1e-9 or clipped
        assert abs(t.nucleus - t.annulus) <= 0.5 * abs(f.nucleus - f.annulus) + 1e-9
        assert t.cortex <= 0.3 * min(t.marrow, t.annulus) + 1e-9
        assert abs(t.herniation - t.csf) > 0.2
        assert (t.marrow, t.csf, t.cord, t.contrast) == (f.marrow, f.csf, f.cord, f.contrast)
    assert 20 <= iso <= 40
    # the contrast family off: no iso-intense discs whatever the share
    off = R.sample_case(image_rng(8, "train", 0), 128, off=("contrast",), iso_discs=1.0)
    assert not off.iso_disc


def test_iso_discs_records_and_errors(tmp_path, capsys):
    out = tmp_path / "iso"
    assert main(["data", "synth", str(out), "--phantom", "random", "--iso-discs", "1",
                 "--num-train", "8", "--num-val", "0", "--num-test", "0", "--size", "128",
                 "--seed", "8"]) == 0
    coco = json.loads((out / "annotations" / "train.json").read_text())
    assert coco["info"]["generator"]["iso_discs"] == 1.0
    marked = [im["randomised"].get("iso_disc", False) for im in coco["images"]]
    assert marked == [make_image(8, "train", i, size=128, phantom="random",
                                 iso_discs=1.0)[0].iso_disc for i in range(8)]
    assert any(marked)
    capsys.readouterr()
    for args, msg in ((["--iso-discs", "0.5"], "add --phantom random"),
                      (["--phantom", "random", "--iso-discs", "1.5"], "[0, 1]")):
        assert main(["data", "synth", str(tmp_path / "bad"), *args, "--num-train", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--iso-discs" in err and msg in err, err
    assert not (tmp_path / "bad").exists()
