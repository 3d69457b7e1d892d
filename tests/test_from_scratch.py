"""The options for training from random weights: each pinned against an independent value."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from meddet.config import load_config
from meddet.engine.defaults import model_overrides
from meddet.errors import MedDetError
from meddet.models import build_detector
from meddet.models.box_ops import distance2bbox, integral
from meddet.models.fpn import FPN
from meddet.models.gfl_head import GFLHead, distance_prior_logits
from meddet.models.nmode import NmODE2, ResidualNmODE


def _targets(batch: int = 2) -> list[dict[str, torch.Tensor]]:
    # Two disc-sized objects (26x12 and 20x8 px) in a 128 px crop, as in the diagnosis.
    boxes = torch.tensor([[30.0, 40.0, 56.0, 52.0], [70.0, 90.0, 90.0, 98.0]])
    return [{"boxes": boxes, "labels": torch.tensor([0, 1])} for _ in range(batch)]


def test_residual_nmode_is_the_identity_at_start_and_adds_the_gated_response():
    from scipy.integrate import solve_ivp

    block = ResidualNmODE(3)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    assert torch.equal(block(x), x)
    # Φ(0): y(1) of dy/dt = -y + sin²(y + cos²(y)), y(0) = 0, by scipy (RK45, tight tolerance);
    # the block's fixed-step RK4 (step 0.25) agrees to its truncation error.
    ref = solve_ivp(lambda t, y: -y + math.sin(y[0] + math.cos(y[0]) ** 2) ** 2, (0, 1), [0.0],
                    rtol=1e-10, atol=1e-12).y[0, -1]
    assert block.phi0 == pytest.approx(ref, abs=1e-5)
    with torch.no_grad():
        block.alpha.copy_(torch.tensor([0.0, 1.0, -2.0]))
    phi = NmODE2()(x)
    want = x + torch.tensor([0.0, 1.0, -2.0], dtype=x.dtype).view(1, 3, 1, 1) * (phi - block.phi0)
    torch.testing.assert_close(block(x), want)
    # A zero input stays zero whatever the gates.
    assert torch.equal(block(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_residual_nmode_gates_learn_from_zero():
    block = ResidualNmODE(4)
    x = torch.randn(2, 4, 3, 3)
    block(x).square().sum().backward()
    assert block.alpha.grad is not None and bool((block.alpha.grad.abs() > 0).all())
    with pytest.raises(ValueError, match="expects"):
        block(torch.randn(2, 5, 3, 3))


def _gauss_mean(mean: float, reg_max: int = 16) -> float:
    w = [math.exp(-0.5 * (k - mean) ** 2) for k in range(reg_max + 1)]
    return sum(k * x for k, x in enumerate(w)) / sum(w)


def test_distance_prior_sets_the_initial_expected_distance():
    for mean in (0.0, 1.0, 2.5, 8.0):
        p = distance_prior_logits(16, mean).softmax(0)
        expected = float((p * torch.arange(17.0)).sum())
        assert expected == pytest.approx(_gauss_mean(mean), abs=1e-5)
        # Away from the ends the Gaussian is symmetric, so its mean is the centre; near 0 the
        # cut at bin 0 shifts it up (1 -> 1.13).
        if 3 <= mean <= 13:
            assert expected == pytest.approx(mean, abs=1e-3)
    assert 1.0 < _gauss_mean(1.0) < 1.2
    with pytest.raises(ValueError, match="strides"):
        distance_prior_logits(16, 17.0)


def test_head_starts_with_small_boxes_with_a_prior_and_large_ones_without():
    torch.manual_seed(0)
    feats = [torch.randn(1, 32, s, s) for s in (16, 8, 4, 2, 1)]
    for prior, want in ((None, 8.0), (1.0, _gauss_mean(1.0))):
        head = GFLHead(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=1,
                       norm_groups=8, reg_prior=prior)
        _, reg = head(feats)
        dist = integral(reg[0].detach().flatten(2).transpose(1, 2), 16)  # [1, A, 4] strides
        assert float(dist.mean()) == pytest.approx(want, abs=0.1)


def test_residual_form_leaves_the_head_output_unchanged_at_start():
    torch.manual_seed(0)
    feats = [torch.randn(2, 32, s, s) for s in (16, 8, 4, 2, 1)]
    kw = dict(num_classes=2, in_channels=32, feat_channels=32, stacked_convs=2, norm_groups=8)
    torch.manual_seed(1)
    plain = GFLHead(nmode=False, **kw)
    torch.manual_seed(1)
    res = GFLHead(nmode=True, nmode_form="residual", **kw)
    for head in (plain, res):
        head.train()
    out_plain, out_res = plain(feats), res(feats)
    for a, b in zip(out_plain[0] + out_plain[1], out_res[0] + out_res[1]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="nmODE form"):
        GFLHead(nmode=True, nmode_form="other", **kw)


def test_fpn_groupnorm_normalises_every_output_and_drops_conv_bias():
    torch.manual_seed(0)
    fpn = FPN([16, 32, 64], out_channels=64, norm="gn")
    convs = [m for m in fpn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    outs = fpn([torch.randn(2, 16, 16, 16) * 5 + 3, torch.randn(2, 32, 8, 8),
                torch.randn(2, 64, 4, 4)])
    # GroupNorm at its initial affine (1, 0): every group of every output is zero-mean.
    for o in outs:
        g = o.reshape(2, 32, -1)
        torch.testing.assert_close(g.mean(-1), torch.zeros(2, 32), atol=1e-5, rtol=0)
    with pytest.raises(MedDetError, match="FPN norm"):
        FPN([16], out_channels=64, norm="bn")


def _positives(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                 torch.Tensor, torch.Tensor]:
    """The model's losses on a fixed batch, and per positive (recomputed independently of
    ``GFLDetector.loss``) the decoded box, its object's box (stride units) and its weight."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 128, 128)
    targets = _targets()
    losses = model(images, targets)
    _, cls, reg = model.forward_raw(images)
    asg = model.assign(cls, targets)
    cls_flat, reg_flat = model.flatten_outputs(cls, reg)
    stride = asg.strides[:, None]
    boxes = distance2bbox(asg.points / stride, integral(reg_flat, model.reg_max))
    pos = asg.pos_mask
    weight = cls_flat.sigmoid().amax(-1)[pos]
    return losses, boxes[pos].detach(), (asg.boxes / stride)[pos], weight.detach()


@pytest.mark.parametrize("norm", ["mmdet", "mean"])
def test_box_loss_norm_and_positive_iou_against_an_independent_computation(norm):
    from torchvision.ops import generalized_box_iou_loss

    torch.manual_seed(0)
    model = build_detector("gfl_mbv2", box_loss_norm=norm, reg_prior=1.0).train()
    losses, pred, tgt, weight = _positives(model)
    iou = torch.stack([box_iou(p[None], t[None])[0, 0] for p, t in zip(pred, tgt)])
    # pos_iou is the plain mean IoU of the positives (torchvision's box_iou here).
    assert float(losses["pos_iou"]) == pytest.approx(float(iou.mean()), rel=1e-4)
    # GIoU normalised by the weight sum, floored at 1 for mmdet: at initialisation the
    # weights (scores) are ~0.01 each, so the floor is what applies and the term is ~100x
    # smaller than the weighted mean.
    assert float(weight.sum()) < 1.0
    giou = generalized_box_iou_loss(pred, tgt)
    denom = max(float(weight.sum()), 1.0) if norm == "mmdet" else float(weight.sum())
    assert float(losses["loss_giou"]) == pytest.approx(float((giou * weight).sum()) / denom,
                                                       rel=1e-4)


def test_atss_topk_gives_more_positives():
    # A large object (many location centres inside it): ATSS keeps the candidates whose IoU
    # clears mean + sd of the top-k per level, so more candidates give more positives. (For
    # the thin discs the centre-inside-the-box rule is what limits them.)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 120.0, 100.0]]), "labels": torch.tensor([0])}]
    counts = {}
    for k in (9, 15):
        torch.manual_seed(0)
        model = build_detector("gfl_mbv2", atss_topk=k).train()
        assert model.assigner.topk == k
        counts[k] = float(model(torch.randn(1, 3, 128, 128), targets)["num_pos"])
    assert counts[15] > counts[9] >= 2


def test_config_keys_reach_the_detector_and_survive_a_state_dict_round_trip():
    cfg = load_config("cpu-crop", {"model": {"name": "meddet", "nmode_form": "residual",
                                             "reg_prior": 1.0, "box_loss_norm": "mean",
                                             "fpn_norm": "gn", "atss_topk": 12}})
    over = model_overrides(cfg)
    torch.manual_seed(0)
    a = build_detector("meddet", **over)
    assert isinstance(a.head.reg_nmode, ResidualNmODE) and a.neck.norm == "gn"
    assert a.box_loss_norm == "mean" and a.assigner.topk == 12
    b = build_detector("meddet", **over)
    b.load_state_dict(a.state_dict(), strict=True)
    with pytest.raises(MedDetError, match="nmode_form"):
        load_config(None, {"model": {"nmode_form": "other"}})
    with pytest.raises(MedDetError, match="box_loss_norm"):
        build_detector("gfl_mbv2", box_loss_norm="sum")


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    from torchvision.models.mobilenetv2 import InvertedResidual

    from meddet.models.backbones import build_backbone, zero_init_residual

    mb = build_backbone("mobilenet_v2", frozen_stages=-1, norm_eval=False)
    # MobileNetV2's settings (t, c, n, s) give skip connections to n - 1 blocks of each
    # setting, plus none for the first: 0 + 1 + 2 + 3 + 2 + 2 + 0 = 10.
    assert zero_init_residual(mb) == 10
    blocks = [m for m in mb.modules() if isinstance(m, InvertedResidual) and m.use_res_connect]
    x = torch.randn(2, blocks[0].conv[-1].num_features, 8, 8)
    assert torch.equal(blocks[0](x), x)
    # A ResNet-18 (torchvision's, cheaper to build than the teachers'): 2 + 2 + 2 + 2 blocks.
    import torchvision

    assert zero_init_residual(torchvision.models.resnet18()) == 8
    torch.manual_seed(0)
    model = build_detector("gfl_mbv2", zero_init_residual=True)
    assert all(float(b.conv[-1].weight.abs().sum()) == 0 for b in model.backbone.modules()
               if isinstance(b, InvertedResidual) and b.use_res_connect)


def test_residual_init_starts_the_residual_branches_at_a_given_scale():
    from torchvision.models.mobilenetv2 import InvertedResidual

    def scales(model):
        return {float(v) for b in model.backbone.modules()
                if isinstance(b, InvertedResidual) and b.use_res_connect
                for v in b.conv[-1].weight}

    torch.manual_seed(0)
    assert scales(build_detector("gfl_mbv2", residual_init=0.25)) == {0.25}
    # It takes precedence over zero_init_residual; unset, the blocks keep BatchNorm's 1.
    assert scales(build_detector("gfl_mbv2", zero_init_residual=True, residual_init=0.5)) == {0.5}
    assert scales(build_detector("gfl_mbv2")) == {1.0}


def test_qfl_beta_reaches_the_detector_loss():
    from meddet.models.losses import quality_focal_loss

    assert build_detector("gfl_mbv2").qfl_beta == 2.0
    model = build_detector("gfl_mbv2", qfl_beta=1.0)
    assert model.qfl_beta == 1.0
    # A wrong class at σ = 0.1 (target 0): β = 1 weighs its BCE by 0.1, β = 2 by 0.01.
    logit = torch.logit(torch.tensor([[0.1, 0.1]]))
    labels, scores = torch.tensor([0]), torch.tensor([0.0])
    bce = -math.log(0.9)
    assert quality_focal_loss(logit, labels, scores, beta=1.0).item() == pytest.approx(2 * 0.1 * bce)
    assert quality_focal_loss(logit, labels, scores, beta=2.0).item() == pytest.approx(2 * 0.01 * bce)
