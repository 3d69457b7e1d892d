"""The input-size rule that follows from the detectors' strides.

Every detector in the zoo reads C3-C5 from its backbone (strides 8, 16, 32) and adds P6 and P7
with stride-2 convolutions, so the FPN levels have strides :data:`STRIDES`. Inputs are padded to
a multiple of the deepest backbone stride, :data:`SIZE_DIVISOR`, so that every level's feature
map tiles the image exactly; this module is the one place that rule is written.
"""

from __future__ import annotations

from meddet.errors import MedDetError

__all__ = ["SIZE_DIVISOR", "STRIDES", "check_img_size"]

STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
SIZE_DIVISOR = 32


def check_img_size(img_size: int, *, what: str = "--img-size", minimum: int = SIZE_DIVISOR) -> int:
    """Return ``img_size`` if it is a multiple of :data:`SIZE_DIVISOR` and at least ``minimum``.

    Args:
        img_size: square network input side in pixels.
        what: how the user wrote the value (a flag or config key), named in the error.
        minimum: smallest accepted value.

    Raises:
        MedDetError: the size is not a multiple of 32 or is below ``minimum``.
    """
    if img_size < minimum or img_size % SIZE_DIVISOR:
        raise MedDetError(f"{what} must be a multiple of {SIZE_DIVISOR} and at least {minimum}, "
                          f"got {img_size}")
    return int(img_size)
