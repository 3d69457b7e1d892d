"""Where a backbone's initial weights come from: torchvision's ImageNet weights, a file, or none.

A ``pretrained`` setting is one of

* ``None`` or ``"none"``: random initialisation;
* ``"imagenet"``: torchvision's ImageNet-1K weights (:data:`IMAGENET_WEIGHTS` names the enum
  per backbone), taken from torchvision's cache (``torch.hub.get_dir()/checkpoints/``, i.e.
  ``$TORCH_HOME/hub/checkpoints/``) or downloaded there; an error when neither works;
* ``"auto"``: the same weights when they can be had, else random initialisation (never an
  error for lack of weights);
* a path to a state-dict file (always used as given, no network).

:func:`resolve_pretrained` turns a setting into a file (or ``None``) plus a one-line note saying
what was used, so callers can report it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torchvision

from meddet.errors import MedDetError

__all__ = ["IMAGENET_WEIGHTS", "PretrainedWeights", "imagenet_cache_path", "resolve_pretrained"]

#: torchvision weights enum per backbone name; ``None`` where torchvision has no ImageNet
#: weights (MobileNetV2 1.4: torchvision ships only width 1.0; ShuffleNet V1: not in
#: torchvision). All are the ``IMAGENET1K_V1`` weights, torchvision's original ImageNet
#: releases (for MobileNetV2, ``mobilenet_v2-b0353104.pth``).
IMAGENET_WEIGHTS: dict[str, str | None] = {
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "resnet101": "ResNet101_Weights.IMAGENET1K_V1",
    "resnet152": "ResNet152_Weights.IMAGENET1K_V1",
    "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
    "mobilenet_v2_1.4": None,
    "efficientnet_b0": "EfficientNet_B0_Weights.IMAGENET1K_V1",
    "efficientnet_b1": "EfficientNet_B1_Weights.IMAGENET1K_V1",
    "shufflenet_v1": None,
    "shufflenet_v2": "ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1",
}

# A dropped connection can stall a socket for minutes; fail over to the offline path sooner.
_DOWNLOAD_TIMEOUT_S = 30.0
# URLs whose download already failed in this process, with the reason: a run building several
# models offline tries each file once instead of waiting on the network again and again.
_FAILED_DOWNLOADS: dict[str, str] = {}
_NETWORK = "<network>"  # key of _FAILED_DOWNLOADS once a failure showed there is no network


class PretrainedWeights(NamedTuple):
    """Outcome of :func:`resolve_pretrained`.

    Attributes:
        path: state-dict file to load into the backbone; ``None`` means random initialisation.
        note: one line for the user saying which weights the backbone gets and from where.
    """

    path: Path | None
    note: str


def imagenet_cache_path(backbone: str) -> tuple[str, str, Path]:
    """Torchvision's ImageNet weights for ``backbone`` and where its cache keeps them.

    Args:
        backbone: a backbone name with an :data:`IMAGENET_WEIGHTS` enum.

    Returns:
        ``(enum, url, path)``: the enum's name (e.g. ``"MobileNet_V2_Weights.IMAGENET1K_V1"``),
        its download URL and ``torch.hub.get_dir()/checkpoints/<file name of the URL>``.

    Raises:
        MedDetError: torchvision has no ImageNet weights for ``backbone``.
    """
    enum = IMAGENET_WEIGHTS.get(backbone)
    if enum is None:
        raise MedDetError(f"torchvision has no ImageNet weights for backbone {backbone!r}; "
                          "pass pretrained=<path to a state_dict file>, 'auto' or 'none'")
    url = torchvision.models.get_weight(enum).url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    return enum, url, path


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every socket operation (torch.hub's downloader sets no timeout of its own)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds if old is None else old)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` to ``dst`` with torch.hub, checking the hash prefix in the file name as
    torchvision does (torch.hub writes to a temporary file and renames it when complete)."""
    match = torch.hub.HASH_REGEX.search(dst.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
        torch.hub.download_url_to_file(url, str(dst), hash_prefix=match.group(1) if match else None,
                                       progress=True)


def _fetch_imagenet(backbone: str) -> tuple[Path | None, str]:
    """Torchvision's cached file for ``backbone``, downloading it when absent.

    Returns:
        ``(path, "")`` on success, else ``(None, why)`` with ``why`` saying in one clause which
        file was looked for where and why the download failed.
    """
    _, url, path = imagenet_cache_path(backbone)
    if path.is_file():
        return path, ""
    reason = _FAILED_DOWNLOADS.get(url) or _FAILED_DOWNLOADS.get(_NETWORK)
    if reason is None:
        try:
            _download(url, path)
        except Exception as exc:  # no network, proxy refusal, hash mismatch, full disk, ...
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            _FAILED_DOWNLOADS[url] = reason
            if isinstance(exc, (URLError, ConnectionError, TimeoutError, socket.timeout)):
                # The network itself is unreachable: do not wait on it for the next file.
                _FAILED_DOWNLOADS[_NETWORK] = reason
        else:
            if path.is_file():
                return path, ""
            reason = "the download left no file"
    return None, f"{path} is not in torchvision's cache and downloading {url} failed ({reason})"


def resolve_pretrained(backbone: str, spec: str | os.PathLike[str] | None) -> PretrainedWeights:
    """Decide which weights ``backbone`` starts from (downloading them if needed and possible).

    Args:
        backbone: a backbone name (a key of :data:`IMAGENET_WEIGHTS`).
        spec: ``None`` / ``"none"``, ``"imagenet"``, ``"auto"`` or a state-dict file path
            (see the module docstring).

    Returns:
        :class:`PretrainedWeights`: the file to load (``None`` for random initialisation) and
        a one-line note, e.g. ``"mobilenet_v2: ImageNet weights
        (MobileNet_V2_Weights.IMAGENET1K_V1) from /root/.cache/torch/hub/checkpoints/
        mobilenet_v2-b0353104.pth"``.

    Raises:
        MedDetError: ``"imagenet"`` for a backbone without torchvision weights, or whose
            weights are neither cached nor downloadable; a file path that does not exist.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return PretrainedWeights(None, f"{backbone}: random initialisation")
    if spec in ("imagenet", "auto"):
        if backbone not in IMAGENET_WEIGHTS:
            raise MedDetError(f"unknown backbone {backbone!r}; use one of: "
                              f"{', '.join(IMAGENET_WEIGHTS)}")
        if spec == "auto" and IMAGENET_WEIGHTS.get(backbone) is None:
            return PretrainedWeights(None, f"{backbone}: random initialisation (torchvision has "
                                           "no ImageNet weights for it)")
        path, why = _fetch_imagenet(backbone)
        if path is None:
            if spec == "imagenet":
                raise MedDetError(
                    f"no ImageNet weights ({IMAGENET_WEIGHTS[backbone]}) for backbone "
                    f"{backbone!r}: {why}; put the file at that path, set TORCH_HOME to a "
                    "folder whose hub/checkpoints/ holds it, or pass pretrained=<path to the "
                    "file>")
            return PretrainedWeights(None, f"{backbone}: random initialisation (no ImageNet "
                                           f"weights: {why})")
        return PretrainedWeights(path, f"{backbone}: ImageNet weights "
                                       f"({IMAGENET_WEIGHTS[backbone]}) from {path}")
    path = Path(spec)
    if not path.is_file():
        raise MedDetError(f"pretrained weights file {path} does not exist; pass 'imagenet', "
                          "'auto', 'none' or an existing state_dict file")
    return PretrainedWeights(path, f"{backbone}: weights from {path}")
