"""What one phantom image is made of, and how it is drawn at random.

A :class:`Case` holds every random choice behind one image (anatomy, disc findings, tissue
contrast, acquisition); :func:`sample_case` draws one. Rendering
(:mod:`meddet.data.phantom.render`) adds no randomness of its own: texture and noise come from
seeds stored in the case, so editing one field and rendering again changes only what that
field controls.

The draws follow the SynthSeg recipe of training on broadly randomised images: tissue
intensities come from wide ranges (mostly T2-like, some fat-suppressed, some T1-like, a quarter
with every tissue drawn independently), and anatomy, pose, field of view, resolution, bias and
noise vary widely, so that a detector cannot rely on any one appearance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from meddet.data.phantom import geometry
from meddet.data.phantom._common import REF_PIXEL_MM, REF_SIZE, Disc, sample_disc

CONTRASTS = ("t2", "t2_fatsat", "t1", "random")
# How often each contrast is drawn.
_CONTRAST_P = (0.45, 0.15, 0.15, 0.25)
# Smallest difference between herniated disc material and CSF, and between cord and CSF, in a
# randomly drawn contrast: a protrusion must stay visible against the CSF it displaces.
_MIN_DISC_CSF = 0.2
_MIN_CORD_CSF = 0.1


@dataclass(frozen=True)
class Tissue:
    """Clean signal of each tissue on a 0-1 scale (defaults: a typical T2 fast spin echo)."""

    # Discs and bone.
    nucleus: float = 0.8
    annulus: float = 0.15
    herniation: float = 0.4
    marrow: float = 0.35
    cortex: float = 0.05
    ligament: float = 0.05
    # Nervous system and CSF.
    csf: float = 0.9
    cord: float = 0.45
    brain: float = 0.45
    # Soft tissue and air.
    muscle: float = 0.2
    prevertebral: float = 0.3
    fat: float = 0.7
    skin: float = 0.3
    air: float = 0.0
    contrast: str = "t2"  # which family the values were drawn from (see CONTRASTS)


@dataclass(frozen=True)
class Acquisition:
    """Acquisition of one image (stored in the COCO image record).

    Attributes:
        snr: Rician SNR (mean tissue signal / sigma).
        ghosting: peak phase error (rad) of periodic motion; 0 = none.
        ghost_period: motion period in phase-encode lines.
        pe_axis: phase-encode direction, ``"ap"`` (horizontal) or ``"si"`` (vertical).
        gibbs: fraction of k-space kept by a sharp truncation (ringing); 1 = none.
        resolution: ``(rows, cols)`` fraction of k-space kept with a smooth window (the
            acquired resolution relative to the pixel size); 1 = full.
        bias: log-amplitude of the smooth coil-sensitivity field.
        coil: log-amplitude of the sensitivity gradient from front to back (posterior coil).
        gain: global intensity scale of the stored image.
        seed: seeds the noise draws.
    """

    snr: float
    ghosting: float
    ghost_period: float
    pe_axis: str
    gibbs: float
    resolution: tuple[float, float]
    bias: float
    coil: float
    gain: float
    seed: int


@dataclass(frozen=True)
class Case:
    """Everything that defines one phantom image; lengths in reference pixels (~0.8 mm).

    Pose fields are those of :class:`meddet.data.phantom.geometry.Pose`; ``Case.pose`` returns
    them as one.
    """

    size: int
    angle: float  # in-plane rotation, radians
    scale: float  # zoom of the anatomy (field of view = 256 · 0.8 mm / scale)
    shift: tuple[float, float]  # (x, y) translation, reference px
    lordosis: float  # anterior bow of the body line at mid-length; < 0 kyphosis
    s_shape: float  # S-shaped component of the curve
    body_heights: tuple[float, ...]  # C2 (without dens) ... T1
    body_widths: tuple[float, ...]  # antero-posterior depth, C2 ... T1
    body_wedge: tuple[float, ...]  # posterior minus anterior half-height, C2 ... T1
    corner: float  # corner radius of the bodies
    concavity: float  # depth of the endplate concavity
    dens: float  # height of the dens above the C2 body
    discs: tuple[Disc, ...]  # C2/3 ... C7/T1
    clefts: tuple[float, ...]  # darkness of the intranuclear cleft per disc (0 = none)
    modic: tuple[float, ...]  # marrow signal change next to each disc's endplates (0 = none)
    canal: float  # antero-posterior depth of the canal at C3-C7
    canal_upper: float  # extra canal depth at C1-C2
    cord: float  # antero-posterior thickness of the cord
    cord_shift: float  # position of the cord in the canal, -1 front ... 1 back
    enlargement: float  # relative thickening of the cord at C5-C6
    lateral: float  # distance of the slice from the midline, in cord half-widths (0-0.75)
    flavum: float  # buckling of the ligamentum flavum into the canal at disc levels
    spinous: tuple[float, ...]  # length of the spinous processes, C2 ... T1
    spinous_tilt: float  # caudal tilt of the spinous processes, radians
    prevertebral: float  # soft tissue in front of the bodies at C2-C4
    oesophagus: float  # extra prevertebral thickness from C5 down
    airway: float  # antero-posterior width of the airway
    neck_back: float  # depth of the posterior neck behind the canal
    neck_front: float  # depth of the anterior neck in front of the bodies
    subcut: float  # subcutaneous fat thickness
    fat_planes: tuple[float, ...]  # fractional depths of fat planes between posterior muscles
    fade: float  # where the coil coverage ends, below the T1 body
    tissue: Tissue = field(default_factory=Tissue)
    gamma: float = 1.0  # global contrast (power applied to the tissue values)
    texture: tuple[float, float, float] = (0.2, 0.1, 0.15)  # marrow, grain, muscle amplitude
    flow_voids: float = 0.0  # darkness of CSF pulsation voids (0 = none)
    basivertebral: float = 0.0  # visibility of the basivertebral veins (0 = none)
    texture_seed: int = 0
    acquisition: Acquisition | None = None
    # How far disc material reaches under the bodies' endplates (it fills their concavity and
    # wedge), reference px.
    disc_overhang: float = 3.0

    @property
    def pose(self) -> geometry.Pose:
        """The spine curve and its placement in the image."""
        return geometry.Pose(self.size, self.angle, self.scale, self.shift, self.lordosis,
                             self.s_shape)


def layout(case: Case) -> dict[str, np.ndarray]:
    """Craniocaudal positions (``s``) of the bodies and discs, centred on the curve's middle.

    Returns:
        ``{"top", "bottom"}``: float64 ``[7]`` endplate positions of C2 ... T1 (C2's top is
        the base of the dens); ``"disc_c"``: ``[6]`` disc centres; ``"dens_top"``: the tip of
        the dens.
    """
    return _layout(case.dens, case.body_heights, [d.height for d in case.discs])


def _layout(dens: float, body_heights, disc_heights) -> dict[str, np.ndarray]:
    hb = np.asarray(body_heights, float)
    hd = np.asarray(disc_heights, float)
    total = dens + hb.sum() + hd.sum()
    cursor = REF_SIZE / 2 - total / 2 + dens
    top = np.empty(len(hb))
    disc_c = np.empty(len(hd))
    for j in range(len(hb)):
        top[j] = cursor
        cursor += hb[j]
        if j < len(hd):
            disc_c[j] = cursor + hd[j] / 2
            cursor += hd[j]
    return {"top": top, "bottom": top + hb, "disc_c": disc_c, "dens_top": top[0] - dens}


def sample_tissue(rng: np.random.Generator) -> Tissue:
    """Draw tissue intensities: a T2, fat-suppressed T2, T1 or fully random contrast."""
    u = rng.uniform
    contrast = CONTRASTS[int(rng.choice(len(CONTRASTS), p=_CONTRAST_P))]
    if contrast == "random":
        while True:  # every tissue independent, as long as the labelled anatomy stays visible
            v = {name: u(0.02, 1.0) for name in ("csf", "cord", "marrow", "annulus", "nucleus",
                                                  "muscle", "prevertebral", "fat", "brain",
                                                  "skin")}
            v["herniation"] = v["annulus"] + u(0.2, 0.7) * (v["nucleus"] - v["annulus"])
            if abs(v["herniation"] - v["csf"]) > _MIN_DISC_CSF and \
                    abs(v["cord"] - v["csf"]) > _MIN_CORD_CSF:
                break
        return Tissue(**v, cortex=u(0.0, 0.3), ligament=u(0.0, 0.3), contrast=contrast)
    if contrast == "t1":
        v = {"csf": u(0.03, 0.2), "cord": u(0.35, 0.55), "marrow": u(0.5, 0.85),
             "annulus": u(0.2, 0.4), "nucleus": u(0.25, 0.5), "muscle": u(0.18, 0.35),
             "prevertebral": u(0.28, 0.45), "fat": u(0.75, 1.0), "brain": u(0.35, 0.5),
             "skin": u(0.3, 0.5)}
    else:
        v = {"csf": u(0.75, 1.0), "cord": u(0.3, 0.6), "marrow": u(0.12, 0.5),
             "annulus": u(0.06, 0.25), "nucleus": u(0.4, 0.95), "muscle": u(0.1, 0.3),
             "prevertebral": u(0.2, 0.4), "fat": u(0.45, 0.9), "brain": u(0.35, 0.55),
             "skin": u(0.2, 0.4)}
        if contrast == "t2_fatsat":  # fat and fatty marrow lose their signal
            v["fat"] *= u(0.08, 0.25)
            v["marrow"] *= u(0.35, 0.7)
        # Heavier T2 weighting (longer echo time) leaves the CSF bright and darkens the rest.
        weight = u(0.45, 1.0)
        v = {k: x if k == "csf" else x * weight for k, x in v.items()}
    v["herniation"] = v["annulus"] + u(0.2, 0.6) * (v["nucleus"] - v["annulus"])
    return Tissue(**v, cortex=u(0.0, 0.12), ligament=u(0.0, 0.1), contrast=contrast)


def sample_case(
    rng: np.random.Generator,
    size: int = 256,
    *,
    snr_range: tuple[float, float] = (8.0, 40.0),
    protrusion_rate: float = 0.3,
) -> Case:
    """Draw a random case.

    The protrusion of each disc is drawn independently of its position, height, degeneration
    and appearance, so nothing but the posterior contour carries the label. Protrusion depth
    and the normal contour are drawn in pixels of a 256 px image (divided by the zoom), so the
    classes are as far apart in pixels at every field of view.

    Args:
        rng: the generator every draw comes from (one per image keeps images independent).
        size: side of the square image in pixels.
        snr_range: ``(low, high)``; the Rician SNR is drawn log-uniformly in it.
        protrusion_rate: probability of a protrusion, per disc.

    Returns:
        The drawn :class:`Case`.
    """
    u = rng.uniform
    # Field of view: most images show the whole neck (FOV 160-260 mm); about a third are
    # tight crops around the spine (FOV 60-160 mm) like a cropped or zoomed reading.
    zoomed = u() < 0.3
    scale = float(np.exp(u(np.log(1.3), np.log(3.4)))) if zoomed else u(0.8, 1.3)
    r = u()
    if r < 0.6:
        lordosis = u(6.0, 22.0)
    elif r < 0.85:
        lordosis = u(-3.0, 6.0)  # straightened
    else:
        lordosis = u(-12.0, -3.0)  # kyphotic
    body_heights = [u(19.0, 23.0)] + [u(16.0, 19.5) for _ in range(5)] + [u(18.0, 21.0)]
    w0 = u(18.0, 22.0)
    body_widths = [w0 * f * u(0.96, 1.04) for f in (1.0, 0.97, 0.99, 1.02, 1.06, 1.1, 1.16)]
    discs, clefts, modic = [], [], []
    for k in range(6):
        disc = sample_disc(rng, k, height_range=(5.5, 8.5), contour_scale=1 / scale,
                           scale=scale, protrusion_rate=protrusion_rate)
        discs.append(disc)
        clefts.append(u(0.3, 0.8) if u() < 0.5 else 0.0)
        modic.append(u(-0.5, 0.6) if disc.degeneration > 0.45 and u() < 0.4 else 0.0)
    canal = u(17.0, 22.0)
    tissue = sample_tissue(rng)
    res_mm = u(0.5, 1.2)
    pixel_mm = REF_PIXEL_MM * REF_SIZE / size / scale
    aniso = u(0.75, 1.0)
    res = (min(1.0, pixel_mm / res_mm), min(1.0, pixel_mm / res_mm * aniso))
    if u() < 0.5:
        res = res[::-1]
    acq = Acquisition(
        # Log-uniform: noisy scans (SNR 8-15, like the real reference slices) are as common
        # as clean ones.
        snr=float(np.exp(u(np.log(snr_range[0]), np.log(snr_range[1])))),
        ghosting=float(u(0.05, 0.45)) if u() < 0.5 else 0.0,
        ghost_period=float(u(3.0, 8.0)),
        pe_axis="ap" if u() < 0.5 else "si",
        gibbs=float(u(0.45, 0.8)) if u() < 0.3 else 1.0,
        resolution=(float(res[0]), float(res[1])),
        bias=float(u(0.05, 0.4)),
        coil=float(u(0.0, 0.9)),
        gain=float(u(0.6, 1.0)),
        seed=int(rng.integers(2**63 - 1)),
    )
    lat = 0.0 if u() < 0.6 else u(0.0, 0.75)
    case = Case(
        size=int(size),
        angle=float(np.deg2rad(u(-12.0, 12.0))),
        scale=float(scale),
        shift=(float(u(-12.0, 12.0)), float(u(-10.0, 10.0))),
        lordosis=float(lordosis),
        s_shape=float(u(-6.0, 6.0)),
        body_heights=tuple(float(h) for h in body_heights),
        body_widths=tuple(float(w) for w in body_widths),
        body_wedge=tuple(float(u(-1.5, 1.5)) for _ in range(7)),
        corner=float(u(1.5, 4.0)),
        concavity=float(u(0.4, 1.6)),
        dens=float(u(14.0, 19.0)),
        discs=tuple(discs),
        clefts=tuple(float(c) for c in clefts),
        modic=tuple(float(m) for m in modic),
        canal=float(canal),
        canal_upper=float(u(3.0, 7.0)),
        cord=float(u(0.45, 0.68) * canal),
        cord_shift=float(u(-0.5, 0.5)),
        enlargement=float(u(0.0, 0.15)),
        lateral=float(lat),
        flavum=float(u(0.2, 1.5)),
        spinous=tuple(float(b * u(0.8, 1.2)) for b in (26, 18, 19, 21, 27, 36, 34)),
        spinous_tilt=float(np.deg2rad(u(15.0, 40.0))),
        prevertebral=float(u(3.0, 7.0)),
        oesophagus=float(u(6.0, 14.0)),
        airway=float(u(8.0, 20.0)),
        neck_back=float(u(45.0, 70.0)),
        neck_front=float(u(40.0, 65.0)),
        subcut=float(u(5.0, 20.0)),
        fat_planes=(float(u(0.25, 0.45)), float(u(0.55, 0.8))),
        fade=float(u(5.0, 40.0)),
        tissue=tissue,
        gamma=float(u(0.75, 1.35)),
        texture=(float(u(0.1, 0.35)), float(u(0.05, 0.25)), float(u(0.1, 0.4))),
        flow_voids=float(u(0.3, 0.9)) if u() < 0.35 else 0.0,
        basivertebral=float(u(0.3, 1.0)) if u() < 0.5 else 0.0,
        texture_seed=int(rng.integers(2**63 - 1)),
        acquisition=acq,
    )
    if zoomed:  # centre the view on a random point of the spine, not the whole neck
        lay = layout(case)
        s = u(lay["top"][0], lay["bottom"][-1])
        d = u(-0.8 * float(np.mean(body_widths)), 1.2 * canal)
        cx, cy = geometry.canonical_offset(case.pose, s, d)
        case = dataclasses.replace(case, shift=(cx + u(-5.0, 5.0), cy + u(-5.0, 5.0)))
    return case
