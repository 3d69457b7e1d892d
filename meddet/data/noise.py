"""MRI noise and artifacts on magnitude images.

The same functions serve two purposes: the phantom generator (:mod:`meddet.data.synth`) uses
them to simulate an acquisition, and evaluation uses them, through :func:`parse_noise_spec`,
to corrupt normalised ``[0, 1]`` images so robustness can be measured at a chosen noise level.

All functions take a float ``H×W`` array and return a new float32 ``H×W`` array; randomness
comes only from the ``numpy.random.Generator`` passed in, so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from meddet.errors import MedDetError

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# Pixels above this fraction of the image maximum count as tissue when the signal level for
# an SNR is measured: background air would otherwise drag the mean towards zero.
_FOREGROUND_FRACTION = 0.1


def signal_level(img: np.ndarray) -> float:
    """Mean intensity of the tissue (pixels above 10 % of the maximum); the S in SNR = S/σ."""
    peak = float(img.max()) if img.size else 0.0
    if peak <= 0:
        return 0.0
    fg = img[img > _FOREGROUND_FRACTION * peak]
    return float(fg.mean()) if fg.size else peak


def rician_noise(img: np.ndarray, snr: float, rng: np.random.Generator) -> np.ndarray:
    """Rician noise: the magnitude of the image plus complex Gaussian noise.

    A magnitude MR image is ``|signal + n_re + i·n_im|``; this gives the Rayleigh noise floor
    in air and the signal-dependent bias in dark tissue that additive Gaussian noise lacks.

    Args:
        img: ``H×W`` magnitude image (any non-negative scale).
        snr: signal-to-noise ratio, ``signal_level(img) / σ``; must be > 0.
        rng: source of the noise.

    Returns:
        float32 ``H×W`` noisy magnitude image.
    """
    sigma = np.float32(signal_level(img) / snr)
    re = img.astype(np.float32) + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    im = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im)


def gaussian_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive zero-mean Gaussian noise with standard deviation ``sigma`` (image units)."""
    return (img + np.float32(sigma) * rng.standard_normal(img.shape, dtype=np.float32)).astype(
        np.float32
    )


def motion_ghosting(
    img: np.ndarray,
    strength: float,
    rng: np.random.Generator,
    *,
    axis: int = 1,
    period: float | None = None,
) -> np.ndarray:
    """Periodic-motion ghosts along the phase-encode axis.

    Periodic motion (swallowing, pulsation) during acquisition puts a phase error on each
    phase-encode line that varies periodically with the line index. Modulating k-space lines by
    ``exp(i·strength·sin(2π·k/period + φ))`` reproduces that: attenuated copies of the anatomy
    appear shifted by multiples of ``N/period`` pixels along ``axis`` (first ghost amplitude
    ≈ strength/2 for small strength).

    Args:
        img: ``H×W`` magnitude image.
        strength: peak phase error in radians; 0 returns the image unchanged.
        rng: draws the motion phase and, when ``period`` is None, the period.
        axis: phase-encode axis (0: vertical, 1: horizontal).
        period: motion period in phase-encode lines; None draws it from [3, 8].

    Returns:
        float32 ``H×W`` image with ghosts.
    """
    if period is None:
        period = float(rng.uniform(3.0, 8.0))
    phase0 = float(rng.uniform(0.0, 2 * np.pi))
    if strength <= 0:
        return img.astype(np.float32, copy=True)
    n = img.shape[axis]
    k = np.fft.fftfreq(n) * n  # signed line index, so the centre of k-space is line 0
    mod = np.exp(1j * strength * np.sin(2 * np.pi * k / period + phase0)).astype(np.complex64)
    shape = [1, 1]
    shape[axis] = n
    spec = np.fft.fft(img.astype(np.float32), axis=axis) * mod.reshape(shape)
    return np.abs(np.fft.ifft(spec, axis=axis)).astype(np.float32)


def gibbs_ringing(img: np.ndarray, keep: float) -> np.ndarray:
    """Truncation (Gibbs) ringing: keep only the central ``keep`` fraction of k-space.

    Models an acquisition matrix smaller than the reconstruction matrix; sharp edges (CSF/cord,
    cortical bone) then ring with parallel bright/dark lines.

    Args:
        img: ``H×W`` image.
        keep: fraction of k-space kept along each axis, in (0, 1]; 1 is a no-op.
    """
    if keep >= 1:
        return img.astype(np.float32, copy=True)
    h, w = img.shape
    # A real image has a Hermitian spectrum and the window is symmetric, so the half
    # spectrum of rfft2 suffices (about twice as fast as the full complex transform).
    spec = np.fft.rfft2(img.astype(np.float32))
    fy = np.abs(np.fft.fftfreq(h))[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    spec *= (fy <= keep / 2) & (fx <= keep / 2)
    return np.abs(np.fft.irfft2(spec, s=(h, w))).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """A smooth random field: Gaussian noise on a ``cells`` grid, bicubically upsampled.

    Returns:
        float32 array of ``shape`` (H, W) with roughly unit variance.
    """
    low = rng.standard_normal(cells, dtype=np.float32)
    up = Image.fromarray(low).resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.array(up, dtype=np.float32)


def bias_field(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply by a smooth coil-sensitivity field ``exp(strength · field)``.

    Args:
        img: ``H×W`` image.
        strength: log-amplitude of the field; 0.3 gives roughly ±30 % shading.
        rng: draws the field.
    """
    field = smooth_field(rng, img.shape, (3, 3))
    field /= max(float(np.abs(field).max()), 1e-6)
    return (img * np.exp(np.float32(strength) * field)).astype(np.float32)


_SPEC_KINDS = {
    "rician": ("SNR", lambda v: v > 0, "> 0"),
    "ghosting": ("STRENGTH", lambda v: v >= 0, ">= 0"),
    "gaussian": ("SIGMA", lambda v: v >= 0, ">= 0"),
}


def _apply(kind: str, value: float, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "rician":
        return rician_noise(img, value, rng)
    if kind == "ghosting":
        return motion_ghosting(img, value, rng)
    return gaussian_noise(img, value, rng)


class NoiseSpec:
    """A parsed corruption spec; calling it corrupts an image (see :func:`parse_noise_spec`).

    A class rather than a closure so that datasets holding it can be pickled into DataLoader
    worker processes.
    """

    def __init__(self, steps: list[tuple[str, float]]):
        self.steps = list(steps)
        self.spec = ",".join(f"{k}:{v:g}" for k, v in self.steps)

    def __call__(self, img01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.asarray(img01, dtype=np.float32)
        for kind, value in self.steps:
            out = _apply(kind, value, out, rng)
        return np.clip(out, 0.0, 1.0)

    def __repr__(self) -> str:
        return f"NoiseSpec({self.spec!r})"


def parse_noise_spec(spec: str) -> NoiseSpec:
    """Parse an evaluation-time corruption spec into a callable.

    The spec is a comma-separated list of ``kind:value`` items applied left to right:
    ``rician:SNR`` (Rician noise at that SNR), ``ghosting:STRENGTH`` (motion ghosts along the
    horizontal axis, phase error in radians) and ``gaussian:SIGMA`` (additive noise, [0, 1]
    units). Example: ``"rician:10,ghosting:0.3"``.

    Args:
        spec: the spec string.

    Returns:
        ``corrupt(img01, rng) -> np.ndarray``: takes a float ``H×W`` image in [0, 1] and a
        ``numpy.random.Generator`` and returns a float32 ``H×W`` image clipped to [0, 1].

    Raises:
        MedDetError: empty spec, unknown kind, missing or non-numeric value, value out of range.
    """
    hint = "use e.g. 'rician:10,ghosting:0.3,gaussian:0.05'"
    items = [p.strip() for p in str(spec).split(",")]
    if not spec or not any(items):
        raise MedDetError(f"empty noise spec; {hint}")
    steps: list[tuple[str, float]] = []
    for item in items:
        kind, sep, raw = item.partition(":")
        kind = kind.strip().lower()
        if kind not in _SPEC_KINDS:
            raise MedDetError(
                f"unknown noise kind {kind!r} in noise spec {spec!r}; "
                f"choose from {', '.join(_SPEC_KINDS)} ({hint})"
            )
        name, ok, rule = _SPEC_KINDS[kind]
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or not np.isfinite(value):
            raise MedDetError(f"noise item {item!r} needs a number: {kind}:{name} ({hint})")
        if not ok(value):
            raise MedDetError(f"noise item {item!r}: {name} must be {rule}")
        steps.append((kind, value))
    return NoiseSpec(steps)
