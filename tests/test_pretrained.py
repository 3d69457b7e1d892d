"""Backbone initialisation: torchvision's ImageNet weights from its cache or a download, a file,
``auto`` falling back to random weights, and one-line errors. No test touches the network: the
download function is replaced by one that fails as an offline machine does."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from meddet.errors import MedDetError
from meddet.models import build_detector, pretrained
from meddet.models.backbones import BACKBONES, build_backbone
from meddet.models.pretrained import IMAGENET_WEIGHTS, imagenet_cache_path, resolve_pretrained

SHARED_MBV2 = Path(__file__).resolve().parents[1].parent / "shared/weights/mobilenet_v2-b0353104.pth"
# The real downloaders, before the autouse fixture replaces them.
_DOWNLOAD = pretrained._download
_HUB_DOWNLOAD = torch.hub.download_url_to_file


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty torchvision cache under ``tmp_path`` and no network; yields the download calls.

    Returns:
        list of ``(url, destination)`` for every download attempted.
    """
    calls: list[tuple[str, Path]] = []

    def no_network(url, dst):
        calls.append((url, dst))
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    def forbidden(*args, **kwargs):
        raise AssertionError("a test reached torch.hub's downloader")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so TORCH_HOME decides get_dir()
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(pretrained, "_download", no_network)
    monkeypatch.setattr(pretrained, "_FAILED_DOWNLOADS", {})
    return calls


def _checkpoints(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_weights_table_names_torchvisions_v1_weights():
    assert set(IMAGENET_WEIGHTS) == set(BACKBONES)
    builders = {"resnet50": "resnet50", "resnet101": "resnet101", "resnet152": "resnet152",
                "mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet_b0",
                "efficientnet_b1": "efficientnet_b1", "shufflenet_v2": "shufflenet_v2_x1_0"}
    for backbone, builder in builders.items():
        weights = torchvision.models.get_weight(IMAGENET_WEIGHTS[backbone])
        assert weights in list(torchvision.models.get_model_weights(builder)), backbone
        assert weights.name == "IMAGENET1K_V1"
    # torchvision has no width-1.4 MobileNetV2 and no ShuffleNet V1.
    assert IMAGENET_WEIGHTS["mobilenet_v2_1.4"] is None
    assert IMAGENET_WEIGHTS["shufflenet_v1"] is None
    assert "shufflenet_v1" not in torchvision.models.list_models()
    # MobileNetV2's enum is the file the offline cache folder holds.
    assert imagenet_cache_path("mobilenet_v2")[2].name == "mobilenet_v2-b0353104.pth"


def test_imagenet_offline_without_cache_is_one_line_error(tmp_path, offline):
    expected = _checkpoints(tmp_path) / "mobilenet_v2-b0353104.pth"
    with pytest.raises(MedDetError) as err:
        build_backbone("mobilenet_v2", pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("'mobilenet_v2'", "MobileNet_V2_Weights.IMAGENET1K_V1", str(expected),
                 "Temporary failure in name resolution", "TORCH_HOME", "pretrained=<path"):
        assert part in msg, part
    assert offline == [(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url, expected)]
    # A second request in the same process does not wait on the network again.
    with pytest.raises(MedDetError, match="Temporary failure"):
        resolve_pretrained("mobilenet_v2", "imagenet")
    assert len(offline) == 1


def test_download_fills_the_cache(tmp_path, monkeypatch):
    tv = torchvision.models.shufflenet_v2_x1_0(weights=None)

    def download(url, dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tv.state_dict(), dst)

    monkeypatch.setattr(pretrained, "_download", download)
    m = build_backbone("shufflenet_v2", pretrained="imagenet")
    assert torch.equal(m.stage3[0].branch2[0].weight, tv.stage3[0].branch2[0].weight)
    cached = _checkpoints(tmp_path) / "shufflenetv2_x1-5666bf0f80.pth"
    assert cached.is_file()
    assert resolve_pretrained("shufflenet_v2", "auto").path == cached


def test_imagenet_from_the_cache_loads_the_file_exactly(tmp_path, offline):
    if not SHARED_MBV2.is_file():
        pytest.skip(f"{SHARED_MBV2} absent")
    _checkpoints(tmp_path).mkdir(parents=True)
    (_checkpoints(tmp_path) / SHARED_MBV2.name).symlink_to(SHARED_MBV2)
    ref = torch.load(SHARED_MBV2, map_location="cpu", weights_only=True)
    m = build_backbone("mobilenet_v2", pretrained="imagenet")
    own = m.state_dict()
    assert set(own) == {k for k in ref if k.startswith("features.")}
    for k, v in own.items():
        assert torch.equal(v, ref[k]), k
    # "auto" finds the same file; the detector gets mmdetection's fine-tuning defaults.
    det = build_detector("gfl_mbv2", pretrained="auto").train()
    assert torch.equal(det.backbone.features[5].conv[1][0].weight, ref["features.5.conv.1.0.weight"])
    assert not any(p.requires_grad for p in det.backbone.features[0].parameters())
    assert not any(bn.training for bn in det.backbone.modules() if isinstance(bn, nn.BatchNorm2d))
    assert "ImageNet weights (MobileNet_V2_Weights.IMAGENET1K_V1)" in det.pretrained_note
    assert offline == []


def test_file_path_always_works_offline(tmp_path, offline):
    tv = torchvision.models.mobilenet_v2(weights=None)
    path = tmp_path / "mbv2.pth"
    torch.save(tv.state_dict(), path)
    m = build_backbone("mobilenet_v2", pretrained=str(path))
    for k, v in m.state_dict().items():
        assert torch.equal(v, tv.state_dict()[k]), k
    assert resolve_pretrained("mobilenet_v2", path) == (path, f"mobilenet_v2: weights from {path}")
    assert offline == []


def test_backbone_without_torchvision_weights(offline):
    for name in ("shufflenet_v1", "mobilenet_v2_1.4"):
        with pytest.raises(MedDetError, match=f"no ImageNet weights for backbone '{name}'") as err:
            resolve_pretrained(name, "imagenet")
        assert "\n" not in str(err.value)
        path, note = resolve_pretrained(name, "auto")
        assert path is None and "random initialisation" in note
    with pytest.raises(MedDetError, match="no ImageNet weights"):
        build_backbone("shufflenet_v1", pretrained="imagenet")
    assert offline == []  # nothing to download, so nothing was tried


def test_auto_offline_falls_back_to_training_from_scratch(tmp_path, offline):
    det = build_detector("gfl_shufflenetv2", pretrained="auto").train()
    # Built as from scratch: nothing frozen, BatchNorm on batch statistics.
    assert all(p.requires_grad for p in det.backbone.parameters())
    assert all(bn.training for bn in det.backbone.modules() if isinstance(bn, nn.BatchNorm2d))
    note = det.pretrained_note
    assert note.startswith("shufflenet_v2: random initialisation") and "\n" not in note
    assert str(_checkpoints(tmp_path) / "shufflenetv2_x1-5666bf0f80.pth") in note
    assert len(offline) == 1


def test_none_forces_random_weights_even_when_cached(tmp_path, offline):
    _checkpoints(tmp_path).mkdir(parents=True)
    torch.save(torchvision.models.shufflenet_v2_x1_0(weights=None).state_dict(),
               _checkpoints(tmp_path) / "shufflenetv2_x1-5666bf0f80.pth")
    for spec in (None, "none", "None"):
        assert resolve_pretrained("shufflenet_v2", spec) == (
            None, "shufflenet_v2: random initialisation")
    det = build_detector("gfl_shufflenetv2", pretrained="none")
    assert all(p.requires_grad for p in det.backbone.parameters())
    assert det.pretrained_note == "shufflenet_v2: random initialisation"


def test_bad_specs():
    with pytest.raises(MedDetError, match="unknown backbone 'resnet18'"):
        resolve_pretrained("resnet18", "auto")
    with pytest.raises(MedDetError, match="does not exist"):
        resolve_pretrained("mobilenet_v2", "imagenet1k")


def test_download_checks_the_hash_in_the_file_name(tmp_path, monkeypatch):
    # The real download path, fed a file:// URL: torch.hub checks the name's sha256 prefix.
    if not SHARED_MBV2.is_file():
        pytest.skip(f"{SHARED_MBV2} absent")
    monkeypatch.setattr(torch.hub, "download_url_to_file", _HUB_DOWNLOAD)
    good = tmp_path / "a" / "mobilenet_v2-b0353104.pth"
    _DOWNLOAD(SHARED_MBV2.as_uri(), good)
    assert good.read_bytes() == SHARED_MBV2.read_bytes()
    bad = tmp_path / "b" / "mobilenet_v2-deadbeef.pth"
    with pytest.raises(RuntimeError, match="invalid hash"):
        _DOWNLOAD(SHARED_MBV2.as_uri(), bad)
    assert not bad.exists()


def test_no_network_is_tried_once_per_process(tmp_path, monkeypatch):
    """Offline, `auto` for the demo's four backbones waits on the network once, not four times
    (a hanging connection costs the download timeout each time)."""
    from urllib.error import URLError

    calls = []

    def unreachable(url, dst):
        calls.append(url)
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(pretrained, "_download", unreachable)
    notes = [resolve_pretrained(b, "auto") for b in ("resnet50", "resnet101", "mobilenet_v2")]
    assert len(calls) == 1 and all(w.path is None for w in notes)
    assert all("Name or service not known" in w.note for w in notes)
    # A failure of one file (a hash mismatch) is not taken for a missing network.
    monkeypatch.setattr(pretrained, "_FAILED_DOWNLOADS", {})

    def bad_hash(url, dst):
        calls.append(url)
        raise RuntimeError('invalid hash value (expected "b0353104", got "00000000")')

    monkeypatch.setattr(pretrained, "_download", bad_hash)
    resolve_pretrained("resnet50", "auto")
    resolve_pretrained("mobilenet_v2", "auto")
    assert len(calls) == 3
