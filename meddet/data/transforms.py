"""Image preparation shared by training, evaluation and inference.

One implementation of each step, used by :class:`~meddet.data.CocoDetection` and by
:func:`preprocess` alike, so a model sees the same input at training and prediction time:

1. :func:`load_image`: PNG/JPEG/TIFF (8 or 16 bit, grey/RGB/RGBA) → float32 ``H×W``.
2. :func:`normalize_intensity`: percentile clipping (0.5–99.5) and scaling to [0, 1].
3. :func:`resize_pad`: resize by ``scale`` (long side to ``img_size`` by default) and pad
   bottom/right to ``img_size × img_size``.
4. :func:`to_input`: replicate the grey channel to 3 channels, standardise with the ImageNet
   mean/std → ``FloatTensor[3, S, S]``.

Training augmentation (:func:`photometric_jitter`, :func:`hflip`, scale jitter through the
``scale`` argument of :func:`resize_pad`) works on the [0, 1] image between steps 2 and 3.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from meddet.errors import MedDetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCENTILES = (0.5, 99.5)
_LUMA = np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 grey from RGB


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a float32 ``H×W`` grey array in its stored intensity units.

    8-bit and 16-bit files keep their raw values (0–255 or 0–65535): the percentile
    normalisation that follows makes the scale irrelevant. RGB is converted to grey with the
    BT.601 weights; an alpha channel is ignored.

    Raises:
        MedDetError: the file is missing or not a readable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                return rgb @ _LUMA
            if mode == "LA":
                im = im.getchannel("L")
            elif mode == "1":
                im = im.convert("L")
            return np.array(im, dtype=np.float32)
    except FileNotFoundError:
        raise MedDetError(f"image file {path} does not exist; check the dataset folder") from None
    except Image.DecompressionBombError:
        # PIL refuses, from the header alone, sizes that would exhaust memory when decoded.
        raise MedDetError(f"image {path} is too large to decode safely (over "
                          f"{2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels); downscale or crop it"
                          ) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MedDetError(f"cannot read image {path}: {exc}; replace or remove the file") from exc


def normalize_intensity(arr: np.ndarray) -> np.ndarray:
    """Clip to the 0.5th–99.5th percentiles and scale to [0, 1].

    MR intensities have no absolute scale and a few very bright pixels (fat, flow artifacts);
    percentile clipping makes images from different scanners and gains comparable.

    Args:
        arr: 2-D array of any numeric dtype.

    Returns:
        float32 array of the same shape in [0, 1] (all zeros for a constant image).

    Raises:
        MedDetError: ``arr`` is not 2-D or contains NaN/inf.
    """
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise MedDetError(f"expected a non-empty 2-D grey image, got an array of shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise MedDetError("image contains NaN or infinite values; clean the input array first")
    lo, hi = np.percentile(arr, PERCENTILES)
    if hi <= lo:
        return np.zeros_like(arr)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def fit_scale(height: int, width: int, img_size: int) -> float:
    """The resize factor that brings the long side to ``img_size``."""
    return img_size / max(height, width)


def resize_pad(
    img01: np.ndarray,
    img_size: int,
    scale: float | None = None,
    offset: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, float]:
    """Resize by ``scale`` and pad bottom/right (or crop) to ``img_size × img_size``.

    Args:
        img01: float ``H×W`` image in [0, 1].
        img_size: output side ``S``.
        scale: input pixels per original pixel; None fits the long side to ``S``.
        offset: ``(x, y)`` of the top-left corner of the kept window in the resized image;
            only non-zero when scale jitter makes the resized image larger than ``S``.

    Returns:
        ``(out, scale)``: float32 ``S×S`` image (zeros in the padding) and the scale used.
        Original pixel coordinates map to ``coord · scale - offset``.
    """
    h, w = img01.shape
    if scale is None:
        scale = fit_scale(h, w, img_size)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) == (w, h):
        resized = np.asarray(img01, dtype=np.float32)
    else:
        # PIL's bilinear filter widens its support when shrinking, so downscaling is
        # anti-aliased; mode "F" keeps float precision.
        pil = Image.fromarray(np.ascontiguousarray(img01, dtype=np.float32))
        resized = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    ox, oy = offset
    window = resized[oy : oy + img_size, ox : ox + img_size]
    out = np.zeros((img_size, img_size), np.float32)
    out[: window.shape[0], : window.shape[1]] = window
    return out, float(scale)


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


def to_input(img01: np.ndarray) -> torch.Tensor:
    """Grey ``S×S`` [0, 1] image → ``FloatTensor[3, S, S]`` standardised with ImageNet stats."""
    grey = torch.from_numpy(np.ascontiguousarray(img01, dtype=np.float32))
    return (grey.unsqueeze(0) - _MEAN) / _STD


def check_img_size(img_size: int) -> None:
    """Raise :class:`MedDetError` unless ``img_size`` is a positive multiple of 32."""
    if isinstance(img_size, bool) or not isinstance(img_size, (int, np.integer)):
        raise MedDetError(f"img_size must be an integer multiple of 32, got {img_size!r}")
    if img_size < 32 or img_size % 32:
        raise MedDetError(f"img_size must be a positive multiple of 32 (e.g. 256), got {img_size}")


def preprocess(arr2d: np.ndarray, img_size: int = 256) -> tuple[torch.Tensor, float]:
    """Prepare any 2-D grey array for a detector (the inference path).

    Percentile normalisation, resize of the long side to ``img_size``, bottom/right padding
    and ImageNet standardisation: exactly what the evaluation dataset does.

    Args:
        arr2d: ``H×W`` image in any intensity units.
        img_size: network input side, a multiple of 32.

    Returns:
        ``(image, scale)``: ``FloatTensor[3, S, S]`` and the resize factor (input pixels per
        original pixel); divide predicted boxes by ``scale`` to get original pixels.
    """
    check_img_size(img_size)
    out, scale = resize_pad(normalize_intensity(arr2d), img_size)
    return to_input(out), scale


def photometric_jitter(
    img01: np.ndarray,
    rng: np.random.Generator,
    *,
    brightness: float,
    contrast: float,
    gamma: float,
) -> np.ndarray:
    """Random gamma, contrast (about mid-grey) and brightness changes of a [0, 1] image.

    Args:
        img01: float ``H×W`` image in [0, 1].
        rng: source of the random factors.
        brightness: maximum additive shift.
        contrast: maximum relative contrast change.
        gamma: maximum relative gamma change.

    Returns:
        float32 ``H×W`` image clipped to [0, 1].
    """
    g = rng.uniform(1 - gamma, 1 + gamma)
    c = rng.uniform(1 - contrast, 1 + contrast)
    b = rng.uniform(-brightness, brightness)
    out = np.power(np.clip(img01, 0, 1), np.float32(max(g, 1e-3)))
    out = (out - np.float32(0.5)) * np.float32(c) + np.float32(0.5 + b)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def hflip(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an ``H×W`` image left-right and its ``[N, 4]`` xyxy boxes (pixel edges)."""
    w = img.shape[1]
    flipped = boxes.copy()
    flipped[:, 0] = w - boxes[:, 2]
    flipped[:, 2] = w - boxes[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), flipped
