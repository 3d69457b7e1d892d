"""Writing the synthetic CDH-MRI dataset to disk in COCO layout.

``out/images/{train,val,test}/*.png`` and ``out/annotations/{train,val,test}.json``. Every image
has its own random generator seeded from ``(seed, split, index)``, so an image does not depend
on how many images the other splits have, and the same arguments give byte-identical files.
The dataset is written into a temporary sibling folder and moved into place at the end, so an
interrupted or failed run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from meddet import __version__
from meddet.data import synth as _synth
from meddet.data.phantom import randomised as _random
from meddet.data.phantom import v1 as _v1
from meddet.data.synth import (
    CATEGORIES,
    DISC_NAMES,
    PROTRUSION_ID,
    Case,
    Rendered,
    quantize,
)
from meddet.errors import MedDetError

SPLITS = ("train", "val", "test")
# Fixed per-split stream ids: adding images to one split never changes another split.
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
MIN_SIZE, MAX_SIZE = 128, 2048
# What `overwrite` may delete: a previous dataset, nothing else.
_DATASET_ENTRIES = {"images", "annotations"}
# zlib level 1: files ~15 % larger than the default level but encoding is several times
# faster, and generation speed matters more than disk here.
_PNG_LEVEL = 1
# The phantom generators by name: each module has sample_case(rng, size, *, snr_range,
# protrusion_rate) and render_case(case). "v2" (meddet.data.synth) is the default; "random"
# (meddet.data.phantom.randomised) also takes off=<families left at v2's values>.
PHANTOMS = {"v1": _v1, "v2": _synth, "random": _random}
DEFAULT_PHANTOM = "v2"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of image ``index`` of ``split``."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_STREAM[split], index]))


def make_image(
    seed: int,
    split: str,
    index: int,
    *,
    size: int = 256,
    snr_range: tuple[float, float] = (8.0, 40.0),
    protrusion_rate: float = 0.3,
    phantom: str = DEFAULT_PHANTOM,
    random_off: tuple[str, ...] = (),
    disc_thickness: tuple[float, float] | None = None,
    geometry: str | None = None,
    random_fraction: float | None = None,
    random_always: tuple[str, ...] = (),
    iso_discs: float | None = None,
) -> tuple[Case, Rendered]:
    """Sample and render one image exactly as :func:`generate_dataset` does."""
    mod = PHANTOMS[phantom]
    extra: dict[str, Any] = {"off": random_off} if phantom == "random" else {}
    if disc_thickness is not None:
        extra["disc_thickness"] = disc_thickness
    if geometry is not None:
        extra["geometry"] = geometry
    if random_fraction is not None:
        extra["fraction"] = random_fraction
    if random_always:
        extra["always"] = random_always
    if iso_discs is not None:
        extra["iso_discs"] = iso_discs
    case = mod.sample_case(image_rng(seed, split, index), size, snr_range=snr_range,
                           protrusion_rate=protrusion_rate, **extra)
    return case, mod.render_case(case)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8``/``uint16`` ``H×W`` array, with no metadata (deterministic)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _records(case: Case, rendered: Rendered, image_id: int, file_name: str, first_ann_id: int):
    acq = case.acquisition
    image = {
        "id": image_id,
        "file_name": file_name,
        "width": case.size,
        "height": case.size,
        # Per-image acquisition, so robustness can be stratified by noise level later.
        "acquisition": {
            "snr": _r(acq.snr, 3),
            "ghosting": _r(acq.ghosting),
            "ghost_period": _r(acq.ghost_period, 3),
            "phase_encode": acq.pe_axis,
            "gibbs_keep": _r(acq.gibbs),
            "bias": _r(acq.bias),
            "gain": _r(acq.gain),
        },
    }
    if hasattr(acq, "resolution"):  # the default phantom's extra acquisition parameters
        image["acquisition"].update({"resolution": [_r(v) for v in acq.resolution],
                                     "coil": _r(acq.coil)})
        image["contrast"] = case.tissue.contrast
        image["pixel_mm"] = _r(_synth.REF_PIXEL_MM * _synth.REF_SIZE / case.size / case.scale)
    if isinstance(case, _random.RandomCase):
        image["randomised"] = {"noise_model": case.noise_model, "coils": case.coils,
                               "thickness_mm": _r(case.thickness_mm, 3),
                               "thickness_axis": "si" if case.thickness_axis == 0 else "ap",
                               "acq_pixel_mm": _r(case.acq_pixel_mm), "gamma": _r(case.gamma),
                               "scale": _r(case.scale)}
        if case.off:  # the families this image left at v2's values
            image["randomised"]["off"] = list(case.off)
        if case.iso_disc:  # discs iso-intense with the marrow (--iso-discs)
            image["randomised"]["iso_disc"] = True
    anns = []
    for k, (disc, box, cat) in enumerate(zip(case.discs, rendered.boxes, rendered.category_ids)):
        x0, y0, x1, y1 = (float(v) for v in box)
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:  # the disc is out of view (zoomed or shifted field of view)
            continue
        anns.append({
            "id": first_ann_id + len(anns),
            "image_id": image_id,
            "category_id": cat,
            "bbox": [x0, y0, w, h],
            "area": w * h,
            "iscrowd": 0,
            "disc": DISC_NAMES[k],
            # Herniation depth in pixels of a 256 px image (0 for non-protrusion): the
            # difficulty of a positive, for stratified evaluation.
            "severity": _r(disc.protrusion * case.scale, 3) if cat == PROTRUSION_ID else 0.0,
            "degeneration": _r(disc.degeneration, 3),
        })
    return image, anns


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise MedDetError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def validate_args(
    out: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    size: int,
    seed: int,
    snr_range: tuple[float, float],
    protrusion_rate: float,
    bit_depth: int,
    overwrite: bool,
    phantom: str = DEFAULT_PHANTOM,
    random_off: tuple[str, ...] | list[str] = (),
    disc_thickness: tuple[float, float] | None = None,
    geometry: str | None = None,
    random_fraction: float | None = None,
    random_always: tuple[str, ...] | list[str] = (),
    iso_discs: float | None = None,
) -> dict[str, int]:
    """Check the arguments of :func:`generate_dataset` without writing anything.

    Returns:
        The image count per split.

    Raises:
        MedDetError: the first invalid argument, with how to fix it.
    """
    counts = {"train": _check_count("--num-train", num_train),
              "val": _check_count("--num-val", num_val),
              "test": _check_count("--num-test", num_test)}
    if not sum(counts.values()):
        raise MedDetError("nothing to generate: --num-train, --num-val and --num-test are all 0")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise MedDetError(f"--size must be an integer, got {size!r}")
    if size % 32 or not MIN_SIZE <= size <= MAX_SIZE:
        raise MedDetError(f"--size must be a multiple of 32 between {MIN_SIZE} and {MAX_SIZE} "
                          f"(e.g. 256), got {size}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MedDetError(f"--seed must be a non-negative integer, got {seed!r}")
    try:
        lo, hi = (float(v) for v in snr_range)
    except (TypeError, ValueError):
        raise MedDetError(f"--snr-range must be two numbers LOW,HIGH, got {snr_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise MedDetError(f"--snr-range must satisfy 0 < LOW <= HIGH (e.g. 8,40), got {lo:g},{hi:g}")
    if isinstance(protrusion_rate, bool) or not isinstance(protrusion_rate, (int, float)) or not (
        0 <= protrusion_rate <= 1
    ):
        raise MedDetError(f"--protrusion-rate must be in [0, 1], got {protrusion_rate!r}")
    if bit_depth not in (8, 16):
        raise MedDetError(f"--bit-depth must be 8 or 16, got {bit_depth!r}")
    if phantom not in PHANTOMS:
        raise MedDetError(f"--phantom must be one of {', '.join(PHANTOMS)}, got {phantom!r}")
    if random_off and phantom != "random":
        raise MedDetError("--random-off switches off families of --phantom random; add "
                          "--phantom random or drop --random-off")
    try:
        _random.check_families(random_off)
    except MedDetError as exc:
        raise MedDetError(f"--random-off: {exc}") from None
    if disc_thickness is not None:
        if phantom != "random":
            raise MedDetError("--disc-thickness sets the disc family of --phantom random; add "
                              "--phantom random or drop --disc-thickness")
        try:
            lo, hi = (float(v) for v in disc_thickness)
        except (TypeError, ValueError):
            raise MedDetError("--disc-thickness must be two numbers LOW,HIGH, got "
                              f"{disc_thickness!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.1 <= lo <= hi <= 3):
            raise MedDetError("--disc-thickness must satisfy 0.1 <= LOW <= HIGH <= 3 (v2's discs "
                              f"times that factor; e.g. 0.25,1.25), got {lo:g},{hi:g}")
    if geometry is not None:
        if phantom != "random":
            raise MedDetError("--geometry sets the disc family of --phantom random; add "
                              "--phantom random or drop --geometry")
        if geometry not in _random.GEOMETRIES:
            raise MedDetError(f"--geometry must be one of {', '.join(_random.GEOMETRIES)}, "
                              f"got {geometry!r}")
    if random_fraction is not None:
        if phantom != "random":
            raise MedDetError("--random-fraction sets how many images --phantom random "
                              "randomises; add --phantom random or drop --random-fraction")
        if isinstance(random_fraction, bool) or not isinstance(random_fraction, (int, float)) \
                or not 0 < random_fraction <= 1:
            raise MedDetError(f"--random-fraction must be in (0, 1] (e.g. 0.5), got "
                              f"{random_fraction!r}")
    if random_always:
        if random_fraction is None:
            raise MedDetError("--random-always names families drawn in the images that "
                              "--random-fraction leaves at v2; add --random-fraction P or drop "
                              "--random-always")
        try:
            _random.check_families(random_always)
        except MedDetError as exc:
            raise MedDetError(f"--random-always: {exc}") from None
    if iso_discs is not None:
        if phantom != "random":
            raise MedDetError("--iso-discs sets the contrast family of --phantom random; add "
                              "--phantom random or drop --iso-discs")
        if isinstance(iso_discs, bool) or not isinstance(iso_discs, (int, float)) \
                or not 0 <= iso_discs <= 1:
            raise MedDetError(f"--iso-discs must be in [0, 1] (e.g. 0.5), got {iso_discs!r}")
    check_out_folder(Path(out), overwrite=overwrite)
    return counts


def check_out_folder(out: Path, *, overwrite: bool,
                     allowed: frozenset[str] | set[str] = frozenset(_DATASET_ENTRIES)) -> None:
    """Fail unless ``out`` is absent, an empty folder, or (with ``overwrite``) a folder that
    holds only ``allowed`` entries (a previous dataset).

    Raises:
        MedDetError: saying which of these ``out`` is not.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise MedDetError(f"output {out} exists and is not a folder; choose another path")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not overwrite:
        raise MedDetError(f"output folder {out} is not empty; pass --overwrite to replace it "
                          "or choose a new folder")
    foreign = [e for e in entries if e not in allowed]
    if foreign:
        raise MedDetError(f"refusing to overwrite {out}: it holds {foreign[0]!r}, which is not "
                          "part of a meddet dataset; choose an empty or new folder")


def generate_dataset(
    out: str | os.PathLike,
    *,
    num_train: int,
    num_val: int,
    num_test: int,
    size: int = 256,
    seed: int = 0,
    snr_range: tuple[float, float] = (8.0, 40.0),
    protrusion_rate: float = 0.3,
    bit_depth: int = 8,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    phantom: str = DEFAULT_PHANTOM,
    random_off: tuple[str, ...] | list[str] = (),
    disc_thickness: tuple[float, float] | None = None,
    geometry: str | None = None,
    random_fraction: float | None = None,
    random_always: tuple[str, ...] | list[str] = (),
    iso_discs: float | None = None,
) -> dict[str, Any]:
    """Generate the synthetic CDH-MRI dataset.

    Args:
        out: output folder; must not exist, be empty, or (with ``overwrite``) hold a previous
            dataset (only ``images/`` and ``annotations/``).
        num_train, num_val, num_test: images per split (>= 0, not all 0).
        size: image side in pixels, a multiple of 32 in [128, 2048].
        seed: non-negative master seed.
        snr_range: ``(low, high)`` range of the per-image Rician SNR.
        protrusion_rate: probability that a disc has a protrusion.
        bit_depth: 8 or 16 bits per PNG pixel.
        overwrite: replace an existing dataset in ``out``.
        progress: optional ``progress(done, total)`` called after each image.
        phantom: ``"v2"`` (default, :mod:`meddet.data.synth`), ``"v1"``, the first phantom
            (:mod:`meddet.data.phantom.v1`), kept to reproduce results made with it, or
            ``"random"`` (:mod:`meddet.data.phantom.randomised`), v2 with every appearance
            and geometry family drawn from wider ranges, for detectors meant for real scans.
        random_off: with ``phantom="random"``, families of
            :data:`~meddet.data.phantom.randomised.FAMILIES` left at v2's values (ablation).
        disc_thickness: with ``phantom="random"``, the range of the disc family's thickness
            factor (``None``: :data:`~meddet.data.phantom.randomised.DISC_THICKNESS`).
        geometry: with ``phantom="random"``, the disc family's geometry draws, ``"default"``
            or ``"wide"`` (:data:`~meddet.data.phantom.randomised.GEOMETRIES`; ``None``:
            ``"default"``).
        random_fraction: with ``phantom="random"``, the share of images randomised (the rest
            are v2's own images; ``None``: every image).
        random_always: with ``random_fraction``, families drawn in every image (the others'
            images are v2's but for those families).
        iso_discs: with ``phantom="random"``, the share of the images with the contrast
            family on whose discs are iso-intense with the marrow on a dark cortical rim
            (``None``: none).

    Returns:
        Summary: ``{"out", "size", "seed", "bit_depth", "snr_range", "protrusion_rate",
        "phantom", "splits": {split: {"images", "protrusion", "non-protrusion"}}}``, plus
        ``"random_off"`` for the randomised phantom (and ``"disc_thickness"``, ``"geometry"``,
        ``"random_fraction"``, ``"random_always"`` and ``"iso_discs"`` when set).

    Raises:
        MedDetError: invalid arguments or an unusable ``out``; nothing is written then.
    """
    counts = validate_args(out, num_train=num_train, num_val=num_val, num_test=num_test,
                           size=size, seed=seed, snr_range=snr_range,
                           protrusion_rate=protrusion_rate, bit_depth=bit_depth,
                           overwrite=overwrite, phantom=phantom, random_off=random_off,
                           disc_thickness=disc_thickness, geometry=geometry,
                           random_fraction=random_fraction, random_always=random_always,
                           iso_discs=iso_discs)
    off = _random.check_families(random_off)
    thick = None if disc_thickness is None else (float(disc_thickness[0]),
                                                 float(disc_thickness[1]))
    out = Path(out)
    snr = (float(snr_range[0]), float(snr_range[1]))
    params = {"size": int(size), "seed": int(seed), "snr_range": list(snr),
              "protrusion_rate": float(protrusion_rate), "bit_depth": int(bit_depth),
              "phantom": phantom}
    if phantom == "random":  # v2 and v1 datasets keep their records as they were
        params["random_off"] = list(off)
        if thick is not None:  # sets made before the option keep their records too
            params["disc_thickness"] = list(thick)
        if geometry is not None:
            params["geometry"] = geometry
        if random_fraction is not None:
            params["random_fraction"] = float(random_fraction)
        if random_always:
            params["random_always"] = list(_random.check_families(random_always))
        if iso_discs is not None:
            params["iso_discs"] = float(iso_discs)
    summary: dict[str, Any] = {"out": str(out), **params, "splits": {}}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _fresh_dir(out, "partial")
    except OSError as exc:
        blocker = next((p for p in out.parents if p.exists()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None and \
            not blocker.is_dir() else (exc.strerror or str(exc))
        raise MedDetError(f"cannot create the dataset folder {out}: {why}; "
                          "choose a writable location") from None
    total, done = sum(counts.values()), 0
    try:
        for split in SPLITS:
            img_dir = tmp / "images" / split
            img_dir.mkdir(parents=True)
            images, annotations = [], []
            for i in range(counts[split]):
                case, rendered = make_image(seed, split, i, size=size, snr_range=snr,
                                            protrusion_rate=protrusion_rate, phantom=phantom,
                                            random_off=off, disc_thickness=thick,
                                            geometry=geometry,
                                            random_fraction=random_fraction,
                                            random_always=tuple(random_always),
                                            iso_discs=iso_discs)
                name = f"{split}_{i:05d}.png"
                (img_dir / name).write_bytes(encode_png(quantize(rendered.image, bit_depth)))
                image, anns = _records(case, rendered, i + 1, name, len(annotations) + 1)
                images.append(image)
                annotations.extend(anns)
                done += 1
                if progress is not None:
                    progress(done, total)
            coco = {
                "info": {"description": "MedDet synthetic CDH-MRI: sagittal cervical-spine MR "
                         "phantoms, one box per disc C2/3-C7/T1",
                         "version": __version__, "split": split, "generator": params},
                "licenses": [],
                "images": images,
                "annotations": annotations,
                "categories": [dict(c) for c in CATEGORIES],
            }
            ann_path = tmp / "annotations" / f"{split}.json"
            ann_path.parent.mkdir(exist_ok=True)
            ann_path.write_text(json.dumps(coco, indent=1) + "\n", encoding="utf-8")
            per_cat = {c["name"]: sum(a["category_id"] == c["id"] for a in annotations)
                       for c in CATEGORIES}
            summary["splits"][split] = {"images": counts[split], **per_cat}
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _fresh_dir(out: Path, tag: str) -> Path:
    """A new hidden folder next to ``out`` (created with the umask's permissions, unlike
    ``tempfile.mkdtemp``'s 0700, because it becomes the dataset folder)."""
    while True:
        path = out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` folder to ``out``, replacing an old dataset there."""
    old = None
    if out.exists():
        old = _fresh_dir(out, "old")
        os.replace(out, old / "data")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
