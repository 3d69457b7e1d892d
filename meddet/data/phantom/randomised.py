"""The randomised phantom (``--phantom random``): the default phantom with every appearance and
geometry family drawn from wider ranges, for detectors meant for real scans.

A detector trained on the default phantom (``v2``) finds the discs of real T1-weighted slices
but puts boxes 2-2.5 times too tall on the thin discs of a tightly cropped real T2 volume. In
the manner of SynthSeg (Billot et al., Medical Image Analysis 2023: networks trained only on
synthetic images with randomised contrast, resolution, bias, noise and deformation work on real
scans of any contrast), this phantom draws a default case and then redraws, per image, the
families of :data:`FAMILIES`:

- ``contrast``: half the images get every tissue's intensity drawn independently (the anatomy
  that the labels depend on kept visible); the rest keep the default phantom's contrast.
  With ``iso_discs`` above 0, that share of the images with the family on then makes their
  discs iso-intense with the vertebral marrow (the disc's mean within 15 % of the marrow's, the
  nucleus no more than half as far from the annulus as drawn) on a dark cortical rim, as
  degenerated discs on T2 and discs on many T1-weighted scans look: the endplates, not the
  disc's own signal, then delineate the disc.
- ``gamma``: the global contrast power, log-uniform in [0.5, 2].
- ``bias``: coil shading of log-amplitude up to 0.9 and a front-back gradient from an anterior
  (-0.6) to a strong posterior (1.4) coil.
- ``blur``: the acquired resolution along each axis (0.4-2.5 mm) and, in half the images, the
  slice thickness of a reformat (1-5 mm Gaussian blur along the rows or the columns).
- ``noise``: the noise model (Rician, Gaussian, or the non-central chi of a 2-8 coil
  sum-of-squares) and its level, SNR log-uniform in [low / 2, 1.5 high] of ``snr_range``.
- ``disc``: disc thickness (all discs x0.5-1.25, each jittered x0.85-1.15) and aspect ratio
  (the antero-posterior depth of bodies and discs x0.8-1.3). With ``geometry="wide"`` the
  family also draws the vertebral bodies' height (x1-1.3), corner radius (x0.3-1) and endplate
  concavity (x0.3-1), all log-uniform: with thin discs, a disc box can then take as little as
  a fifth of its vertebral level, as on real sagittal T2 slices, where the default draws keep
  it above about 0.27.
- ``fov``: 60 % of the images are crops around the spine with a field of view down to 34 mm
  (zoom log-uniform in [1.3, 6]); the rest keep the default phantom's view.
- ``spacing``: 60 % of the images are acquired on a coarser matrix (0.6-1.6 mm pixels) and
  interpolated to the image size, as a small real slice is when it is enlarged for a detector.

With ``fraction`` below 1, only that share of the images is randomised (an independent draw per
image, made after everything else); the others are the default phantom's images, pixel for
pixel, so that a data set can hold the benchmark's own domain beside the randomised one, or,
with families in ``always``, the default phantom's images with only those families drawn
(e.g. ``always=("disc",)``: v2's appearance on the randomised geometry).

Every family draws from a random stream of its own, split from the image's generator after the
default case is drawn. Switching one family off (``off``) therefore leaves the default
phantom's values in that family and every other family's draws unchanged, and with every family
off an image is the default phantom's image, pixel for pixel: the ablation compares like with
like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from meddet.data import noise as _noise
from meddet.data.phantom import geometry
from meddet.data.phantom._common import (
    REF_PIXEL_MM,
    REF_SIZE,
    Rendered,
    ghosts_noise_gain,
    label_boxes,
    rendered,
)
from meddet.data.phantom.model import Case, Tissue, layout
from meddet.data.phantom.model import sample_case as sample_default_case
from meddet.data.phantom.render import filter_kspace, labelled, render_clean, shade
from meddet.errors import MedDetError

__all__ = ["FAMILIES", "GEOMETRIES", "NOISE_MODELS", "RandomCase", "check_families", "pixel_mm",
           "render_case", "sample_case"]

#: The randomisation families, in the order their random streams are split off.
FAMILIES = ("contrast", "gamma", "bias", "blur", "noise", "disc", "fov", "spacing")
# The ``disc`` family's range of the thickness factor of an image's discs (log-uniform); data
# sets may widen it (``meddet data synth --disc-thickness LO,HI``).
DISC_THICKNESS = (0.5, 1.25)
NOISE_MODELS = ("rician", "gaussian", "chi")
#: The ``disc`` family's geometry draws: ``default`` (thickness and depth) or ``wide`` (also
#: the bodies' height, corner radius and endplate concavity).
GEOMETRIES = ("default", "wide")
# ``wide`` geometry: log-uniform factors on v2's body heights, corner radius, concavity and
# wedge.
_WIDE_BODY = (1.0, 1.3)
_WIDE_CORNER = (0.3, 1.0)
_WIDE_CONCAVITY = (0.3, 1.0)
_WIDE_WEDGE = (0.3, 1.0)
# Smallest gaps between tissues in an independent contrast draw: herniated disc material and
# CSF, cord and CSF (as the default phantom), and the disc against the bone around it, so
# the labelled boxes stay visible.
_MIN_DISC_CSF = 0.2
_MIN_CORD_CSF = 0.1
_MIN_DISC_BONE = 0.15
# ``iso_discs``: the disc's mean intensity drawn within this fraction of the marrow's, the
# darkest marrow that still leaves room for a darker rim, ...
_ISO_SPREAD = 0.15
_MIN_ISO_MARROW = 0.12
# ... and the rim at most this fraction of the darker of marrow and annulus.
_ISO_RIM = 0.3
# FWHM of a Gaussian in standard deviations.
_FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class RandomCase(Case):
    """A :class:`~meddet.data.phantom.model.Case` plus what only the randomised phantom draws.

    Attributes:
        noise_model: ``"rician"``, ``"gaussian"`` or ``"chi"`` (:data:`NOISE_MODELS`).
        coils: receive coils of the ``"chi"`` model's sum-of-squares (1 otherwise).
        thickness_mm: FWHM of the slice-thickness blur; 0 = none.
        thickness_axis: 0 blurs along the rows (superior-inferior), 1 along the columns.
        acq_pixel_mm: pixel size of the acquisition matrix the image is interpolated from;
            0 = acquired at the image's own pixel size.
        off: the families left at the default phantom's values.
        iso_disc: the discs are iso-intense with the marrow (the ``contrast`` family's
            ``iso_discs`` draw).
    """

    noise_model: str = "rician"
    coils: int = 1
    thickness_mm: float = 0.0
    thickness_axis: int = 0
    acq_pixel_mm: float = 0.0
    off: tuple[str, ...] = ()
    iso_disc: bool = False


def pixel_mm(case: Case) -> float:
    """Millimetres per image pixel of a case (the field of view over the image side)."""
    return REF_PIXEL_MM * REF_SIZE / case.size / case.scale


def check_families(off: Iterable[str]) -> tuple[str, ...]:
    """``off`` as a tuple in :data:`FAMILIES` order.

    Raises:
        MedDetError: an unknown family name.
    """
    off = tuple(off)
    unknown = [f for f in off if f not in FAMILIES]
    if unknown:
        raise MedDetError(f"unknown randomisation family {unknown[0]!r}; use some of: "
                          f"{', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in off)


def _independent_tissue(rng: np.random.Generator) -> Tissue:
    """Every tissue's intensity drawn on its own, as long as the labelled anatomy shows."""
    u = rng.uniform
    while True:
        v = {name: u(0.02, 1.0) for name in ("csf", "cord", "marrow", "annulus", "nucleus",
                                              "muscle", "prevertebral", "fat", "brain", "skin")}
        v["herniation"] = v["annulus"] + u(0.2, 0.7) * (v["nucleus"] - v["annulus"])
        disc = 0.5 * (v["nucleus"] + v["annulus"])
        if abs(v["herniation"] - v["csf"]) > _MIN_DISC_CSF and \
                abs(v["cord"] - v["csf"]) > _MIN_CORD_CSF and \
                abs(disc - v["marrow"]) > _MIN_DISC_BONE:
            return Tissue(**v, cortex=u(0.0, 0.5), ligament=u(0.0, 0.5), contrast="random")


def _iso_disc_tissue(t: Tissue, rng: np.random.Generator) -> Tissue | None:
    """``t`` with the discs moved to the marrow's intensity and a dark cortical rim, or
    ``None`` when that would hide the labelled anatomy (marrow too dark for a darker rim, or
    herniated disc material as bright as the CSF)."""
    if t.marrow < _MIN_ISO_MARROW:
        return None
    mean = t.marrow * float(rng.uniform(1 - _ISO_SPREAD, 1 + _ISO_SPREAD))
    half = 0.5 * (t.nucleus - t.annulus) * float(rng.uniform(0.0, 0.5))
    annulus, nucleus = (min(1.0, max(0.02, v)) for v in (mean - half, mean + half))
    herniation = annulus + (t.herniation - t.annulus) / (t.nucleus - t.annulus or 1.0) * (
        nucleus - annulus)
    cortex = float(rng.uniform(0.0, _ISO_RIM)) * min(t.marrow, annulus)
    if abs(herniation - t.csf) <= _MIN_DISC_CSF:
        return None
    return dataclasses.replace(t, annulus=float(annulus), nucleus=float(nucleus),
                               herniation=float(herniation), cortex=cortex)


def _log_uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]))))


def _discs(case: Case, rng: np.random.Generator,
           thickness: tuple[float, float] = DISC_THICKNESS, geometry: str = "default") -> dict:
    """Thinner or thicker discs (the factor log-uniform in ``thickness``), deeper or shallower
    bodies and discs; with ``geometry="wide"`` also taller bodies, squarer corners and flatter
    endplates (drawn after the others, so the default draws stay the same)."""
    u = rng.uniform
    thick = _log_uniform(rng, thickness)
    discs = []
    for disc in case.discs:
        h = disc.height * thick * u(0.85, 1.15)
        # A herniation keeps its extent beyond the disc's half-height.
        half = disc.protrusion_halfwidth - disc.height / 2 + h / 2 if disc.protrusion else 0.0
        discs.append(dataclasses.replace(disc, height=float(h), protrusion_halfwidth=float(half)))
    depth = u(0.8, 1.3)
    out: dict = {"discs": tuple(discs),
                 "body_widths": tuple(float(w * depth) for w in case.body_widths)}
    if geometry == "wide":
        body = _log_uniform(rng, _WIDE_BODY)
        concavity = case.concavity * _log_uniform(rng, _WIDE_CONCAVITY)
        wedge = _log_uniform(rng, _WIDE_WEDGE)
        wedges = tuple(float(w * wedge) for w in case.body_wedge)
        # The disc reaches under the endplates only as far as their concavity and wedge need.
        overhang = min(case.disc_overhang, concavity + max(map(abs, wedges)) + 0.5)
        out.update(body_heights=tuple(float(h * body) for h in case.body_heights),
                   corner=case.corner * _log_uniform(rng, _WIDE_CORNER),
                   concavity=concavity, body_wedge=wedges, disc_overhang=overhang)
    return out


def _field_of_view(case: Case, rng: np.random.Generator) -> dict:
    """A crop around a random point of the spine, or the default view unchanged."""
    u = rng.uniform
    if u() >= 0.6:
        return {}
    scale = float(np.exp(u(np.log(1.3), np.log(6.0))))
    zoomed = dataclasses.replace(case, scale=scale)
    lay = layout(zoomed)
    s = u(lay["top"][0], lay["bottom"][-1])
    # Across the spine: from the middle of the bodies to the back of the canal, so that the
    # discs' posterior margins (where the label is decided) are mostly in view.
    d = u(-0.5 * float(np.mean(case.body_widths)), 0.8 * case.canal)
    cx, cy = geometry.canonical_offset(zoomed.pose, s, d)
    return {"scale": scale, "shift": (float(cx + u(-3.0, 3.0)), float(cy + u(-3.0, 3.0)))}


def _resolution(case: Case, rng: np.random.Generator) -> tuple[tuple[float, float], dict]:
    """Acquired resolution per axis and the slice thickness of a reformat."""
    u = rng.uniform
    px = pixel_mm(case)
    res = tuple(float(min(1.0, px / u(0.4, 2.5))) for _ in range(2))
    extra = {}
    if u() < 0.5:
        extra = {"thickness_mm": float(u(1.0, 5.0)), "thickness_axis": int(rng.integers(2))}
    return res, extra


def sample_case(
    rng: np.random.Generator,
    size: int = 256,
    *,
    snr_range: tuple[float, float] = (8.0, 40.0),
    protrusion_rate: float = 0.3,
    off: Iterable[str] = (),
    disc_thickness: tuple[float, float] = DISC_THICKNESS,
    geometry: str = "default",
    fraction: float = 1.0,
    always: Iterable[str] = (),
    iso_discs: float = 0.0,
) -> RandomCase:
    """Draw a default case, then redraw every family not in ``off`` (see the module docstring).

    Args:
        rng: the image's generator (the default case's draws come first, so they are the
            default phantom's).
        size: side of the square image in pixels.
        snr_range: the default phantom's SNR range; the ``noise`` family widens it.
        protrusion_rate: probability of a protrusion, per disc.
        off: families of :data:`FAMILIES` to leave at the default phantom's values.
        disc_thickness: range of the ``disc`` family's thickness factor (default
            :data:`DISC_THICKNESS`); the draws are the same, mapped onto the range.
        geometry: ``"default"`` or ``"wide"`` (:data:`GEOMETRIES`; see the module docstring).
        fraction: probability that the image is randomised at all; otherwise every family is
            off but those in ``always`` and the image is the default phantom's otherwise.
        always: families drawn in every image whatever ``fraction`` decides.
        iso_discs: share of the images with the ``contrast`` family on whose discs are made
            iso-intense with the marrow on a dark rim (see the module docstring); with 0 no
            draw is made for it, so the images are those of a set made without it.

    Returns:
        A :class:`RandomCase`.

    Raises:
        MedDetError: an unknown family or geometry.
    """
    off = check_families(off)
    always = check_families(always)
    if geometry not in GEOMETRIES:
        raise MedDetError(f"unknown geometry {geometry!r}; use one of: {', '.join(GEOMETRIES)}")
    base = sample_default_case(rng, size, snr_range=snr_range, protrusion_rate=protrusion_rate)
    # One stream per family, split off whether or not the family is used, so switching one off
    # never changes another's draws.
    streams = dict(zip(FAMILIES, (np.random.default_rng(s) for s in
                                  rng.integers(2**63 - 1, size=len(FAMILIES)))))
    if fraction < 1.0 and rng.uniform() >= fraction:
        off = tuple(f for f in FAMILIES if f in off or f not in always)
    on = {f: streams[f] for f in FAMILIES if f not in off}
    acq = base.acquisition
    assert acq is not None
    fields: dict = {}
    acq_fields: dict = {}
    marks: dict = {}  # RandomCase's own records of a draw
    if "contrast" in on and on["contrast"].uniform() < 0.5:
        fields["tissue"] = _independent_tissue(on["contrast"])
    if "contrast" in on and iso_discs > 0 and on["contrast"].uniform() < iso_discs:
        iso = _iso_disc_tissue(fields.get("tissue", base.tissue), on["contrast"])
        if iso is not None:
            fields["tissue"] = iso
            marks["iso_disc"] = True
    if "gamma" in on:
        fields["gamma"] = float(np.exp(on["gamma"].uniform(np.log(0.5), np.log(2.0))))
    if "bias" in on:
        acq_fields.update(bias=float(on["bias"].uniform(0.0, 0.9)),
                          coil=float(on["bias"].uniform(-0.6, 1.4)))
    if "disc" in on:
        fields.update(_discs(base, on["disc"], disc_thickness, geometry))
    if "fov" in on:
        fields.update(_field_of_view(dataclasses.replace(base, **fields), on["fov"]))
    case = dataclasses.replace(base, **fields)
    if "blur" in on:
        res, thick = _resolution(case, on["blur"])
        acq_fields["resolution"] = res
        fields.update(thick)
    if "noise" in on:
        g = on["noise"]
        lo, hi = float(snr_range[0]) / 2, float(snr_range[1]) * 1.5
        acq_fields["snr"] = float(np.exp(g.uniform(np.log(lo), np.log(hi))))
        model = NOISE_MODELS[int(g.choice(len(NOISE_MODELS), p=(0.5, 0.2, 0.3)))]
        fields.update(noise_model=model, coils=int(g.integers(2, 9)) if model == "chi" else 1)
    if "spacing" in on and on["spacing"].uniform() < 0.6:
        fields["acq_pixel_mm"] = float(on["spacing"].uniform(0.6, 1.6))
    fields["acquisition"] = dataclasses.replace(acq, **acq_fields)
    kept = {f.name: getattr(base, f.name) for f in dataclasses.fields(Case)}
    return RandomCase(**{**kept, **fields, **marks, "off": off})


# --------------------------------------------------------------------------- rendering
def _chi_noise(img: np.ndarray, snr: float, coils: int, rng: np.random.Generator) -> np.ndarray:
    """Sum-of-squares magnitude of ``coils`` receive channels, each with complex Gaussian
    noise: the non-central chi distribution of parallel imaging (Rician for one coil)."""
    sigma = np.float32(_noise.signal_level(img) / snr)
    share = img.astype(np.float32) / np.float32(np.sqrt(coils))
    total = np.zeros(img.shape, np.float32)
    for _ in range(coils):
        re = share + sigma * rng.standard_normal(img.shape, dtype=np.float32)
        im = sigma * rng.standard_normal(img.shape, dtype=np.float32)
        total += re * re + im * im
    return np.sqrt(total)


def _noise_fn(case: RandomCase):
    if case.noise_model == "gaussian":
        return lambda img, snr, rng: _noise.gaussian_noise(
            img, _noise.signal_level(img) / snr, rng)
    if case.noise_model == "chi":
        return lambda img, snr, rng: _chi_noise(img, snr, case.coils, rng)
    return None  # Rician: the default phantom's


def _thick_slice(img: np.ndarray, case: RandomCase) -> np.ndarray:
    """Gaussian blur of FWHM ``case.thickness_mm`` along one axis (in k-space, on the image
    mirrored at its edges so that the top does not bleed into the bottom)."""
    sigma = case.thickness_mm / _FWHM / pixel_mm(case)  # in image pixels
    axis = case.thickness_axis
    n = img.shape[axis]
    pad = min(n - 1, int(np.ceil(3 * sigma)))
    widths = [(0, 0), (0, 0)]
    widths[axis] = (pad, pad)
    padded = np.pad(img, widths, mode="reflect")
    m = padded.shape[axis]
    gain = np.exp(-2.0 * (np.pi * sigma * np.fft.rfftfreq(m)) ** 2).astype(np.float32)
    shape = [1, 1]
    shape[axis] = gain.size
    out = np.fft.irfft(np.fft.rfft(padded, axis=axis) * gain.reshape(shape), n=m, axis=axis)
    out = np.take(out, np.arange(pad, pad + n), axis=axis)
    return np.maximum(out, 0).astype(np.float32)


def _resize(img: np.ndarray, side: int, resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(np.ascontiguousarray(img, np.float32))
                      .resize((side, side), resample), dtype=np.float32)


def acquire(clean: np.ndarray, case: RandomCase) -> np.ndarray:
    """The default phantom's acquisition with the randomised phantom's extras.

    Coil shading, resolution and ringing as the default phantom; then the slice-thickness
    blur; then, on a coarser acquisition matrix (``acq_pixel_mm``), ghosting, noise of the
    case's model and the gain, interpolated back to the image size (bilinear, as a detector's
    pre-processing enlarges a small slice). With none of the extras it is the default
    phantom's :func:`~meddet.data.phantom.render.acquire`, draw for draw.

    Returns:
        float32 ``H×W`` image in [0, 1].
    """
    acq = case.acquisition
    rng = np.random.default_rng(acq.seed)
    img = filter_kspace(shade(clean, acq, rng), acq)
    if case.thickness_mm > 0:
        img = _thick_slice(img, case)
    n = img.shape[0]
    matrix = n
    if case.acq_pixel_mm > pixel_mm(case):
        matrix = max(16, round(n * pixel_mm(case) / case.acq_pixel_mm))
    if matrix < n:  # area average onto the coarse matrix
        img = _resize(img, matrix, Image.Resampling.BOX)
    img = ghosts_noise_gain(img, acq, rng, add_noise=_noise_fn(case))
    if matrix < n:
        img = np.clip(_resize(img, n, Image.Resampling.BILINEAR), 0.0, 1.0)
    return img


def render_case(case: RandomCase, *, artifacts: bool = True) -> Rendered:
    """Render a randomised case into an image and its disc boxes (as the default phantom's
    :func:`~meddet.data.phantom.render.render_case`, with :func:`acquire`)."""
    clean, label, s, d = render_clean(case)
    return rendered(case, clean, label, s, d, acquire=lambda img, _: acquire(img, case),
                    artifacts=artifacts, boxes=labelled(case, label_boxes(label)))
