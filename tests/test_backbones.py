"""Backbones: every registry entry builds offline, reports its real channels and strides, and
freezes what it says it freezes."""

import pytest
import torch
import torchvision
from torch import nn

from meddet.errors import MedDetError
from meddet.models.backbones import BACKBONES, build_backbone


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    # Tests must never fetch weights: make any attempt fail loudly instead of hanging.
    def forbidden(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _bns(m: nn.Module) -> list[nn.BatchNorm2d]:
    return [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_builds_with_declared_shapes_and_frozen_stages(name):
    # One build per entry (ResNet-152 alone takes a second to initialise).
    torch.manual_seed(0)
    m = build_backbone(name, frozen_stages=1, norm_eval=True)
    stem, stage1, later = m._stages[0], m._stages[1], m._stages[2:]
    assert all(not p.requires_grad for p in stem.parameters())
    assert all(not p.requires_grad for p in stage1.parameters())
    convs = [x for s in later for x in s.modules() if isinstance(x, nn.Conv2d)]
    assert convs and all(c.weight.requires_grad for c in convs)
    for bn in _bns(m):
        assert not bn.weight.requires_grad and not bn.bias.requires_grad
    m.train()
    assert m.training
    assert all(not bn.training for bn in _bns(m))

    m.eval()
    assert len(m.out_channels) == len(m.strides) == 3
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 128, 128))
    assert len(outs) == 3
    for out, c, s in zip(outs, m.out_channels, m.strides):
        assert tuple(out.shape) == (1, c, 128 // s, 128 // s)


def test_norm_eval_freezes_running_statistics():
    m = build_backbone("shufflenet_v2", norm_eval=True).train()
    bn = _bns(m)[-1]
    before = bn.running_mean.clone()
    m(torch.randn(2, 3, 64, 64))
    assert torch.equal(bn.running_mean, before)
    m = build_backbone("shufflenet_v2", norm_eval=False).train()
    bn = _bns(m)[-1]
    before = bn.running_mean.clone()
    m(torch.randn(2, 3, 64, 64))
    assert not torch.equal(bn.running_mean, before)


def test_nothing_frozen_when_disabled():
    m = build_backbone("mobilenet_v2", frozen_stages=-1, norm_eval=False).train()
    assert all(p.requires_grad for p in m.parameters())
    assert all(bn.training for bn in _bns(m))
    m.eval()
    assert all(not bn.training for bn in _bns(m))


def test_frozen_stage_stays_eval_without_norm_eval():
    m = build_backbone("resnet50", frozen_stages=0, norm_eval=False).train()
    assert not m.bn1.training
    assert m.layer1[0].bn1.training and m.layer1[0].conv1.weight.requires_grad


def test_parameter_counts():
    # torchvision classifiers: ResNet-50 fc 2048*1000+1000, MobileNetV2 1280*1000+1000.
    r50 = build_backbone("resnet50")
    assert _params(r50) == _params(torchvision.models.resnet50()) - (2048 * 1000 + 1000)
    assert _params(r50) / 1e6 == pytest.approx(23.51, abs=0.01)
    mbv2 = build_backbone("mobilenet_v2")
    assert _params(mbv2) == _params(torchvision.models.mobilenet_v2().features)
    assert _params(mbv2) / 1e6 == pytest.approx(2.22, abs=0.01)


def test_declared_channels():
    assert build_backbone("mobilenet_v2").out_channels == (32, 96, 1280)
    assert build_backbone("mobilenet_v2_1.4").out_channels == (48, 136, 1792)
    assert build_backbone("shufflenet_v1").out_channels == (240, 480, 960)
    assert build_backbone("shufflenet_v2").out_channels == (116, 232, 464)
    assert build_backbone("efficientnet_b1").out_channels == (40, 112, 320)


def test_nmode_option_adds_no_parameters():
    plain = build_backbone("shufflenet_v2")
    with_ode = build_backbone("shufflenet_v2", nmode=True).eval()
    assert _params(with_ode) == _params(plain)
    with torch.no_grad():
        outs = with_ode(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == list(with_ode.out_channels)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(MedDetError) as err:
        build_backbone("resnet18")
    for name in BACKBONES:
        assert name in str(err.value)


def test_local_state_dict_roundtrip(tmp_path):
    src = build_backbone("shufflenet_v1")
    path = tmp_path / "w.pt"
    torch.save({"backbone." + k: v for k, v in src.state_dict().items()}, path)
    dst = build_backbone("shufflenet_v1", pretrained=str(path))
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_local_weights(tmp_path):
    with pytest.raises(MedDetError, match="does not exist"):
        build_backbone("mobilenet_v2", pretrained=str(tmp_path / "nope.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save(build_backbone("shufflenet_v2").state_dict(), wrong)
    with pytest.raises(MedDetError, match="does not match"):
        build_backbone("mobilenet_v2", pretrained=str(wrong))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(MedDetError, match="cannot load"):
        build_backbone("mobilenet_v2", pretrained=str(junk))


def test_bad_frozen_stages():
    with pytest.raises(MedDetError, match="frozen_stages"):
        build_backbone("resnet50", frozen_stages=5)
