"""meddet.distill building blocks: AFA, fusions, AATM, eq. 13/14 and the non-collapse guard."""

import math

import pytest
import torch
from torch import nn

from meddet.distill import (
    AFA,
    LWFF,
    ConcatFusion,
    Discriminator,
    Generator,
    LevelwiseFusion,
    MedDetDistiller,
    SumFusion,
    TeacherAligner,
    build_fusion,
    check_loss_weights,
    discriminator_loss,
    feature_distill_loss,
    generator_loss,
    standardize,
    total_loss,
)
from meddet.errors import MedDetError

SIZES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # P3..P7 of a 128 px input


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("c_in,h_in,w_in", [(256, 32, 32), (64, 7, 9), (16, 3, 3), (8, 1, 1)])
@pytest.mark.parametrize("c_out,h_out,w_out", [(256, 16, 16), (32, 5, 4), (8, 8, 8)])
def test_afa_any_shape(c_in, h_in, w_in, c_out, h_out, w_out):
    afa = AFA(c_in, c_out)
    y = afa(torch.randn(2, c_in, h_in, w_in), (h_out, w_out))
    assert y.shape == (2, c_out, h_out, w_out)


def test_afa_identity_start_and_max_pooling():
    afa = AFA(4, 4)
    x = torch.randn(1, 4, 4, 4)
    assert torch.equal(afa(x, (4, 4)), x)
    # a teacher run at twice the student's size: 2x2 max pooling
    expect = torch.nn.functional.max_pool2d(x, 2)
    assert torch.allclose(afa(x, (2, 2)), expect)


def test_teacher_aligner_levels():
    t_ch = [[16] * 5, [32] * 5, [8] * 5]
    aligner = TeacherAligner(t_ch, [16] * 5)
    feats = [[torch.randn(2, c, 2 * h, 2 * w) for c, (h, w) in zip(chans, SIZES)] for chans in t_ch]
    out = aligner(feats, SIZES)
    assert len(out) == 3 and all(
        o.shape == (2, 16, *hw) for per_t in out for o, hw in zip(per_t, SIZES))
    with pytest.raises(ValueError, match="teacher"):
        TeacherAligner([[16] * 4], [16] * 5)


@pytest.mark.parametrize("kind", ["lwff", "sum", "concat"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fusion_shapes(kind, n):
    fuse = build_fusion(kind, channels=8, num_teachers=n)
    feats = [torch.randn(2, 8, 5, 6) for _ in range(n)]
    assert fuse(feats).shape == (2, 8, 5, 6)
    with pytest.raises(ValueError, match="teachers"):
        fuse(feats + [feats[0]])


def test_fusion_values_and_options():
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    assert torch.allclose(SumFusion(2)([a, b]), a + b)
    assert torch.allclose(ConcatFusion(4, 2)([a, b]), (a + b) / 2, atol=1e-6)  # mean at start
    lwff = LWFF(4, 2)
    assert len(lwff.alphas) == 1
    assert torch.allclose(lwff([a, b]), 0.5 * (a + b) / 2, atol=1e-6)  # α = 0.5 at start
    assert len(LWFF(4, 3, per_teacher_alpha=True).alphas) == 3
    with pytest.raises(ValueError, match="unknown fusion"):
        build_fusion("max", channels=4, num_teachers=2)
    lvl = LevelwiseFusion("lwff", channels=[4] * 5, num_teachers=2)
    out = lvl([[torch.randn(1, 4, *hw) for hw in SIZES] for _ in range(2)])
    assert [tuple(o.shape[-2:]) for o in out] == SIZES


@pytest.mark.parametrize("mode", ["pixel", "global"])
def test_aatm_shapes_all_levels(mode):
    g, d = Generator(16), Discriminator(16, hidden=8, mode=mode)
    for h, w in SIZES:
        x = torch.randn(2, 16, h, w)
        assert g(x).shape == x.shape
        assert d(x).shape == ((2, 1, h, w) if mode == "pixel" else (2, 1, 1, 1))
    feats = [torch.randn(2, 16, *hw) for hw in SIZES]
    assert discriminator_loss(d, feats, feats).dtype == torch.float32


def test_bce_values_at_chance():
    d = Discriminator(4, hidden=4)
    for p in d.net[-1].parameters():
        nn.init.zeros_(p)  # logit 0 everywhere
    feats = [torch.randn(1, 4, *hw) for hw in SIZES]
    assert discriminator_loss(d, feats, feats).item() == pytest.approx(2 * 5 * math.log(2))
    assert generator_loss(d, feats).item() == pytest.approx(5 * math.log(2))


def test_discriminator_loss_falls_on_separable_inputs():
    torch.manual_seed(0)
    d = Discriminator(8, hidden=16)
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    shift = torch.zeros(1, 8, 1, 1)
    shift[:, 0] = 3.0  # real features live on one side along channel 0
    losses = []
    for _ in range(150):
        real = [torch.randn(4, 8, *hw) + shift for hw in SIZES]
        fake = [torch.randn(4, 8, *hw) - shift for hw in SIZES]
        loss = discriminator_loss(d, real, fake)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 5.0  # near chance (6.93)
    assert sum(losses[-10:]) / 10 < 0.2 * losses[0]


def test_standardize_and_feature_loss_by_hand():
    x = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    assert torch.allclose(standardize(x, eps=0), torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2))
    # constant channel (1x1 level, batch 1) -> zeros, never NaN
    assert torch.equal(standardize(torch.full((1, 3, 1, 1), 5.0)), torch.zeros(1, 3, 1, 1))
    t = [torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 1, 1)]
    p = [torch.ones(1, 2, 2, 2), torch.full((1, 2, 1, 1), 3.0)]
    # mean squared difference per level, summed: 1 + 4
    assert feature_distill_loss(t, p, normalize=False).item() == pytest.approx(5.0)
    # scale and shift invariance of the normalised loss, and independence of the image size
    a = torch.randn(2, 4, 8, 8)
    assert feature_distill_loss([a], [3 * a + 1]).item() == pytest.approx(0.0, abs=1e-5)
    small = feature_distill_loss([a], [torch.randn(2, 4, 8, 8)]).item()
    big = feature_distill_loss([torch.randn(2, 4, 64, 64)], [torch.randn(2, 4, 64, 64)]).item()
    assert small == pytest.approx(2.0, rel=0.2) and big == pytest.approx(2.0, rel=0.05)


def test_total_loss_eq14_and_validation():
    one = torch.tensor(1.0)
    out = total_loss(torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0), sigma=0.5, tau=0.3)
    assert out.item() == pytest.approx(0.5 * 2 + 0.3 * 3 + 0.2 * 5)
    assert total_loss(one, one, one, sigma=0.6, tau=0.4).item() == pytest.approx(1.0)
    check_loss_weights(0.0, 0.0)
    with pytest.raises(MedDetError, match="sigma \\+ tau must be <= 1"):
        check_loss_weights(0.8, 0.5)
    with pytest.raises(MedDetError, match=">= 0"):
        check_loss_weights(-0.1, 0.5)


def _toy_problem(seed=0, c=8, n_teachers=3):
    g = torch.Generator().manual_seed(seed)
    sizes = [(8, 8), (4, 4), (2, 2), (2, 2), (1, 1)]
    teachers = [nn.Conv2d(4, c, 1) for _ in range(n_teachers)]
    for t in teachers:
        t.requires_grad_(False)
    student = nn.Conv2d(4, c, 3, padding=1)

    def batch():
        x = [torch.randn(4, 4, *hw, generator=g) for hw in sizes]
        return x, [[torch.tanh(t(xi)) for xi in x] for t in teachers]

    return sizes, teachers, student, batch


def _fused_variance(distiller, teacher_feats, sizes):
    with torch.no_grad():
        fused = distiller.fused_target(teacher_feats, sizes)
    return torch.stack([f.var() for f in fused]).mean().item()


def test_fused_target_does_not_collapse():
    """300 steps of the full objective on random features: the fused target keeps its variance,
    while the naive design (target trained through an unnormalised L_dist) collapses."""
    torch.manual_seed(0)
    sizes, _, student, batch = _toy_problem()
    d = MedDetDistiller(teacher_channels=[[8] * 5] * 3, student_channels=[8] * 5, disc_hidden=16)
    opt = torch.optim.SGD([*student.parameters(), *d.student_side_parameters()], lr=0.01,
                          momentum=0.9, weight_decay=1e-4)
    d_opt = torch.optim.Adam(list(d.teacher_side_parameters()), lr=1e-4)
    _, probe = batch()
    v0 = _fused_variance(d, probe, sizes)
    fusion_before = [p.detach().clone() for p in d.fusion.parameters()]
    for _ in range(300):
        x, tf = batch()
        out = d([student(xi) for xi in x], tf)
        loss = total_loss(out["dist"].new_zeros(()), out["dist"], out["adv"], sigma=0.0, tau=0.5)
        opt.zero_grad()
        d_opt.zero_grad()
        (loss + out["disc"]).backward()
        opt.step()
        d_opt.step()
    v1 = _fused_variance(d, probe, sizes)
    assert 0.5 < v1 / v0 < 4.0
    # the fusion did train (through the adversarial term), it was not merely frozen
    assert any(not torch.equal(a, b) for a, b in zip(fusion_before, d.fusion.parameters()))

    # Contrast: the naive design shrinks the target (so the guard above is what matters).
    torch.manual_seed(0)
    sizes, _, student, batch = _toy_problem()
    naive = MedDetDistiller(teacher_channels=[[8] * 5] * 3, student_channels=[8] * 5,
                            disc_hidden=16)
    opt = torch.optim.SGD([*student.parameters(), *naive.student_side_parameters(),
                           *naive.aligner.parameters(), *naive.fusion.parameters()], lr=0.01,
                          momentum=0.9, weight_decay=1e-4)
    _, probe = batch()
    v0 = _fused_variance(naive, probe, sizes)
    for _ in range(300):
        x, tf = batch()
        fused = naive.fused_target(tf, sizes)
        preds = [naive.generator(student(xi)) for xi in x]
        loss = feature_distill_loss(fused, preds, normalize=False)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _fused_variance(naive, probe, sizes) / v0 < 0.3


def test_distiller_gradient_routing():
    """L_dist/L_adv reach the student and G only; D's BCE reaches D and the fusion only."""
    torch.manual_seed(0)
    _sizes, teachers, student, batch = _toy_problem(n_teachers=2)
    d = MedDetDistiller(teacher_channels=[[8] * 5] * 2, student_channels=[8] * 5, disc_hidden=8)
    x, tf = batch()
    out = d([student(xi) for xi in x], tf)

    def grads(loss):
        for p in [*student.parameters(), *d.parameters()]:
            p.grad = None
        loss.backward(retain_graph=True)
        return {
            "student": any(p.grad is not None for p in student.parameters()),
            "G": any(p.grad is not None for p in d.generator.parameters()),
            "fusion": any(p.grad is not None for p in
                          [*d.fusion.parameters(), *d.aligner.parameters()]),
            "D": any(p.grad is not None for p in d.discriminator.parameters()),
        }

    assert grads(out["dist"]) == {"student": True, "G": True, "fusion": False, "D": False}
    assert grads(out["adv"]) == {"student": True, "G": True, "fusion": False, "D": False}
    assert grads(out["disc"]) == {"student": False, "G": False, "fusion": True, "D": True}
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_distiller_without_aatm_and_shapes():
    d = MedDetDistiller(teacher_channels=[[8] * 5, [16] * 5], student_channels=[8] * 5,
                        aatm=False, fusion="concat")
    s = [torch.randn(2, 8, *hw, requires_grad=True) for hw in SIZES]
    tf = [[torch.randn(2, c, 2 * h, 2 * w) for (h, w) in SIZES] for c in (8, 16)]
    out = d(s, tf)
    assert out["dist"].item() > 0 and out["adv"].item() == 0 and out["disc"].item() == 0
    assert list(d.teacher_side_parameters()) == [] and list(d.student_side_parameters()) == []


def test_split_clock_on_cpu_sums_its_steps():
    import time

    from meddet.distill.trainer import SplitClock

    clock = SplitClock(torch.device("cpu"), ("a", "b"))
    for _ in range(2):
        clock.mark()
        time.sleep(0.02)
        clock.mark()
        clock.mark()
    clock.mark()  # a step in progress is not counted
    steps = clock.collect()
    assert len(steps) == 2 and clock.collect() == []
    clock.mark(start=True)  # ...and a new start drops it: marks stay aligned to steps
    time.sleep(0.02)
    clock.mark()
    clock.mark()
    steps += clock.collect()
    assert len(steps) == 3
    assert all(s["a"] >= 0.02 and 0 <= s["b"] < 0.02 for s in steps)
    total = clock.totals()
    assert total["a"] == pytest.approx(sum(s["a"] for s in steps))
    assert total["b"] == pytest.approx(sum(s["b"] for s in steps))
