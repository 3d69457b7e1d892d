"""MGD, FGD and LD losses: shapes, hand-computed values, invariants."""

import math

import pytest
import torch
import torch.nn.functional as F

from meddet.distill import FGDLoss, LDLoss, MGDLoss, ld_loss
from meddet.distill.baselines import box_masks, channel_attention, spatial_attention

SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def _feats(c=8, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, *hw, generator=g) for hw in SIZES]


# ---------------------------------------------------------------------------- MGD

def test_mgd_value_with_identity_generator():
    mgd = MGDLoss([4] * 5, [4] * 5, mask_ratio=0.0, alpha=1.0)
    for gen in mgd.generation:  # make G the identity: conv(relu(conv(x))) on x >= 0
        for conv in (gen[0], gen[2]):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
            with torch.no_grad():
                conv.weight[:, :, 1, 1] = torch.eye(4)
    s = [torch.rand(2, 4, *hw) for hw in SIZES]
    t = [x + 1 for x in s]
    # sum of squared errors (all ones) / batch
    expect = sum(4 * h * w for h, w in SIZES)
    assert mgd(s, t).item() == pytest.approx(expect)


def test_mgd_mask_ratio_and_channels():
    mgd = MGDLoss([8] * 5, [16] * 5)  # 1x1 align from 8 to 16 channels
    assert mgd(_feats(8), _feats(16, seed=1)).item() > 0
    mgd.alpha = 1.0
    s = [torch.ones(1, 16, 64, 64)]
    captured = {}
    mgd2 = MGDLoss([16], [16], mask_ratio=0.65, alpha=1.0)
    mgd2.generation[0] = torch.nn.Identity()
    mgd2.generation[0].register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0]))
    mgd2(s, [torch.zeros_like(s[0])], generator=torch.Generator().manual_seed(0))
    kept = captured["x"][0, 0].mean().item()
    assert kept == pytest.approx(0.35, abs=0.03)
    with pytest.raises(ValueError, match="spatial"):
        mgd2([torch.ones(1, 16, 4, 4)], [torch.ones(1, 16, 8, 8)])


# ---------------------------------------------------------------------------- FGD

def test_box_masks_by_hand():
    # 64 px input, 8x8 level (stride 8); box covers cells x 1..2, y 1..3 -> 6 cells
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 32.0]]), torch.zeros((0, 4))]
    fg, bg = box_masks(boxes, (64, 64), (8, 8))
    assert fg.shape == bg.shape == (2, 8, 8)
    assert fg[0, 1:4, 1:3].eq(1 / 6).all() and fg[0].sum().item() == pytest.approx(1.0)
    assert fg[1].sum() == 0
    assert bg[0].sum().item() == pytest.approx(1.0) and bg[0, 1:4, 1:3].eq(0).all()
    assert bg[1].eq(1 / 64).all()
    # overlapping boxes keep the larger weight; a tiny box still covers one cell
    boxes = [torch.tensor([[0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 8.0, 8.0], [40.0, 40.0, 41.0, 41.0]])]
    fg, bg = box_masks(boxes, (64, 64), (8, 8))
    assert fg[0, 0, 0] == 1.0 and fg[0, 5, 5] == 1.0 and fg[0, 3, 3] == 1 / 64
    assert bg[0].sum() == 0


def test_attention_by_hand():
    x = torch.zeros(1, 2, 1, 2)
    x[0, :, 0, 1] = 1.0  # location 1 is active in both channels
    sa = spatial_attention(x, temperature=0.5)
    e = math.exp(2.0)
    assert torch.allclose(sa, torch.tensor([[[2 / (1 + e), 2 * e / (1 + e)]]]))
    ca = channel_attention(x, temperature=0.5)
    assert torch.allclose(ca, torch.ones(1, 2))  # equal channels -> uniform, times C


def test_fgd_zero_on_identical_and_positive_otherwise():
    fgd = FGDLoss([8] * 5, [8] * 5)
    t = _feats()
    boxes = [torch.tensor([[10.0, 10.0, 60.0, 50.0]]), torch.tensor([[0.0, 0.0, 30.0, 30.0]])]
    out = fgd(t, t, boxes, (128, 128))
    assert set(out) == {"fea", "at", "global", "loss"}
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)
    s = [x.clone().requires_grad_(True) for x in _feats(seed=1)]
    out = fgd(s, t, boxes, (128, 128))
    assert all(out[k].item() > 0 for k in ("fea", "at", "global"))
    out["loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)


def test_fgd_feature_term_by_hand():
    fgd = FGDLoss([2], [2], alpha=1.0, beta=0.0, gamma=0.0, lam=0.0)
    t = torch.ones(1, 2, 2, 2)  # uniform attention: A_S = 1, A_C = 1
    s = torch.zeros(1, 2, 2, 2)
    # box covers one cell of the 2x2 grid (stride 16 on 32 px): weight 1, D = 1 per channel
    out = fgd([s], [t], [torch.tensor([[0.0, 0.0, 16.0, 16.0]])], (32, 32))
    assert out["fea"].item() == pytest.approx(2.0)


# ----------------------------------------------------------------------------- LD

def test_ld_kl_by_hand():
    reg_max = 1  # two bins per edge
    s = torch.zeros(1, 8)  # uniform student
    t = torch.tensor([[math.log(3.0), 0.0] * 4])  # teacher (3/4, 1/4) at T = 1
    p = torch.tensor([0.75, 0.25])
    kl = (p * (p.log() - math.log(0.5))).sum().item()
    got = ld_loss(s, t, reg_max=reg_max, temperature=1.0).item()
    assert got == pytest.approx(kl / 2)  # averaged over the two bins
    # the temperature softens the teacher and multiplies by T^2
    pt = F.softmax(torch.tensor([math.log(3.0), 0.0]) / 10, dim=0)
    kl10 = (pt * (pt.log() - math.log(0.5))).sum().item()
    assert ld_loss(s, t, reg_max=reg_max, temperature=10.0).item() == pytest.approx(kl10 / 2 * 100, rel=1e-4)


def test_ld_invariants():
    torch.manual_seed(0)
    t = torch.randn(5, 68)
    assert ld_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 68, requires_grad=True)
    loss = LDLoss()(s, t)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(0.25 * ld_loss(s, t).item())
    loss.backward()
    assert s.grad is not None
    empty = torch.zeros(0, 68, requires_grad=True)
    z = ld_loss(empty, torch.zeros(0, 68))
    assert z.item() == 0 and z.requires_grad
    w = torch.tensor([1.0, 0, 0, 0, 0])
    assert ld_loss(s, t, weight=w).item() == pytest.approx(ld_loss(s[:1], t[:1]).item() / 5)
    with pytest.raises(ValueError, match="differ"):
        ld_loss(s, t[:, :34])


def test_ld_mask_equals_gathered_positives():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(30, 4 * 17, generator=g, requires_grad=True)
    t = torch.randn(30, 4 * 17, generator=g)
    mask = torch.rand(30, generator=g) < 0.3
    assert 0 < int(mask.sum()) < 30
    gathered = ld_loss(s[mask], t[mask])
    masked = ld_loss(s, t, mask=mask)
    torch.testing.assert_close(masked, gathered, rtol=1e-6, atol=0)
    (g1,) = torch.autograd.grad(gathered, s)
    (g2,) = torch.autograd.grad(masked, s)
    torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-9)
    assert g2[~mask].abs().max() == 0  # locations outside the mask get no gradient
    # No location kept: exactly 0, still part of the graph.
    none = LDLoss()(s, t, mask=torch.zeros(30, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
