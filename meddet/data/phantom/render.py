"""Rendering a :class:`~meddet.data.phantom.model.Case` into a sagittal image and disc boxes.

The anatomy is painted back to front as signed-distance shapes in the spine frame ``(s, d)``
of :mod:`meddet.data.phantom.geometry` (``s`` down the spine, ``d`` from the posterior body
line towards the back; anterior is image left, cranial is image top). Every edge is
anti-aliased over one image pixel, which is the partial-volume mixing of the tissues that share
a voxel; the acquisition (:func:`acquire`) then blurs to the acquired resolution and adds the
coil shading, ringing, ghosting and Rician noise of a real scan.

Rendering is vectorised over strips of rows (see :data:`_common.STRIP_PIXELS`); the spine
structures are painted only in the band of columns around the spine.
"""

from __future__ import annotations

import numpy as np

from meddet.data import noise as _noise
from meddet.data.phantom import geometry
from meddet.data.phantom._common import (
    REF_SIZE,
    STRIP_PIXELS,
    DiscArrays,
    Rendered,
    band,
    columns,
    ghosts_noise_gain,
    label_boxes,
    nearest,
    paint,
    paint_disc,
    paint_herniation,
    paint_pll_and_label,
    rendered,
    rrect_sdf,
    soft,
    spinous_sdf,
)
from meddet.data.phantom.model import Acquisition, Case, layout

_F = np.float32
# Soft-tissue outlines move by _WARP reference px per unit of the (unit-variance) warp field;
# the margin covers the field's extremes (5 sigma).
_WARP = 3.0
_WARP_MARGIN = 5 * _WARP
__all__ = ["Rendered", "acquire", "labelled", "render_case", "render_clean"]


class _Scene:
    """Per-case constants of the renderer (tissue values with the contrast gamma folded in)."""

    def __init__(self, case: Case, rng: np.random.Generator):
        lay = layout(case)
        g = case.gamma
        # Applying the contrast power to the tissue values instead of every pixel saves a
        # full-image pow; edges blend in the transformed domain, which is invisible.
        self.t = {k: _F(float(v) ** g) for k, v in vars(case.tissue).items()
                  if isinstance(v, float)}
        self.px = case.scale * case.size / REF_SIZE
        self.tex = case.texture
        self.bw = np.asarray(case.body_widths, np.float32)
        self.bc = ((lay["top"] + lay["bottom"]) / 2).astype(np.float32)
        self.bh = ((lay["bottom"] - lay["top"]) / 2).astype(np.float32)
        self.wedge = np.asarray(case.body_wedge, np.float32)
        self.corner = _F(case.corner)
        self.concavity = _F(case.concavity)
        self.overhang = _F(case.disc_overhang)
        self.discs = DiscArrays(case.discs, lay["disc_c"])
        self.disc_w = (self.bw[:-1] + self.bw[1:]) / 2
        self.cleft = np.asarray(case.clefts, np.float32)
        # Marrow change next to the endplates, as seen from each body: above (disc j-1) and
        # below (disc j).
        modic = np.asarray(case.modic, np.float32)
        self.modic_up = np.concatenate([[0], modic]).astype(np.float32)
        self.modic_lo = np.concatenate([modic, [0]]).astype(np.float32)
        # Per-vertebra marrow level and cortical rim: drawn from the texture seed.
        self.marrow_level = rng.uniform(0.85, 1.15, 7).astype(np.float32)
        self.rim = _F(rng.uniform(0.4, 1.3))
        self.marbling = _F(rng.uniform(0.6, 1.6))  # higher: less fat between muscle fibres
        self.grain = _F(rng.uniform(0.03, 0.18))
        self.posterior_alpha = _F(rng.uniform(0.55, 1.0) * (1 - 0.5 * case.lateral))
        self.spine_len = np.asarray(case.spinous, np.float32) * _F(1 - 0.7 * case.lateral)
        self.tilt = _F(np.tan(case.spinous_tilt))
        self.s_top = _F(lay["dens_top"])
        self.s_bot = _F(lay["bottom"][-1])
        self.dens_c = _F(lay["dens_top"] + 9)
        self.canal = _F(case.canal)
        self.canal_upper = _F(case.canal_upper)
        self.cord = _F(case.cord * np.sqrt(1 - case.lateral**2))
        self.cord_pos = _F(0.5 + 0.35 * case.cord_shift)
        self.enlarge = _F(case.enlargement)
        self.flavum = _F(case.flavum)
        self.basivertebral = _F(case.basivertebral)
        self.flow = _F(case.flow_voids)
        self.prev = _F(case.prevertebral)
        self.oeso = _F(case.oesophagus)
        self.airway = _F(case.airway)
        self.neck_back = _F(case.neck_back)
        self.neck_front = _F(case.neck_front)
        self.subcut = _F(case.subcut)
        self.fat_planes = tuple(_F(f) for f in case.fat_planes)
        self.fade = _F(case.fade)
        # Extent of the spine structures across the spine (d): the C1 arch and the clivus in
        # front, the longest spinous process behind the canal.
        self.d_lo = _F(-float(self.bw.max()) - 14.0)
        self.d_hi = _F(float(self.spine_len.max()) + 8.0)


def _fields(case: Case, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Texture fields (unit variance): marrow blobs, fine texture, muscle fibres, outline warp,
    pixel-scale grain.

    Cell counts follow the zoom, so a texture keeps its anatomical size at every field of view.
    """
    n = case.size
    view = REF_SIZE / case.scale  # reference px across the image

    def cells(ref_px: float) -> int:
        return int(np.clip(round(view / ref_px), 3, n // 2))

    coarse = _noise.smooth_field(rng, (n, n), (cells(9.0), cells(9.0)))
    fine = _noise.smooth_field(rng, (n, n), (cells(2.5), cells(2.5)))
    # Muscle fibres run down the neck: long along the rows, short across.
    muscle = _noise.smooth_field(rng, (n, n), (cells(14.0), cells(3.0)))
    warp = _noise.smooth_field(rng, (n, n), (cells(60.0), cells(60.0)))
    grain = _noise.smooth_field(rng, (n, n), (cells(1.2), cells(1.2)))
    return coarse, fine, muscle, warp, grain


def _render_rows(sc: _Scene, s, d, tex):
    """Render one strip of rows given its spine coordinates; returns (image, disc label map)."""
    coarse, fine = tex[0], tex[1]
    canal = sc.canal
    img = np.zeros(s.shape, np.float32)
    label = np.zeros(s.shape, np.int16)
    dmin, dmax = d.min(axis=0), d.max(axis=0)
    # Only the columns the neck reaches (its widest extent in this strip, plus the largest
    # outline warp) are painted; the rest is air.
    above = 8.0 * np.logaddexp(0.0, (float(sc.s_top) + 6 - float(s.min())) / 8.0)
    lo = -float(sc.bw.max()) - float(sc.neck_front) - 1.5 * above - _WARP_MARGIN
    hi = float(canal) + float(sc.neck_back) + 0.7 * above + _WARP_MARGIN
    win = columns((dmax > lo) & (dmin < hi))
    if win is not None:
        _render_neck(sc, s[win], d[win], tuple(f[win] for f in tex[:4]), img[win])
    win = columns((dmax > canal - 1) & (dmin < canal + sc.d_hi))
    if win is not None:
        _render_posterior(sc, s[win], d[win], coarse[win], img[win])
    win = columns((dmax > sc.d_lo) & (dmin < canal + sc.canal_upper + 3))
    if win is not None:
        _render_spine(sc, s[win], d[win], coarse[win], fine[win], img[win], label[win])

    # Coil coverage ends below T1: the signal fades over ~25 reference px.
    img *= np.clip((sc.s_bot + sc.fade - s) / _F(25.0), 0.03, 1.0)
    return img, label


def _render_neck(sc: _Scene, s, d, tex, img) -> None:
    """Paint the soft tissue of the neck and the head into the ``img`` window (in place)."""
    coarse, fine, muscle, warp = tex
    t, px = sc.t, sc.px
    canal = sc.canal
    # Anterior wall of the bodies, interpolated smoothly along the spine so the soft-tissue
    # outlines in front of it have no steps.
    ramp = np.clip((s - sc.bc[0]) / (sc.bc[-1] - sc.bc[0]), 0, 1)
    width = sc.bw[0] + ramp * (sc.bw[-1] - sc.bw[0])
    # Smoothed distance above the dens: the neck outline widens into the head there.
    above = _F(8.0) * np.logaddexp(_F(0.0), (sc.s_top + 6 - s) / _F(8.0))
    # Soft-tissue outlines wander by a few reference px (warp), so no two necks are alike.
    dw = d + warp * _F(_WARP)

    ant_skin = -width - sc.neck_front - above * _F(1.5)
    post_skin = canal + sc.neck_back + above * _F(0.7)
    img[...] = band(dw, ant_skin, post_skin, px) * t["skin"]
    paint(img, band(dw, ant_skin + 1.5, post_skin - 1.5, px), t["fat"] * (1 + _F(0.06) * fine))
    m_val = t["muscle"] * (1 + _F(sc.tex[2]) * muscle)
    # Posterior muscles, below the occiput: deep and superficial layers split by wavy fat
    # planes of varying thickness.
    deep = canal + _F(0.5)
    back = band(dw, deep, post_skin - sc.subcut, px)
    paint(img, back, m_val)
    paint(img, back * np.clip(muscle - sc.marbling, 0, 1), t["fat"])
    span = post_skin - sc.subcut - deep
    for k, f in enumerate(sc.fat_planes):
        mid = deep + f * span + warp * _F(6.0 - 10.0 * k) + coarse
        half = _F(0.3) + _F(0.4) * np.clip(coarse + 0.7, 0, 2)
        paint(img, band(dw - mid, -half, half, px), t["fat"])
    # Anterior neck: muscle (strap muscles, tongue base) marbled with fat.
    front = band(dw, ant_skin + sc.subcut * _F(0.6), -width - sc.prev, px)
    paint(img, front, m_val)
    paint(img, front * np.clip(muscle - sc.marbling, 0, 1), t["fat"])

    # Prevertebral tissue (thicker from C5 down, where the oesophagus lies behind the trachea)
    # and the airway in front of it; the pharynx bends forward above C2.
    low = np.clip((s - sc.bc[3]) / _F(20.0), 0, 1)
    air_post = -width - sc.prev - low * sc.oeso - above * _F(0.5)
    paint(img, band(d, air_post - 3, -width + 1, px), t["prevertebral"])
    paint(img, band(dw, air_post - sc.airway + low * 4, air_post, px), t["air"])

    if float(s.min()) < sc.s_top + 10:
        _render_head(sc, s, d, dw, post_skin, coarse, fine, img)


def _render_head(sc: _Scene, s, d, dw, post_skin, coarse, fine, img) -> None:
    """The skull above C1: cerebellum in its CSF under the curved occipital bone, behind the
    brainstem (the brainstem itself continues the cord in :func:`_render_spine`)."""
    t, px = sc.t, sc.px
    canal = sc.canal + sc.canal_upper
    back = np.maximum(d - canal, 0)
    # The occipital bone rises backwards from the rim of the foramen magnum (opisthion).
    occ = sc.s_top - _F(1.0) - back * (_F(0.45) + back * _F(0.006))
    inside = soft(s - occ, px) * soft(dw - post_skin + 8, px) * (d > canal - 4)
    paint(img, inside, t["csf"])  # cisterna magna and the CSF around the cerebellum
    cerebellum = soft(s - occ + 2.5 + _F(1.5) * coarse, px) * soft(dw - post_skin + 11, px) \
        * soft(canal + 3 - d, px)
    paint(img, cerebellum, t["brain"] * (1 + _F(0.08) * fine))
    bone = band(s - occ, -0.5, 3.5, px) * soft(dw - post_skin + 5, px) * (d > canal - 1)
    paint(img, bone, t["cortex"])
    paint(img, band(s - occ, 0.7, 2.3, px) * soft(dw - post_skin + 6, px) * (d > canal), t["marrow"])


def _render_posterior(sc: _Scene, s, d, coarse, img) -> None:
    """Paint the laminae, spinous processes, nuchal ligament and C1 posterior arch.

    The posterior elements are narrower than a slice is thick, so they are drawn partly
    transparent and with soft edges: the partial-volume look of midline bone on a 3 mm slice.
    """
    t, px = sc.t, sc.px
    canal = sc.canal
    marrow = t["marrow"] * (1 + _F(sc.tex[0]) * coarse)
    soft_px = px * _F(0.5)
    # The nuchal ligament runs from the occiput to the tip of C7's spinous process.
    ramp = np.clip((s - sc.s_top) / (sc.bc[5] - sc.s_top), 0, 1)
    nuchal = canal + _F(20.0) + ramp * (sc.spine_len[5] - 18) + _F(2.0) * coarse
    paint(img, band(d, nuchal, nuchal + 1.5, px) * soft(s - sc.bc[5], px)
          * soft(sc.s_top - s, px), t["ligament"])
    # Laminae and spinous processes, tilted caudally and tapering.
    sdf_sp = spinous_sdf(s, d, canal, sc.tilt, sc.bc, sc.bh, sc.spine_len, (_F(0.75), _F(0.4)),
                         _F(3.0))
    paint(img, soft(sdf_sp, soft_px) * sc.posterior_alpha, t["cortex"])
    paint(img, soft(sdf_sp + sc.rim, soft_px) * sc.posterior_alpha, marrow)
    if float(s.min()) < sc.dens_c + 8:  # C1 posterior arch behind the dens
        c1p = np.sqrt(np.square((s - sc.dens_c) / 5.0) + np.square((d - canal - 9) / 6)) - 1
        paint(img, soft(c1p * 5.0, soft_px) * sc.posterior_alpha, t["cortex"])
        paint(img, soft(c1p * 5.0 + sc.rim, soft_px) * sc.posterior_alpha, marrow)


def _render_spine(sc: _Scene, s, d, coarse, fine, img, label) -> None:
    """Paint the canal, discs, bodies, C1 anterior arch and clivus into the ``img`` window.

    ``img`` and ``label`` are views into the strip and are written in place; ``label`` gets
    ``k + 1`` where disc ``k`` (with its herniation) covers at least half a pixel.
    """
    t, px = sc.t, sc.px
    dk = sc.discs
    jb = nearest(s, sc.bc)
    kd = nearest(s, dk.dc)
    width = sc.bw[jb]
    marrow = t["marrow"] * (1 + _F(sc.tex[0]) * coarse + _F(sc.tex[1]) * fine)

    if float(s.min()) < sc.s_top:  # the clivus rises forward from above the dens
        rise = np.maximum(sc.s_top - 4 - s, 0)
        axis = -sc.bw[0] * _F(0.5) - rise * _F(0.7)
        clivus = band(d, axis - 9, axis, px) * soft(s - sc.s_top + 4, px)
        paint(img, clivus, t["cortex"])
        paint(img, band(d, axis - 8, axis - 1, px) * soft(s - sc.s_top + 5, px), marrow)
    if float(s.min()) < sc.dens_c + 8:  # C1 anterior arch in front of the dens
        c1a = np.sqrt(np.square((s - sc.dens_c) / 4.5) + np.square((d + sc.bw[0] + 6) / 3.5)) - 1
        paint(img, soft(c1a * 3.5, px), t["cortex"])
        paint(img, soft(c1a * 3.5 + sc.rim, px), marrow)

    # The canal is deeper at C1-C2; the ligamentum flavum buckles into it at the disc levels.
    dcen, bump, contour, hern, front = dk.margin(s, kd)
    upper = np.clip((sc.bc[1] - s) / (sc.bc[1] - sc.bc[0]), 0, 1)
    canal = sc.canal + upper * sc.canal_upper - sc.flavum * bump
    csf = band(d, 0, canal, px) * soft(s - sc.s_bot - 30, px)
    if sc.flow:  # pulsation flow voids: dark patches in the CSF
        csf_val = t["csf"] * (1 - sc.flow * np.clip(fine - 1.0, 0, 1))
    else:
        csf_val = t["csf"]
    paint(img, csf, csf_val)
    paint(img, band(d, canal - 0.2, canal + 1.6 + sc.flavum * bump * 0.6, px)
          * soft(sc.s_top - s, px), t["ligament"])
    # Cord: thicker at C5-C6, continuous with the widening brainstem above the dens, and
    # pushed back where a herniation reaches it.
    enl = np.clip(1 - np.square((s - dk.dc[3]) / 30), 0, 1)
    cord = sc.cord * (1 + sc.enlarge * enl) + np.maximum(sc.s_top - s, 0) * _F(0.25)
    cord_front = (canal - cord) * sc.cord_pos
    paint(img, band(d, np.maximum(cord_front, front + _F(0.8)), cord_front + cord, px),
          t["cord"] * (1 + _F(0.04) * coarse))

    # Discs: annulus around a bright nucleus, split by a dark intranuclear cleft in adults;
    # degeneration darkens the nucleus. The herniation is disc material posterior to the body
    # line.
    deg = dk.deg[kd]
    disc_h = dk.disc_h[kd]
    dw = sc.disc_w[kd]
    ds = s - dcen
    disc_cov = paint_disc(img, ds, d, disc_h, dw, deg, contour, t, px, margin=0.5,
                          overhang=sc.overhang,
                          nucleus=(_F(0.48), _F(0.36)), cleft=sc.cleft[kd])
    disc_all = paint_herniation(img, d, hern, disc_cov, deg, t, px)

    # Vertebral bodies and the dens of C2: cortical rim around textured marrow, wedged and
    # with concave endplates; marrow changes next to degenerated discs (Modic) and the
    # basivertebral vein entering the back of the body.
    od = d + width / 2
    across = od / (width / 2)  # -1 anterior wall ... 1 posterior wall
    concave = sc.concavity * np.clip(1 - np.square(across), 0, 1)
    half_h = sc.bh[jb] - concave + sc.wedge[jb] * across
    sdf_b = rrect_sdf(s - sc.bc[jb], od, half_h, width / 2, sc.corner)
    dens = rrect_sdf(s - (sc.s_top + 8), d + sc.bw[0] * 0.52, _F(9.0), sc.bw[0] * 0.2, _F(4.0))
    sdf_b = np.minimum(sdf_b, dens)
    body = soft(sdf_b, px)
    paint(img, body, t["cortex"])
    up = np.clip(1 - (s - (sc.bc[jb] - sc.bh[jb])) / _F(4.0), 0, 1)
    lo = np.clip(1 - ((sc.bc[jb] + sc.bh[jb]) - s) / _F(4.0), 0, 1)
    level = sc.marrow_level[jb] * (1 + sc.modic_up[jb] * up + sc.modic_lo[jb] * lo)
    paint(img, soft(sdf_b + sc.rim, px), marrow * level)
    if sc.basivertebral:
        vein = band(s - sc.bc[jb], -0.6, 0.6, px) * band(od, width * _F(0.25), width / 2 - 1, px)
        paint(img, vein * sc.basivertebral, (t["csf"] + marrow) * _F(0.5))

    paint_pll_and_label(img, label, s, d, front, disc_all, body, kd,
                        (sc.s_top + 4, sc.s_bot + 30), t, px)


def render_clean(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The anatomy before the acquisition: image, disc label map and spine coordinates.

    Returns:
        float32 ``H×W`` image (about [0, 1]); int16 ``H×W`` label map (``k + 1`` on disc
        ``k`` with its herniation where visible, else 0); float32 ``H×W`` ``s`` and ``d``
        of every pixel (reference px).
    """
    n = case.size
    tex_rng = np.random.default_rng(case.texture_seed)
    scene = _Scene(case, tex_rng)
    fields = _fields(case, tex_rng)
    s_map, d_map = geometry.spine_maps(case.pose)
    img = np.empty((n, n), np.float32)
    label = np.empty((n, n), np.int16)
    step = max(1, STRIP_PIXELS // n)
    for y0 in range(0, n, step):
        rows = slice(y0, min(n, y0 + step))
        img[rows], label[rows] = _render_rows(scene, s_map[rows], d_map[rows],
                                              tuple(f[rows] for f in fields))
    # Tissue is not uniform at the scale of a pixel either (trabeculae, fibres, septa): a fine
    # multiplicative grain, on top of the coarser textures of each tissue.
    img *= 1 + scene.grain * fields[4]
    np.maximum(img, 0, out=img)
    return img, label, s_map, d_map


def _window(n: int, keep: float, sharp: bool, rfft: bool) -> np.ndarray:
    """1-D k-space window keeping the central ``keep`` fraction: a hard cut-off (ringing) or a
    Tukey taper (flat over the inner 70 %, cosine over the outer 30 %: the mild apodisation
    of a scanner's reconstruction filter, which suppresses ringing)."""
    f = np.abs(np.fft.rfftfreq(n) if rfft else np.fft.fftfreq(n))
    cut = keep / 2
    if sharp:
        return (f <= cut).astype(np.float32)
    x = np.clip((f / cut - 0.7) / 0.3, 0, 1)
    return (0.5 * (1 + np.cos(np.pi * x))).astype(np.float32)


def shade(clean: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Coil shading: a smooth field of log-amplitude ``acq.bias`` and a front-to-back
    gradient of ``acq.coil`` (the first step of :func:`acquire`; draws from ``rng``)."""
    h, w = clean.shape
    field = _noise.smooth_field(rng, (h, w), (3, 3))
    field *= _F(acq.bias / max(float(np.abs(field).max()), 1e-6))
    # A posterior coil array: sensitivity rises from the front (left) to the back (right).
    field += np.linspace(-acq.coil, acq.coil, w, dtype=np.float32)[None, :]
    return clean * np.exp(field)


def filter_kspace(img: np.ndarray, acq: Acquisition) -> np.ndarray:
    """The acquired resolution (``acq.resolution``, a smooth k-space window) and Gibbs
    ringing (``acq.gibbs``, a sharp one); the image unchanged when neither applies."""
    h, w = img.shape
    rows_keep, cols_keep = acq.resolution
    if acq.gibbs < 1 or rows_keep < 1 or cols_keep < 1:
        win = _window(h, rows_keep, False, False)[:, None] * _window(w, cols_keep, False, True)
        if acq.gibbs < 1:
            win = win * _window(h, acq.gibbs, True, False)[:, None] \
                * _window(w, acq.gibbs, True, True)
        img = np.abs(np.fft.irfft2(np.fft.rfft2(img) * win, s=(h, w))).astype(np.float32)
    return img


def acquire(clean: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Simulate the acquisition of a clean image: coil shading, resolution, Gibbs ringing,
    ghosting, Rician noise, gain.

    Returns:
        float32 ``H×W`` image in [0, 1].
    """
    rng = np.random.default_rng(acq.seed)
    img = filter_kspace(shade(clean, acq, rng), acq)
    return ghosts_noise_gain(img, acq, rng)


def labelled(case: Case, boxes: np.ndarray) -> np.ndarray:
    """``boxes`` with the discs whose centre or posterior margin lies outside the image zeroed.

    A disc cut by the image border keeps its box only while its middle and its posterior
    margin, where the label is decided, are in view.
    """
    lay = layout(case)
    widths = np.asarray(case.body_widths)
    disc_w = (widths[:-1] + widths[1:]) / 2
    s = np.repeat(lay["disc_c"], 2)
    d = np.stack([-disc_w / 2, np.zeros_like(disc_w)], 1).ravel()
    x, y = geometry.to_image(case.pose, s, d)
    inside = ((x >= 0.5) & (x <= case.size - 0.5) & (y >= 0.5) & (y <= case.size - 0.5))
    keep = inside.reshape(-1, 2).all(1)
    return np.where(keep[:, None], boxes, 0).astype(np.float32)


def render_case(case: Case, *, artifacts: bool = True) -> Rendered:
    """Render a case into an image and its disc boxes.

    Args:
        case: the case.
        artifacts: apply the acquisition (blur, shading, noise, ghosting, ringing, gain);
            False gives the clean anatomy, normalised by its maximum.

    Returns:
        A :class:`Rendered`.
    """
    clean, label, s, d = render_clean(case)
    return rendered(case, clean, label, s, d, acquire=acquire, artifacts=artifacts,
                    boxes=labelled(case, label_boxes(label)))
