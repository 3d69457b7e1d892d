"""The first phantom (``--phantom v1``): a sagittal T2 cervical spine drawn as simple shapes.

Kept so that results made with it can be reproduced; :mod:`meddet.data.synth` is the default.

A case is drawn in two steps: :func:`sample_case` draws every random parameter (anatomy, disc
findings, acquisition) into a frozen :class:`Case`; :func:`render_case` turns a case into an
image and its disc boxes without further randomness of its own (texture and noise come from
seeds stored in the case). Editing one field of a case and rendering again therefore changes
only what that field controls, which is how the tests show that a disc's label follows its
posterior contour and nothing else.

Geometry is expressed in *reference pixels* (pixels of a 256 px image, about 0.8 mm) in a
curvilinear spine frame: ``s`` runs down the spine (craniocaudal, arclength of the lordotic
curve), ``d`` is the signed distance from the posterior wall of the vertebral bodies, positive
towards the back (the spinal canal). Anterior is image left, cranial is image top. Rendering
is vectorised over the pixel grid; there are no per-pixel Python loops.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from meddet.data import noise as _noise
from meddet.data.phantom._common import (
    REF_SIZE,
    STRIP_PIXELS,
    Disc,
    DiscArrays,
    Rendered,
    ghosts_noise_gain,
    paint_disc,
    paint_herniation,
    paint_pll_and_label,
    quantize,
    rendered,
    sample_disc,
    spinous_sdf,
)
from meddet.data.phantom._common import band as _band
from meddet.data.phantom._common import columns as _columns
from meddet.data.phantom._common import nearest as _nearest
from meddet.data.phantom._common import paint as _paint
from meddet.data.phantom._common import rrect_sdf as _rrect_sdf
from meddet.data.phantom._common import soft as _soft

# Labels, disc findings (Disc, with_protrusion, ...) and quantize are shared with the default
# phantom: import them from meddet.data.synth.
__all__ = ["Acquisition", "Case", "Rendered", "Tissue", "acquire", "quantize", "render_case",
           "render_clean", "sample_case"]

@dataclass(frozen=True)
class Acquisition:
    """Noise and artifact parameters of one simulated acquisition (stored in COCO)."""

    snr: float  # Rician SNR (tissue mean / sigma)
    ghosting: float  # peak phase error (rad) of periodic motion; 0 = none
    ghost_period: float  # motion period in phase-encode lines
    pe_axis: str  # phase-encode direction: "ap" (horizontal) or "si" (vertical)
    gibbs: float  # fraction of k-space kept; 1 = no truncation ringing
    bias: float  # log-amplitude of the smooth coil-sensitivity field
    gain: float  # global intensity scale of the stored image
    seed: int  # seeds the noise draws


@dataclass(frozen=True)
class Tissue:
    """Clean T2 signal of each tissue, roughly on a 0-1 scale."""

    csf: float = 0.92
    cord: float = 0.46
    marrow: float = 0.42
    cortex: float = 0.06
    annulus: float = 0.2
    nucleus: float = 0.86
    herniation: float = 0.34
    ligament: float = 0.08
    muscle: float = 0.22
    prevertebral: float = 0.3
    fat: float = 0.72
    air: float = 0.0


@dataclass(frozen=True)
class Case:
    """Everything that defines one phantom image; lengths in reference pixels."""

    size: int
    angle: float  # in-plane rotation, radians
    scale: float  # isotropic zoom of the anatomy
    shift: tuple[float, float]  # (x, y) translation of the spine centre
    lordosis: float  # anterior bow of the spine at mid-length
    body_heights: tuple[float, ...]  # C2 (without dens) ... T1
    body_widths: tuple[float, ...]  # antero-posterior depth, C2 ... T1
    discs: tuple[Disc, ...]  # C2/3 ... C7/T1
    canal: float  # antero-posterior depth of the spinal canal
    cord: float  # antero-posterior thickness of the cord
    prevertebral: float  # soft tissue between vertebral bodies and airway (upper levels)
    spinous_tilt: float  # caudal tilt of the spinous processes, radians
    tissue: Tissue = field(default_factory=Tissue)
    gamma: float = 1.0  # global contrast (power applied to the clean image)
    texture_seed: int = 0
    acquisition: Acquisition | None = None


def sample_case(rng: np.random.Generator, size: int = 256, *,
                snr_range: tuple[float, float] = (8.0, 40.0),
                protrusion_rate: float = 0.3) -> Case:
    """Draw a random case of the first phantom.

    The protrusion of each disc is drawn independently of its position, height and
    degeneration, so nothing but the posterior contour carries the label.

    Args:
        rng: the only source of randomness (one generator per image keeps images independent).
        size: image side in pixels.
        snr_range: Rician SNR is drawn uniformly from this range.
        protrusion_rate: probability that a disc has a protrusion.

    Returns:
        A :class:`Case`.
    """
    u = rng.uniform
    scale = u(0.88, 1.1)
    body_heights = [u(19.0, 23.0)] + [u(14.5, 17.0) for _ in range(5)] + [u(16.5, 19.0)]
    w0 = u(19.0, 22.0)
    body_widths = [w0 * f * u(0.97, 1.03) for f in (1.0, 0.98, 1.0, 1.03, 1.06, 1.1, 1.15)]
    discs = [sample_disc(rng, k, height_range=(5.2, 7.0), contour_scale=1.0, scale=scale,
                         protrusion_rate=protrusion_rate) for k in range(6)]
    canal = u(16.0, 20.0)
    acq = Acquisition(
        snr=float(u(*snr_range)),
        ghosting=float(u(0.05, 0.45)) if u() < 0.6 else 0.0,
        ghost_period=float(u(3.0, 8.0)),
        pe_axis="ap" if u() < 0.5 else "si",
        gibbs=float(u(0.45, 0.75)) if u() < 0.3 else 1.0,
        bias=float(u(0.05, 0.35)),
        gain=float(u(0.6, 1.0)),
        seed=int(rng.integers(2**63 - 1)),
    )
    t = Tissue()
    jitter = {name: getattr(t, name) * u(0.88, 1.12) for name in t.__dataclass_fields__}
    return Case(
        size=int(size),
        angle=float(np.deg2rad(u(-10.0, 10.0))),
        scale=float(scale),
        shift=(float(u(-10.0, 10.0)), float(u(-8.0, 8.0))),
        lordosis=float(u(-3.0, 14.0)),
        body_heights=tuple(float(h) for h in body_heights),
        body_widths=tuple(float(w) for w in body_widths),
        discs=tuple(discs),
        canal=float(canal),
        cord=float(u(0.4, 0.48) * canal),
        prevertebral=float(u(3.0, 6.0)),
        spinous_tilt=float(np.deg2rad(u(15.0, 35.0))),
        tissue=Tissue(**jitter),
        gamma=float(u(0.8, 1.25)),
        texture_seed=int(rng.integers(2**63 - 1)),
        acquisition=acq,
    )


# ---------------------------------------------------------------------------------------------
# Rendering. All lengths are in reference px; `px` (image px per reference px) turns signed
# distances into coverages that are anti-aliased over one image pixel at every output size.

def _layout(case: Case) -> dict[str, np.ndarray]:
    """Craniocaudal positions (s) of the bodies and discs, centred on the spine's midpoint."""
    dens = 14.0
    hb = np.asarray(case.body_heights)
    hd = np.asarray([d.height for d in case.discs])
    total = dens + hb.sum() + hd.sum()
    top = np.empty(7)
    cursor = REF_SIZE / 2 - total / 2 + dens
    disc_c = np.empty(6)
    for j in range(7):
        top[j] = cursor
        cursor += hb[j]
        if j < 6:
            disc_c[j] = cursor + hd[j] / 2
            cursor += hd[j]
    return {"top": top, "bottom": top + hb, "disc_c": disc_c, "dens_top": top[0] - dens}


def _spine_coords(case: Case, rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """Spine coordinates (s, d) in reference px of the pixels in ``rows``, float32 each.

    The posterior body line is the parabola ``x = x0 - A·(1 - ((y - c)/H)²)`` in the canonical
    frame (anterior bow ``A`` = lordosis); the canonical frame maps to the image by rotation,
    zoom and shift about the image centre. Each pixel is projected onto the curve by two Newton
    steps; ``s`` is the arclength of the foot point and ``d`` the signed normal distance.
    """
    n = case.size
    f32 = np.float32
    c = (np.arange(n, dtype=np.float32) + f32(0.5)) * f32(REF_SIZE / n)
    mid = f32(REF_SIZE / 2)
    gx = c[None, :] - f32(mid + case.shift[0])
    gy = c[rows, None] - f32(mid + case.shift[1])
    cos, sin = f32(np.cos(case.angle)), f32(np.sin(case.angle))
    inv = f32(1.0 / case.scale)
    x = (cos * gx + sin * gy) * inv + mid
    y = (-sin * gx + cos * gy) * inv + mid

    x0, half = f32(REF_SIZE * 0.55), 100.0
    a2 = f32(case.lordosis / half**2)  # f(t) = x0 - A + a2·(t - mid)², so f'' = 2·a2
    base = x0 - f32(case.lordosis)
    t = y
    for _ in range(2):  # Newton on g(t) = (x - f(t))·f'(t) + (y - t) = 0
        slope = 2 * a2 * (t - mid)
        off = x - (base + a2 * np.square(t - mid))
        g = off * slope + (y - t)
        dg = off * (2 * a2) - np.square(slope) - 1
        t = t - g / dg
    slope = 2 * a2 * (t - mid)
    norm = np.sqrt(1 + np.square(slope))
    d = ((x - (base + a2 * np.square(t - mid))) - slope * (y - t)) / norm
    if abs(case.lordosis) < 1e-6:
        s = t
    else:  # closed-form arclength of the parabola, measured from its vertex
        s = mid + (slope * norm + np.arcsinh(slope)) / (4 * a2)
    return s.astype(np.float32), d.astype(np.float32)


class _Scene:
    """Per-case constants of the renderer (tissue values with the contrast gamma folded in)."""

    def __init__(self, case: Case):
        lay = _layout(case)
        g = case.gamma
        # Applying the contrast power to the tissue values instead of every pixel saves a
        # full-image pow; edges blend in the transformed domain, which is invisible.
        self.t = {k: float(v) ** g for k, v in vars(case.tissue).items()}
        self.gamma = g
        self.px = case.scale * case.size / REF_SIZE
        f32 = np.float32
        self.bw = np.asarray(case.body_widths, np.float32)
        self.bc = ((lay["top"] + lay["bottom"]) / 2).astype(np.float32)
        self.bh = ((lay["bottom"] - lay["top"]) / 2).astype(np.float32)
        self.discs = DiscArrays(case.discs, lay["disc_c"])
        self.disc_w = (self.bw[:-1] + self.bw[1:]) / 2
        self.spine_len = np.asarray([24, 18, 18, 19, 24, 34, 31], np.float32)
        self.s_top = f32(lay["dens_top"])
        self.s_bot = f32(lay["bottom"][-1])
        self.dens_c = f32(lay["dens_top"] + 9)
        self.canal = f32(case.canal)
        self.cord_front = f32((case.canal - case.cord) * 0.42)
        self.cord_back = f32((case.canal - case.cord) * 0.42 + case.cord)
        self.prev = f32(case.prevertebral)
        self.tilt = f32(np.tan(case.spinous_tilt))
        # Extent of the spine structures across the spine (d), with a margin for the C1 arches
        # in front and the longest spinous process behind the canal.
        self.d_lo = f32(-float(self.bw.max()) - 12.0)
        self.d_hi = f32(float(self.spine_len.max()) + 6.0)


def _render_rows(sc: _Scene, s, d, muscle_tex, marrow_tex):
    """Render one strip of rows given its spine coordinates; returns (image, disc label map)."""
    f32 = np.float32
    t, px = sc.t, sc.px
    canal = sc.canal
    # Anterior wall of the bodies, interpolated smoothly along the spine so the soft-tissue
    # outlines in front of it have no steps.
    ramp = np.clip((s - sc.bc[0]) / (sc.bc[-1] - sc.bc[0]), 0, 1)
    width = sc.bw[0] + ramp * (sc.bw[-1] - sc.bw[0])
    # Smoothed distance above the dens: the neck outline widens into the head there.
    above = f32(8.0) * np.logaddexp(f32(0.0), (sc.s_top + 6 - s) / f32(8.0))

    # Neck: muscle inside the skin and a rim of subcutaneous fat.
    ant_skin = -width - f32(52.0) - above * f32(1.5)
    post_skin = canal + f32(58.0) + above * f32(0.7)
    img = _band(d, ant_skin, post_skin, px) * f32(t["fat"])
    _paint(img, _band(d, ant_skin + 4, post_skin - 5, px),
           t["muscle"] * (1 + f32(0.15 * sc.gamma) * muscle_tex))

    # Airway and prevertebral tissue (thicker at C5 and below, where the oesophagus lies
    # behind the trachea); the pharynx bends forward above C2.
    low = np.clip((s - sc.bc[3]) / f32(20.0), 0, 1)
    air_post = -width - sc.prev - low * f32(7.0) - above * f32(0.5)
    _paint(img, _band(d, air_post - 12, -width + 1, px), t["prevertebral"])
    _paint(img, _band(d, air_post - 12 + low * 4, air_post, px), t["air"])

    if float(s.min()) < sc.s_top + 8:
        # Posterior fossa above C1: cerebellum behind the brainstem, under the occipital bone.
        edge = sc.s_top + f32(2.0) - np.maximum(d - canal, 0) * f32(0.35)
        _paint(img, _soft(s - edge, px) * _band(d, canal + 1, post_skin - 9, px),
               t["cord"] * (1 + f32(0.06) * muscle_tex))
        _paint(img, _band(s, edge, edge + 3.5, px) * _band(d, canal + 3, post_skin - 9, px),
               t["cortex"])
        _paint(img, _band(s, edge + 1, edge + 2.5, px) * _band(d, canal + 4, post_skin - 10, px),
               t["marrow"])

    # The rest lies in narrow bands of columns around the spine: the posterior elements behind
    # the canal, everything else in front of it. Rendering each only in its band of columns
    # saves most of the work.
    label = np.zeros(s.shape, np.int16)
    dmin, dmax = d.min(axis=0), d.max(axis=0)
    win = _columns((dmax > canal - 1) & (dmin < canal + sc.d_hi))
    if win is not None:
        _render_posterior(sc, s[win], d[win], marrow_tex[win], img[win])
    win = _columns((dmax > sc.d_lo) & (dmin < canal + 3))
    if win is not None:
        _render_spine(sc, s[win], d[win], marrow_tex[win], img[win], label[win])

    # Coil coverage ends below T1: the signal fades over ~25 reference px.
    img *= np.clip((sc.s_bot + 22 - s) / f32(25.0), 0.03, 1.0)

    return img, label


def _render_posterior(sc: _Scene, s, d, marrow_tex, img) -> None:
    """Paint the laminae, spinous processes and C1 posterior arch into the ``img`` window."""
    f32 = np.float32
    t, px = sc.t, sc.px
    canal = sc.canal
    marrow = t["marrow"] * (1 + f32(0.22 * sc.gamma) * marrow_tex)
    # Posterior elements: laminae and spinous processes, tilted caudally and tapering.
    sdf_sp = spinous_sdf(s, d, canal, sc.tilt, sc.bc, sc.bh, sc.spine_len,
                         (f32(0.55), f32(0.25)), f32(2.5))
    _paint(img, _soft(sdf_sp, px), t["cortex"] * 2)
    _paint(img, _soft(sdf_sp + 1.5, px), marrow * f32(0.75))
    if float(s.min()) < sc.dens_c + 8:  # C1 posterior arch behind the dens
        c1p = np.sqrt(np.square((s - sc.dens_c) / 5.0) + np.square((d - canal - 7) / 5.5)) - 1
        _paint(img, _soft(c1p * 5.0, px), t["cortex"])
        _paint(img, _soft(c1p * 5.0 + 1.1, px), marrow)


def _render_spine(sc: _Scene, s, d, marrow_tex, img, label) -> None:
    """Paint the canal, discs, bodies and C1 anterior arch into the ``img`` window.

    ``img`` and ``label`` are views into the strip and are written in place; ``label`` gets
    ``k + 1`` where disc ``k`` (with its herniation) covers at least half a pixel.
    """
    f32 = np.float32
    t, px = sc.t, sc.px
    canal = sc.canal
    jb = _nearest(s, sc.bc)
    dk = sc.discs
    kd = _nearest(s, dk.dc)
    width = sc.bw[jb]
    marrow = t["marrow"] * (1 + f32(0.22 * sc.gamma) * marrow_tex)

    if float(s.min()) < sc.dens_c + 8:  # C1 anterior arch in front of the dens
        c1a = np.sqrt(np.square((s - sc.dens_c) / 4.5) + np.square((d + sc.bw[0] + 6) / 3.5)) - 1
        _paint(img, _soft(c1a * 3.5, px), t["cortex"])
        _paint(img, _soft(c1a * 3.5 + 1.0, px), marrow)

    # Spinal canal: CSF, the ligamentum flavum behind it, and the cord, which is pushed back
    # where a herniation reaches it.
    dcen, _, contour, hern, front = dk.margin(s, kd)
    _paint(img, _band(d, 0, canal, px) * _soft(s - sc.s_bot - 30, px), t["csf"])
    _paint(img, _band(d, canal - 0.2, canal + 1.6, px) * _soft(sc.s_top - s, px), t["ligament"])
    _paint(img, _band(d, np.maximum(sc.cord_front, front + f32(0.8)), sc.cord_back, px), t["cord"])

    # Discs: annulus around a bright nucleus; degeneration darkens the nucleus. The herniation
    # is disc material posterior to the body line.
    deg = dk.deg[kd]
    disc_h = dk.disc_h[kd]
    dw = sc.disc_w[kd]
    ds = s - dcen
    disc_cov = paint_disc(img, ds, d, disc_h, dw, deg, contour, t, px, margin=2,
                          nucleus=(f32(0.5), f32(0.38)))
    disc_all = paint_herniation(img, d, hern, disc_cov, deg, t, px)

    # Vertebral bodies and the dens of C2: dark cortical rim around textured marrow, with
    # slightly concave endplates.
    od = d + width / 2
    concave = f32(0.8) * np.clip(1 - np.square(od / (width / 2)), 0, 1)
    sdf_b = _rrect_sdf(s - sc.bc[jb], od, sc.bh[jb] - concave, width / 2, f32(2.5))
    dens = _rrect_sdf(s - (sc.s_top + 8), d + sc.bw[0] * 0.52, f32(9.0), sc.bw[0] * 0.2, f32(4.0))
    sdf_b = np.minimum(sdf_b, dens)
    body = _soft(sdf_b, px)
    _paint(img, body, t["cortex"])
    _paint(img, _soft(sdf_b + 1.3, px), marrow)

    paint_pll_and_label(img, label, s, d, front, disc_all, body, kd,
                        (sc.s_top + 4, sc.s_bot + 30), t, px)


def render_clean(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render the noise-free anatomy.

    Returns:
        ``(image, disc_label, s, d)``: float32 ``H×W`` image (roughly [0, 1]); int16 ``H×W``
        map holding ``k + 1`` where disc ``k`` (including its herniation) is visible and 0
        elsewhere; the spine coordinates from :func:`_spine_coords` (float32 ``H×W``).
    """
    n = case.size
    scene = _Scene(case)
    tex_rng = np.random.default_rng(case.texture_seed)
    muscle_tex = _noise.smooth_field(tex_rng, (n, n), (40, 12))
    marrow_tex = _noise.smooth_field(tex_rng, (n, n), (32, 32))
    img = np.empty((n, n), np.float32)
    label = np.empty((n, n), np.int16)
    s_map = np.empty((n, n), np.float32)
    d_map = np.empty((n, n), np.float32)
    step = max(1, STRIP_PIXELS // n)
    for y0 in range(0, n, step):
        rows = slice(y0, min(n, y0 + step))
        s, d = _spine_coords(case, rows)
        img[rows], label[rows] = _render_rows(scene, s, d, muscle_tex[rows], marrow_tex[rows])
        s_map[rows], d_map[rows] = s, d
    np.maximum(img, 0, out=img)
    return img, label, s_map, d_map


def acquire(clean: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Simulate the acquisition of a clean image: bias, Gibbs, ghosting, Rician noise, gain.

    Returns:
        float32 ``H×W`` image in [0, 1].
    """
    rng = np.random.default_rng(acq.seed)
    img = _noise.bias_field(clean, acq.bias, rng)
    img = _noise.gibbs_ringing(img, acq.gibbs)
    return ghosts_noise_gain(img, acq, rng)


def render_case(case: Case, *, artifacts: bool = True) -> Rendered:
    """Render a case into an image and its six disc boxes.

    Args:
        case: the case.
        artifacts: apply the acquisition (noise, ghosting, bias, ringing, gain); False gives
            the clean anatomy, normalised by its maximum.

    Returns:
        A :class:`Rendered`.
    """
    return rendered(case, *render_clean(case), acquire=acquire, artifacts=artifacts)
