"""nmODE / nmODE² blocks: accuracy against an independent solver, the unrolled path, gradients,
dtype handling under autocast and option validation."""

import math

import numpy as np
import pytest
import torch

from meddet.errors import MedDetError
from meddet.models.nmode import NmODE, NmODE2

scipy_integrate = pytest.importorskip("scipy.integrate")

GAMMAS = np.array([-3.0, -1.0, -0.2, 0.0, 0.5, 1.0, 2.5, 6.0])


def _rhs2(y, g):
    return -y + np.sin(y + np.cos(y + g) ** 2) ** 2


def _rhs1(y, g):
    return -y + np.sin(y + g) ** 2


def _reference(rhs, T=1.0):
    """y(T) from scipy's DOP853 at rtol 1e-10: independent of torchdiffeq and of our code."""
    out = []
    for g in GAMMAS:
        sol = scipy_integrate.solve_ivp(lambda t, y, g=g: rhs(y, g), (0.0, T), [0.0],
                                        method="DOP853", rtol=1e-10, atol=1e-12)
        out.append(sol.y[0, -1])
    return np.array(out)


@pytest.fixture(scope="module")
def ref2():
    return _reference(_rhs2)


@pytest.fixture(scope="module")
def ref1():
    return _reference(_rhs1)


@pytest.mark.parametrize(
    "kwargs, dtype, tol",
    [
        # 4 steps of a 4th-order method on a smooth, contracting ODE: global error ~1e-5.
        ({}, torch.float32, 5e-5),
        ({"solver": "torchdiffeq"}, torch.float32, 5e-5),
        ({"unrolled": True}, torch.float32, 5e-5),
        # error ~ h^4: step 0.05 is 625x smaller than step 0.25.
        ({"step_size": 0.05}, torch.float64, 1e-7),
        ({"method": "dopri5", "rtol": 1e-9, "atol": 1e-10}, torch.float64, 1e-8),
    ],
)
def test_nmode2_matches_scipy(ref2, kwargs, dtype, tol):
    y = NmODE2(**kwargs)(torch.tensor(GAMMAS, dtype=dtype))
    assert y.dtype == dtype
    np.testing.assert_allclose(y.double().numpy(), ref2, rtol=0, atol=tol)


def test_first_order_nmode_matches_scipy(ref1):
    # sin²(y + γ) has larger derivatives than the nested form, so rk4 at 0.25 errs more.
    y = NmODE()(torch.tensor(GAMMAS, dtype=torch.float64))
    np.testing.assert_allclose(y.numpy(), ref1, rtol=0, atol=3e-4)
    y = NmODE(step_size=0.05)(torch.tensor(GAMMAS, dtype=torch.float64))
    np.testing.assert_allclose(y.numpy(), ref1, rtol=0, atol=5e-7)


@pytest.mark.parametrize("method", ["rk4", "euler", "midpoint"])
@pytest.mark.parametrize("T, step", [(1.0, 0.25), (1.0, 0.3), (2.0, 0.1)])
def test_unrolled_equals_torchdiffeq(method, T, step):
    torch.manual_seed(0)
    x = 3 * torch.randn(2, 8, 5, 7)
    a = NmODE2(T=T, step_size=step, method=method)(x)
    b = NmODE2(T=T, step_size=step, method=method, unrolled=True)(x)
    # Same grid and same operation order: equal to rounding (in practice bit-identical).
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    a1 = NmODE(T=T, step_size=step, method=method)(x)
    b1 = NmODE(T=T, step_size=step, method=method, unrolled=True)(x)
    torch.testing.assert_close(a1, b1, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    # dopri5 picks its steps from the input; at tight tolerances that choice no longer shows
    # in finite differences.
    [{}, {"solver": "torchdiffeq"}, {"unrolled": True},
     {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12}],
)
def test_gradcheck_float64(kwargs):
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(NmODE2(**kwargs), (x,), eps=1e-6, atol=1e-5)


def test_adjoint_gradient_close_to_direct():
    x = torch.randn(4, 5, dtype=torch.float64)
    xa, xd = x.clone().requires_grad_(), x.clone().requires_grad_()
    NmODE2(adjoint=True)(xa).sum().backward()
    NmODE2()(xd).sum().backward()
    # The adjoint integrates backwards with its own rk4 steps: close, not identical.
    torch.testing.assert_close(xa.grad, xd.grad, rtol=0, atol=1e-3)


def test_fp32_under_autocast():
    x = 2 * torch.randn(2, 4, 6, 6)
    expected = NmODE2()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        same = NmODE2()(x)
        low = NmODE2()(x.bfloat16())
    # float32 input: autocast must not touch the solve at all.
    assert same.dtype == torch.float32
    torch.testing.assert_close(same, expected, rtol=0, atol=0)
    # bfloat16 input: solved in float32 from the rounded input, returned in bfloat16.
    assert low.dtype == torch.bfloat16
    ref = NmODE2()(x.bfloat16().float()).bfloat16()
    torch.testing.assert_close(low, ref, rtol=0, atol=0)


def test_no_parameters_and_shape_preserved():
    m = NmODE2()
    assert sum(p.numel() for p in m.parameters()) == 0
    for shape in [(), (5,), (2, 3, 4, 5)]:
        assert m(torch.randn(shape)).shape == shape
    # Elementwise: a single value gives the same answer alone or inside a batch.
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x)[1, 2], m(x[1, 2].reshape(1))[0], rtol=0, atol=1e-7)


def test_gamma_conv_option():
    m = NmODE2(gamma_conv_channels=8)
    assert sum(p.numel() for p in m.parameters()) == 8 * 8 + 8
    x = torch.randn(2, 8, 4, 4)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert m.gamma_conv.weight.grad is not None


def test_unrolled_exports_static_graph():
    m = NmODE2(unrolled=True)
    x = torch.randn(1, 2, 4, 4)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"T": 0.0},
        {"T": float("nan")},
        {"method": "rk5"},
        {"step_size": None},
        {"step_size": -0.1},
        {"method": "dopri5", "unrolled": True},
        {"unrolled": True, "adjoint": True},
    ],
)
def test_bad_options_raise(kwargs):
    with pytest.raises(MedDetError):
        NmODE2(**kwargs)


# ----------------------------------------------------------------------------- fused solver
@pytest.mark.parametrize("cls", [NmODE, NmODE2])
@pytest.mark.parametrize("method", ["rk4", "euler", "midpoint"])
@pytest.mark.parametrize("T, step", [(1.0, 0.25), (2.0, 0.3)])
def test_fused_equals_torchdiffeq_forward_and_gradient(cls, method, T, step):
    torch.manual_seed(0)
    x = 3 * torch.randn(2, 4, 5, 7)
    ref, fused = (cls(T=T, step_size=step, method=method, solver=s)
                  for s in ("torchdiffeq", "fused"))
    assert fused.solver == "fused" and cls(method=method).solver == "fused"  # the default
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fused(xf)
    # Same grid, same float ops in the same order: bit-identical in practice.
    torch.testing.assert_close(yf, yr, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused(x), yr, rtol=0, atol=1e-6)  # no-grad path
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yf * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    # In float64 the sensitivity is the exact derivative of the discrete scheme: equal to
    # autograd through torchdiffeq's graph up to float64 rounding.
    xr64, xf64 = (x.double().requires_grad_() for _ in range(2))
    ref(xr64).sum().backward()
    fused(xf64).sum().backward()
    torch.testing.assert_close(xf64.grad, xr64.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [NmODE, NmODE2])
@pytest.mark.parametrize("method", ["rk4", "midpoint", "euler"])
def test_fused_gradcheck_float64(cls, method):
    x = 2 * torch.randn(2, 3, dtype=torch.float64)
    x.requires_grad_()
    assert torch.autograd.gradcheck(cls(method=method, solver="fused"), (x,), eps=1e-6,
                                    atol=1e-5)


def test_fused_double_backward_raises():
    x = torch.randn(5, requires_grad=True)
    (g,) = torch.autograd.grad(NmODE2()(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_fused_gamma_conv_and_bfloat16_autocast():
    m = NmODE2(gamma_conv_channels=4)
    x = torch.randn(1, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert m.gamma_conv.weight.grad is not None


def test_table_solver_close_to_exact():
    torch.manual_seed(0)
    x = 5 * torch.randn(4000)
    for cls in (NmODE, NmODE2):
        exact = cls()(x)
        table = cls(solver="table")
        torch.testing.assert_close(table(x), exact, rtol=0, atol=1e-5)
        torch.testing.assert_close(table(x.double()), exact.double(), rtol=0, atol=1e-5)
        xt, xe = x[:50].clone().requires_grad_(), x[:50].clone().requires_grad_()
        table(xt).sum().backward()
        cls()(xe).sum().backward()
        torch.testing.assert_close(xt.grad, xe.grad, rtol=0, atol=1e-4)
    # The solution map is π-periodic in γ, which is what makes one table enough.
    base = torch.linspace(-1, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(NmODE2()(base + math.pi), NmODE2()(base), rtol=0, atol=1e-12)


def test_table_solver_wraps_negative_and_far_gamma_and_keeps_nan():
    # the index wrap is a bitwise AND on int32: negative γ and γ many periods away must land
    # on the same point of the period as the exact solve; non-finite γ must give NaN
    g = torch.tensor([-0.4, -3.0, -1000.25, 1000.25, 2 * math.pi - 1e-3, 0.0])
    table, exact = NmODE2(solver="table"), NmODE2()
    with torch.no_grad():
        torch.testing.assert_close(table(g), exact(g), rtol=0, atol=1e-5)
        bad = table(torch.tensor([math.nan, math.inf, -math.inf, 0.5]))
    assert bad[:3].isnan().all() and bad[3].isfinite()
    # the gathers reuse scratch buffers: the input is left untouched
    x = torch.randn(64)
    x0 = x.clone()
    with torch.no_grad():
        table(x)
    assert torch.equal(x, x0)


@pytest.mark.parametrize(
    "kwargs",
    [{"solver": "magic"}, {"solver": "fused", "method": "dopri5"},
     {"solver": "fused", "adjoint": True}, {"solver": "table", "method": "heun3"}],
)
def test_bad_solver_options_raise(kwargs):
    with pytest.raises(MedDetError):
        NmODE2(**kwargs)


def test_adjoint_and_adaptive_default_to_torchdiffeq():
    assert NmODE2(adjoint=True).solver == "torchdiffeq"
    assert NmODE2(method="dopri5").solver == "torchdiffeq"


def test_table_solver_keeps_channels_last_and_values():
    torch.manual_seed(0)
    m = NmODE2(solver="table")
    x = torch.randn(2, 8, 5, 7)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = m(x), m(xc)
    assert torch.equal(a, b) and a.is_contiguous()
    assert b.is_contiguous(memory_format=torch.channels_last)
    # gradients agree as well (the flat view is differentiable)
    xa, xb = x.clone().requires_grad_(True), xc.clone().requires_grad_(True)
    m(xa).pow(2).sum().backward()
    m(xb).pow(2).sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=0, atol=0)
