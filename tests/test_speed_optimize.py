"""Inference path: BatchNorm folding, the optimized copy's detections, the stage profile."""

import pytest
import torch
from torch import nn

from meddet.benchmark import profile_stages
from meddet.models import build_detector, optimize_for_inference
from meddet.models.fuse import fold_batchnorm
from meddet.models.nmode import NmODE2


def _randomise_bn(model: nn.Module) -> None:
    # Fresh BatchNorms are the identity (mean 0, var 1); random statistics test the folding.
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.rand(n, generator=g) - 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.2 * torch.rand(n, generator=g) - 0.1)


def test_fold_batchnorm_sequential_and_attributes():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    _randomise_bn(seq)
    seq.eval()
    x = torch.randn(2, 3, 8, 8)
    ref = seq(x)
    assert fold_batchnorm(seq) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in seq.modules())
    torch.testing.assert_close(seq(x), ref, rtol=1e-5, atol=1e-5)
    # Training-mode BatchNorm (batch statistics) is never folded.
    train_seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert fold_batchnorm(train_seq) == 0


@pytest.mark.parametrize("name", ["meddet", "gfl_shufflenet", "meddet_lite"])
def test_optimized_detections_equal_original(name):
    torch.manual_seed(0)
    model = build_detector(name, score_thr=0.0).eval()  # thr 0: top-k and NMS get exercised
    _randomise_bn(model)
    opt = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched
    if name in ("meddet", "meddet_lite"):
        assert opt.head.cls_nmode.solver == "table" and model.head.cls_nmode.solver == "fused"
    # meddet_lite runs channels_last once optimized (measured faster); the others do not.
    assert opt.channels_last == (name == "meddet_lite") and not model.channels_last
    w = opt.neck.fpn_convs[0].weight  # [C, C, 3, 3]: the formats differ
    assert w.is_contiguous(memory_format=torch.channels_last) == (name == "meddet_lite")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        _, c0, r0 = model.forward_raw(x)
        _, c1, r1 = opt.forward_raw(x)
        d0, d1 = model(x)[0], opt(x)[0]
    for a, b in zip(c0 + r0, c1 + r1):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)
    assert d0["boxes"].shape == d1["boxes"].shape
    torch.testing.assert_close(d1["scores"], d0["scores"], rtol=0, atol=1e-4)
    torch.testing.assert_close(d1["boxes"], d0["boxes"], rtol=0, atol=1e-3)
    assert torch.equal(d1["labels"], d0["labels"])


def test_optimize_options():
    model = build_detector("meddet").eval()
    exact = optimize_for_inference(model, nmode_solver="fused", fold_bn=False)
    assert exact.head.reg_nmode.solver == "fused"
    assert any(isinstance(m, nn.BatchNorm2d) for m in exact.modules())
    assert not any(p.requires_grad for p in exact.parameters())
    with pytest.raises(ValueError, match="nmode_solver"):
        optimize_for_inference(model, nmode_solver="fast")


def test_profile_stages_covers_every_stage():
    model = optimize_for_inference(build_detector("meddet").eval())
    prof = profile_stages(model, torch.randn(1, 3, 64, 64), warmup=0, iters=1)
    assert set(prof) == {"backbone", "neck", "head", "nmode", "postprocess"}
    assert all(v >= 0 for v in prof.values()) and prof["nmode"] > 0
    assert isinstance(model.head.cls_nmode, NmODE2)
    # Hooks are removed afterwards.
    assert not model.head.cls_nmode._forward_hooks
