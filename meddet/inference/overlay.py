"""Overlay images: the input slice with its detections drawn as labelled boxes (PIL only).

The slice is windowed for display with the same 0.5-99.5 percentile clip the model input uses,
so what a reader sees is what the model saw. Small images (a 64-pixel DICOM test file, a
low-resolution NIfTI slice) are enlarged by an integer factor with nearest-neighbour sampling
so that labels stay readable; boxes are scaled with them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

__all__ = ["display_window", "render_overlay"]

# Distinct, colour-blind-friendly colours (Okabe-Ito), one per class index.
PALETTE = (
    (230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66),
    (0, 114, 178), (213, 94, 0), (204, 121, 167), (255, 255, 255),
)
# Overlays are drawn at least this large (long side, pixels) so text stays legible.
MIN_DISPLAY_SIDE = 512


def display_window(arr: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> np.ndarray:
    """``float [H, W]`` → ``uint8 [H, W]`` after clipping to the ``lo``-``hi`` percentiles."""
    arr = np.asarray(arr, dtype=np.float32)
    p_lo, p_hi = np.percentile(arr, [lo, hi]) if arr.size else (0.0, 1.0)
    if p_hi <= p_lo:
        return np.zeros(arr.shape, np.uint8)
    out = (np.clip(arr, p_lo, p_hi) - p_lo) / (p_hi - p_lo)
    return np.round(out * 255).astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed bitmap font
        return ImageFont.load_default()


def render_overlay(
    arr: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
) -> bytes:
    """Draw detections on a slice and return the PNG bytes.

    Args:
        arr: ``[H, W]`` slice in any intensity units.
        boxes: ``[K, 4]`` xyxy in pixels of ``arr``.
        scores: ``[K]`` in [0, 1].
        labels: ``[K]`` 0-based class indices.
        class_names: names indexed by label.

    Returns:
        An RGB PNG, enlarged by an integer factor when the long side is below 512 pixels.
    """
    from PIL import Image, ImageDraw

    gray = display_window(arr)
    h, w = gray.shape
    zoom = max(1, int(np.ceil(MIN_DISPLAY_SIDE / max(h, w, 1))))
    img = Image.fromarray(gray, mode="L").convert("RGB")
    if zoom > 1:
        img = img.resize((w * zoom, h * zoom), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    side = max(img.size)
    width = max(1, side // 256)
    font = _font(max(10, side // 40))
    # Draw low scores first so the most confident box ends up on top.
    for i in np.argsort(np.asarray(scores), kind="stable"):
        x1, y1, x2, y2 = (float(v) * zoom for v in boxes[i])
        label = int(labels[i])
        colour = PALETTE[label % len(PALETTE)]
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"{name} {float(scores[i]):.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        # Label above the box, or inside its top edge when the box touches the image top.
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1 + width
        tx = min(max(0.0, x1), max(0.0, img.size[0] - tw - 2))
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2 * width], fill=colour)
        draw.text((tx + 1, ty - tb[1] + width), text, fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
