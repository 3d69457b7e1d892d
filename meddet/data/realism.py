"""How close synthetic slices look to real ones: intensity, spectrum and texture statistics.

Every function takes 2-D images that are already normalised the way the dataset loader does it
(:func:`meddet.data.transforms.normalize_intensity`: 0.5-99.5 percentile clip to [0, 1]), so
the statistics compare what a detector sees, not scanner units. Images of different sizes can
be compared: spectra are binned by spatial frequency in cycles per pixel, so give both sets the
same pixel size (e.g. resample synthetic crops to the real slices' 1 mm).

:func:`compare` bundles the measures into one :class:`RealismReport`:

- intensity: Wasserstein-1 distance between the pooled intensity distributions (0 identical,
  1 the largest possible on [0, 1]), histogram intersection (1 identical, 0 disjoint), and the
  median over synthetic images of each image's own Wasserstein-1 distance to the real pool;
- spectrum: radially averaged power spectrum, its log-log slope (natural images ~ -2 to -3;
  white noise 0) and the mean absolute log10 difference between the two mean spectra;
- texture: Wasserstein-1 distance between the distributions of 3x3 local standard deviations
  (how grainy and how edgy images are at the pixel scale).

:func:`matched_crop` cuts from a phantom image the window a real slice covers (same size in
mm, around the spinal canal), so that tight real crops can be compared with whole-neck
phantom images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from meddet.data.phantom._common import REF_PIXEL_MM, REF_SIZE
from meddet.errors import MedDetError

# Intensity histograms: fine bins, so that W1 from binned CDFs is exact to 1/512.
_HIST_BINS = 512
# Spectrum bins: log-spaced from ~1/32 cycles/pixel (structures of a few cm at 1 mm) to the
# Nyquist frequency; fixed edges so that images of any size share the same bins.
_SPEC_EDGES = np.geomspace(1 / 32, 0.5, 13)
# Local-standard-deviation histogram: a 3x3 window of [0, 1] values has std <= 0.5.
_TEX_RANGE = 0.5


def _check(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float64)
    if arr.ndim != 2 or min(arr.shape) < 8:
        raise MedDetError(f"realism statistics need 2-D images of at least 8x8 pixels, "
                          f"got shape {arr.shape}")
    return arr


def intensity_histogram(img: np.ndarray, bins: int = _HIST_BINS) -> np.ndarray:
    """Normalised histogram (sums to 1) of a [0, 1] image over ``bins`` equal bins."""
    hist, _ = np.histogram(np.clip(_check(img), 0, 1), bins=bins, range=(0.0, 1.0))
    return hist / max(hist.sum(), 1)


def wasserstein1(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance between two histograms over [0, 1].

    Both histograms use the same equal-width bins over [0, 1] and sum to 1; the distance is the
    area between their cumulative distributions (in intensity units, so at most 1).
    """
    a, b = np.asarray(hist_a, float), np.asarray(hist_b, float)
    return float(np.abs(np.cumsum(a) - np.cumsum(b)).sum() / a.size)


def histogram_intersection(hist_a: np.ndarray, hist_b: np.ndarray) -> float:
    """Shared mass of two normalised histograms: 1 identical, 0 disjoint."""
    return float(np.minimum(hist_a, hist_b).sum())


def radial_power_spectrum(img: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum in fixed log-spaced frequency bins.

    The image mean is removed and a Hann window applied (so the image border is not a bright
    edge in the spectrum); the power is normalised to sum to 1 over the bins, so that the
    spectrum describes the shape (how power spreads over scales), not the contrast.

    Returns:
        float64 ``[12]`` power per bin (bin edges :data:`_SPEC_EDGES`, cycles per pixel);
        NaN for a bin that no frequency of this image falls into.
    """
    arr = _check(img)
    h, w = arr.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    spec = np.abs(np.fft.fft2((arr - arr.mean()) * win)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    radius = np.sqrt(fy * fy + fx * fx).ravel()
    which = np.digitize(radius, _SPEC_EDGES) - 1
    keep = (which >= 0) & (which < _SPEC_EDGES.size - 1)
    n = _SPEC_EDGES.size - 1
    total = np.bincount(which[keep], weights=spec.ravel()[keep], minlength=n)
    count = np.bincount(which[keep], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / count, np.nan)
    return mean / np.nansum(mean) if np.nansum(mean) > 0 else mean


def spectral_slope(power: np.ndarray) -> float:
    """Least-squares slope of log10 power against log10 frequency (bin centres)."""
    centres = np.sqrt(_SPEC_EDGES[:-1] * _SPEC_EDGES[1:])
    ok = np.isfinite(power) & (power > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log10(centres[ok]), np.log10(power[ok]), 1)[0])


def spectrum_distance(power_a: np.ndarray, power_b: np.ndarray) -> float:
    """Mean absolute difference of log10 power over the bins both spectra have (decades)."""
    ok = np.isfinite(power_a) & np.isfinite(power_b) & (power_a > 0) & (power_b > 0)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(np.log10(power_a[ok]) - np.log10(power_b[ok]))))


def local_std(img: np.ndarray) -> np.ndarray:
    """Standard deviation of every 3x3 window (valid windows only), float64 ``[H-2, W-2]``."""
    arr = _check(img)
    win = np.lib.stride_tricks.sliding_window_view(arr, (3, 3))
    return win.std(axis=(-1, -2))


def texture_histogram(img: np.ndarray, bins: int = _HIST_BINS) -> np.ndarray:
    """Normalised histogram of the 3x3 local standard deviations over [0, 0.5]."""
    hist, _ = np.histogram(local_std(img), bins=bins, range=(0.0, _TEX_RANGE))
    return hist / max(hist.sum(), 1)


@dataclass(frozen=True)
class RealismReport:
    """Real vs synthetic statistics (see the module docstring); lower distances are closer.

    Attributes:
        n_real, n_synth: number of images in each set.
        intensity_w1: W1 between the pooled intensity histograms ([0, 1] units).
        intensity_intersection: histogram intersection of the pooled histograms (1 = same).
        intensity_w1_median: median over synthetic images of W1(image, real pool).
        slope_real, slope_synth: log-log slope of the mean power spectrum of each set.
        spectrum_distance: mean |log10| difference of the two mean spectra (decades).
        texture_w1: W1 between the pooled 3x3 local-std histograms, in units of the [0, 0.5]
            local-std range (so 1 is the largest possible).
    """

    n_real: int
    n_synth: int
    intensity_w1: float
    intensity_intersection: float
    intensity_w1_median: float
    slope_real: float
    slope_synth: float
    spectrum_distance: float
    texture_w1: float

    def as_dict(self) -> dict[str, float]:
        """The fields as a plain dict (for JSON)."""
        return asdict(self)


def _mean_spectrum(images: Sequence[np.ndarray]) -> np.ndarray:
    return np.nanmean(np.stack([radial_power_spectrum(im) for im in images]), axis=0)


def compare(real: Sequence[np.ndarray], synth: Sequence[np.ndarray]) -> RealismReport:
    """Compare two sets of normalised [0, 1] slices.

    Args:
        real: real slices, each a 2-D array in [0, 1] (any sizes, same pixel size as ``synth``).
        synth: synthetic slices, likewise.

    Returns:
        A :class:`RealismReport`. Each image weighs the same in the pooled histograms,
        whatever its size.

    Raises:
        MedDetError: an empty set or an image that is not 2-D and at least 8x8.
    """
    if not len(real) or not len(synth):
        raise MedDetError("realism comparison needs at least one real and one synthetic image")
    hr = np.mean([intensity_histogram(im) for im in real], axis=0)
    hs_each = [intensity_histogram(im) for im in synth]
    hs = np.mean(hs_each, axis=0)
    tr = np.mean([texture_histogram(im) for im in real], axis=0)
    ts = np.mean([texture_histogram(im) for im in synth], axis=0)
    pr, ps = _mean_spectrum(real), _mean_spectrum(synth)
    return RealismReport(
        n_real=len(real),
        n_synth=len(synth),
        intensity_w1=wasserstein1(hr, hs),
        intensity_intersection=histogram_intersection(hr, hs),
        intensity_w1_median=float(np.median([wasserstein1(hr, h) for h in hs_each])),
        slope_real=spectral_slope(pr),
        slope_synth=spectral_slope(ps),
        spectrum_distance=spectrum_distance(pr, ps),
        texture_w1=wasserstein1(tr, ts),
    )


def canal_centre(case, rendered) -> tuple[float, float] | None:
    """Image ``(x, y)`` (pixels) of the spinal canal's centre at the level of the labelled disc
    nearest the image centre; None when no disc is labelled.

    Works for any phantom whose case has ``size`` and ``canal`` and whose rendering has
    ``boxes``, ``s`` and ``d`` (:mod:`meddet.data.synth`, :mod:`meddet.data.phantom.v1`).
    """
    boxes = rendered.boxes[(rendered.boxes[:, 2] > rendered.boxes[:, 0])]
    if not len(boxes):
        return None
    n = case.size
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    cx, cy = centres[np.argmin(((centres - n / 2) ** 2).sum(1))]
    s0 = rendered.s[int(cy), int(cx)]
    cost = (rendered.s - s0) ** 2 + (rendered.d - case.canal / 2) ** 2
    y, x = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return float(x) + 0.5, float(y) + 0.5


def matched_crop(case, rendered, shape_mm: tuple[int, int]) -> np.ndarray | None:
    """A phantom window of a real slice's physical size, around the canal, sampled every 1 mm.

    Each 1 mm sample takes the nearest image pixel (no averaging), so the noise and texture
    of the image's own pixels are compared, at the anatomy's physical scale (a reference pixel
    is 0.8 mm at zoom 1).

    Args:
        case, rendered: a phantom case and its rendering (see :func:`canal_centre`).
        shape_mm: ``(rows, cols)`` of the window in mm, i.e. of the returned array.

    Returns:
        float32 ``[rows, cols]`` raw image values, or None when the window does not fit inside
        the image or no disc is labelled.
    """
    centre = canal_centre(case, rendered)
    if centre is None:
        return None
    mm = REF_PIXEL_MM * REF_SIZE / case.size / case.scale  # anatomical mm per image pixel
    h, w = shape_mm[0] / mm, shape_mm[1] / mm
    x0, y0 = centre[0] - w / 2, centre[1] - h / 2
    if x0 < 0 or y0 < 0 or x0 + w > case.size or y0 + h > case.size:
        return None
    xs = np.clip((x0 + (np.arange(shape_mm[1]) + 0.5) / mm).astype(int), 0, case.size - 1)
    ys = np.clip((y0 + (np.arange(shape_mm[0]) + 0.5) / mm).astype(int), 0, case.size - 1)
    return rendered.image[np.ix_(ys, xs)]
