"""nmODE blocks: a feature map is the input γ of a small neural memory ODE, the output is y(T).

The paper (MedDet, arXiv 2409.00204, eq. 2 and eq. 4-5) replaces a plain activation with the
solution of an ODE whose external input γ = f(x, w) is the output of the upstream conv tower:

* first order (:class:`NmODE`, eq. 2):   dy/dt = -y + sin²(y + γ)
* second order (:class:`NmODE2`, eq. 4-5): dy/dt = -y + sin²(y + cos²(y + γ))

Both start from y(0) = 0 and integrate over [0, T]. γ enters elementwise, so the block is a
parameter-free elementwise map of any tensor shape (an optional 1x1 conv can compute γ).

Three solver paths give the same numbers:

* ``solver="fused"`` (the default for the fixed-step ``euler``, ``midpoint`` and ``rk4`` without
  ``adjoint``): a custom :class:`torch.autograd.Function`. Its forward takes exactly the steps
  (same grid, same float operations in the same order) as torchdiffeq, so y(T) is bit-identical
  to ``solver="torchdiffeq"``. Because the ODE is scalar per element, the same pass also
  integrates the forward sensitivity s = dy/dγ (variational equation
  ds/dt = f_y(y, γ)·s + f_γ(y, γ), s(0) = 0) with the same Runge-Kutta stages; for an explicit
  RK scheme that *is* the derivative of the discrete solution, so the gradient equals autograd
  through torchdiffeq's graph (to rounding) while the backward pass is one multiplication and
  only one extra tensor (s) is kept instead of every stage of every step. Double backward is
  not supported (it raises).
* ``solver="torchdiffeq"``: ``torchdiffeq.odeint`` (or ``odeint_adjoint``) with any of its
  methods; the reference, and the only path for adaptive methods and the adjoint.
* a hand-unrolled fixed-step loop (``unrolled=True``) of plain tensor ops: a static graph for
  tracing and export, again bit-identical to torchdiffeq.

* ``solver="table"`` (opt-in, used by :func:`meddet.models.optimize_for_inference`): y(T) as a
  function of γ alone, Φ(γ), is π-periodic (γ enters only through cos²(y + γ), resp.
  sin²(y + γ)), so it is tabulated once per module on ``TABLE_SIZE`` points of one period
  (with the fused solver in float64, same method and grid) and linearly interpolated; dΦ/dγ
  likewise for the gradient. About 8 elementwise passes instead of ~150; agrees with the
  exact solvers to ~1e-6 in float32 (the rounding of γ mod π), not bit for bit.

Note that torchdiffeq's ``"rk4"`` is the 3/8-rule variant (``rk4_alt_step_func``), not the
classic RK4; every path here uses that rule.

The ODE always runs in float32 (float64 inputs stay float64), also under autocast: sin²/cos²
compositions iterated over several stages lose too much in float16/bfloat16.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from meddet.errors import MedDetError

__all__ = ["SOLVERS", "NmODE", "NmODE2", "ResidualNmODE"]

# Methods the unrolled and fused paths implement; each matches torchdiffeq's solver of the
# same name.
UNROLLED_METHODS = ("euler", "midpoint", "rk4")
# ``solver`` values; None picks "fused" where it applies, else "torchdiffeq".
SOLVERS = ("fused", "torchdiffeq", "table")
# Entries per period of the "table" solver: linear interpolation error ~ (π / N)² / 8 · |Φ''|,
# about 1e-9 here, far below float32 rounding of y; 256 KiB per table in float32.
# A power of two, so the periodic wrap of a table index is a bitwise AND (two's complement
# wraps negative indices too), not a float remainder (~25 % of the lookup's time on CPU).
TABLE_SIZE = 1 << 16
assert TABLE_SIZE & (TABLE_SIZE - 1) == 0
# Fixed-grid torchdiffeq methods; they need ``step_size`` (adaptive ones use rtol/atol instead).
_FIXED_METHODS = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams",
                  "implicit_adams")
_ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

_ONE_THIRD = 1 / 3  # the same Python floats torchdiffeq uses, so rounding matches
_TWO_THIRDS = 2 / 3


def _rhs_first_order(y: Tensor, gamma: Tensor) -> Tensor:
    """Eq. 2: -y + sin²(y + γ)."""
    return -y + torch.sin(y + gamma).square()


def _rhs_second_order(y: Tensor, gamma: Tensor) -> Tensor:
    """Eq. 4-5: -y + sin²(y + cos²(y + γ))."""
    return -y + torch.sin(y + torch.cos(y + gamma).square()).square()


# --------------------------------------------------------------------------- fused solver
# Each ``_stage_*`` writes k = f(y, γ) into ``k`` and, when ``sens`` is given, also
# dk = f_y(y, γ)·sens + f_γ(y, γ), the derivative of the stage with respect to γ, into ``dk``.
# ``u`` and ``v`` are scratch buffers. The k computation performs the same float operations as
# ``_rhs_*`` (in-place variants of commutative ops give the same bits: a + b == b + a and
# -y + w == w - y in IEEE arithmetic), which keeps y bit-identical to torchdiffeq.
# Everything writes into preallocated buffers: on CPU a fresh multi-MB tensor per elementwise
# op costs more (page faults on freshly mapped memory) than the op itself.


def _stage_second_order(y: Tensor, gamma: Tensor, sens: Tensor | None, k: Tensor,
                        dk: Tensor | None, u: Tensor, v: Tensor) -> None:
    # u = y + γ, v = y + cos²(u), f = -y + sin²(v)
    # f_y = -1 + sin(2v)(1 - sin(2u)), f_γ = -sin(2v) sin(2u)
    # => dk = sin(2v)·(sens - sin(2u)·(sens + 1)) - sens
    torch.add(y, gamma, out=u)
    torch.cos(u, out=v).square_().add_(y)
    if sens is not None and dk is not None:
        u.mul_(2.0).sin_()
        torch.add(sens, 1.0, out=dk).mul_(u).neg_().add_(sens)
        torch.mul(v, 2.0, out=u).sin_()
        dk.mul_(u).sub_(sens)
    torch.sin(v, out=k).square_().sub_(y)


def _stage_first_order(y: Tensor, gamma: Tensor, sens: Tensor | None, k: Tensor,
                       dk: Tensor | None, u: Tensor, v: Tensor) -> None:
    # u = y + γ, f = -y + sin²(u); f_y = -1 + sin(2u), f_γ = sin(2u)
    # => dk = sin(2u)·(sens + 1) - sens
    torch.add(y, gamma, out=u)
    if sens is not None and dk is not None:
        torch.mul(u, 2.0, out=v).sin_()
        torch.add(sens, 1.0, out=dk).mul_(v).sub_(sens)
    torch.sin(u, out=k).square_().sub_(y)


_StageFn = Callable[..., None]


def _fused_solve(stage: _StageFn, gamma: Tensor, grid: list[float], method: str,
                 with_sens: bool) -> tuple[Tensor, Tensor | None]:
    """y(T) (and s(T) = dy(T)/dγ when ``with_sens``) on torchdiffeq's fixed grid, no autograd.

    The y updates repeat ``_NmODEBase._solve_unrolled`` operation for operation (so
    torchdiffeq's rounding), in place; the sensitivity s applies the same linear combinations
    to the stage derivatives dk.
    """
    gamma = gamma.contiguous()

    def buf() -> Tensor:
        return torch.empty_like(gamma)

    y = torch.zeros_like(gamma)
    s = torch.zeros_like(gamma) if with_sens else None
    n_stages = {"euler": 1, "midpoint": 2, "rk4": 4}[method]
    ks = [buf() for _ in range(n_stages)]
    ds: list[Tensor | None] = [buf() if with_sens else None for _ in range(n_stages)]
    y_in, u, v = buf(), buf(), buf()
    s_in = buf() if with_sens else None

    def run_stage(i: int, yy: Tensor, ss: Tensor | None) -> None:
        stage(yy, gamma, ss, ks[i], ds[i], u, v)

    # (stage-input buffer, state, stage values): y with the k's, and s with the dk's. The same
    # formula builds both stage inputs, and the same update advances both states.
    tracks: list[tuple[Tensor, Tensor, list[Any]]] = [(y_in, y, ks)]
    if s is not None and s_in is not None:
        tracks.append((s_in, s, ds))
    for t0, t1 in itertools.pairwise(grid):
        dt = t1 - t0
        run_stage(0, y, s)
        if method == "euler":
            for _, state, kk in tracks:
                state.add_(kk[0].mul_(dt))  # y + dt * f0
            continue
        if method == "midpoint":
            half_dt = 0.5 * dt
            for inp, state, kk in tracks:
                torch.mul(kk[0], half_dt, out=inp).add_(state)  # y + f0 * half_dt
            run_stage(1, y_in, s_in)
            for _, state, kk in tracks:
                state.add_(kk[1].mul_(dt))  # y + dt * f(y_mid)
            continue
        # rk4: torchdiffeq's rk4_alt_step_func (3/8 rule)
        for inp, state, kk in tracks:  # k2 = f(y + dt * k1 * 1/3)
            torch.mul(kk[0], dt, out=inp).mul_(_ONE_THIRD).add_(state)
        run_stage(1, y_in, s_in)
        for inp, state, kk in tracks:  # k3 = f(y + dt * (k2 - k1 * 1/3))
            torch.sub(kk[1], torch.mul(kk[0], _ONE_THIRD, out=inp), out=inp).mul_(dt).add_(state)
        run_stage(2, y_in, s_in)
        for inp, state, kk in tracks:  # k4 = f(y + dt * (k1 - k2 + k3))
            torch.sub(kk[0], kk[1], out=inp).add_(kk[2]).mul_(dt).add_(state)
        run_stage(3, y_in, s_in)
        for _, state, kk in tracks:  # y + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
            k1, k2, k3, k4 = kk
            k2.add_(k3).mul_(3)
            state.add_(k1.add_(k2).add_(k4).mul_(dt).mul_(0.125))
    return y, s


class _FusedODE(torch.autograd.Function):
    """y(T) = Φ(γ) with the derivative dΦ/dγ integrated alongside (forward sensitivity).

    The ODE is elementwise, so the Jacobian is diagonal: backward is ``grad_y * s``.
    """

    @staticmethod
    def forward(ctx: Any, gamma: Tensor, stage: _StageFn, grid: list[float],  # type: ignore[override]
                method: str) -> Tensor:
        y, s = _fused_solve(stage, gamma, grid, method, with_sens=True)
        ctx.save_for_backward(s)
        return y

    @staticmethod
    @once_differentiable  # s is a constant here, so a second derivative would be wrong: refuse
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        return grad_y * s, None, None, None


class _TableODE(torch.autograd.Function):
    """Φ(γ) by table lookup; backward multiplies by the interpolated dΦ/dγ table."""

    @staticmethod
    def forward(ctx: Any, gamma: Tensor, tables: tuple[Tensor, ...]  # type: ignore[override]
                ) -> Tensor:
        y, s = _table_lookup(gamma, tables, with_sens=True)
        ctx.save_for_backward(s)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, None]:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        return grad_y * s, None


def _table_lookup(gamma: Tensor, tables: tuple[Tensor, ...], with_sens: bool
                  ) -> tuple[Tensor, Tensor | None]:
    """Linear interpolation of the π-periodic tables ``(y, Δy, s, Δs)`` at γ."""
    y_tab, dy_tab, s_tab, ds_tab = tables
    n = y_tab.numel()  # TABLE_SIZE, a power of two
    pos = torch.mul(gamma, n / math.pi)
    idx_f = torch.floor(pos)
    frac = pos.sub_(idx_f)
    # int32 indices (half the traffic of int64; |γ| beyond ~1e5 wraps wrongly but stays in
    # the table, and float32 cannot resolve the table's step there anyway). A non-finite γ
    # gives a NaN frac, so NaN comes out, as from the solvers.
    idx = idx_f.to(torch.int32).bitwise_and_(n - 1)
    # The gathers write into the two float buffers once they are spent (idx_f, then frac):
    # fresh multi-megabyte outputs cost page faults that made the lookup ~2x slower on CPU.
    y = torch.index_select(dy_tab, 0, idx, out=idx_f).mul_(frac)
    s = None
    if with_sens:
        s = torch.index_select(ds_tab, 0, idx).mul_(frac).add_(
            torch.index_select(s_tab, 0, idx))
    y.add_(torch.index_select(y_tab, 0, idx, out=frac))
    return y, s


class _ODEFunc(nn.Module):
    """Wraps the right-hand side with γ bound, in the ``f(t, y)`` form torchdiffeq calls.

    An ``nn.Module`` because ``odeint_adjoint`` requires one; it owns no parameters.
    """

    def __init__(self, rhs: Callable[[Tensor, Tensor], Tensor], gamma: Tensor) -> None:
        super().__init__()
        self.rhs = rhs
        self.gamma = gamma

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.rhs(y, self.gamma)


def _fixed_grid(T: float, step_size: float, dtype: torch.dtype) -> list[float]:
    """The time grid torchdiffeq builds for ``step_size`` on [0, T], as Python floats.

    Mirrors ``FixedGridODESolver._grid_constructor_from_step_size`` (same dtype, same ops) so
    the unrolled path takes bit-identical steps, including a shortened last step when T is not
    a multiple of the step.
    """
    # Explicit CPU: the module may be built under ``torch.device("meta")``.
    t = torch.tensor([0.0, T], dtype=dtype, device="cpu")
    niters = torch.ceil((t[-1] - t[0]) / step_size + 1).item()
    grid = torch.arange(0, niters, dtype=dtype, device="cpu") * step_size + t[0]
    grid[-1] = t[-1]
    return [float(v) for v in grid]


class _NmODEBase(nn.Module):
    """Shared machinery of :class:`NmODE` and :class:`NmODE2`; see :class:`NmODE2` for options."""

    _rhs: Callable[[Tensor, Tensor], Tensor]
    _stage: _StageFn

    def __init__(
        self,
        *,
        T: float = 1.0,
        method: str = "rk4",
        step_size: float | None = 0.25,
        adjoint: bool = False,
        unrolled: bool = False,
        solver: str | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-6,
        gamma_conv_channels: int | None = None,
    ) -> None:
        super().__init__()
        # Validate once here so a bad option fails at build time, not deep inside a forward pass.
        if not (isinstance(T, (int, float)) and math.isfinite(T) and T > 0):
            raise MedDetError(f"nmODE end time T must be a positive number, got {T!r}")
        if method not in _FIXED_METHODS + _ADAPTIVE_METHODS:
            raise MedDetError(
                f"unknown nmODE solver {method!r}; use one of: "
                + ", ".join(_FIXED_METHODS + _ADAPTIVE_METHODS)
            )
        if method in _FIXED_METHODS and (step_size is None or not step_size > 0):
            raise MedDetError(f"nmODE method {method!r} needs a positive step_size, "
                              f"got {step_size!r}")
        if unrolled and method not in UNROLLED_METHODS:
            raise MedDetError(f"unrolled nmODE supports {', '.join(UNROLLED_METHODS)}; "
                              f"got method {method!r}")
        if unrolled and adjoint:
            raise MedDetError("nmODE options unrolled and adjoint exclude each other: the "
                              "unrolled graph is differentiated by autograd directly")
        if solver is not None and solver not in SOLVERS:
            raise MedDetError(f"unknown nmODE solver backend {solver!r}; use one of: "
                              + ", ".join(SOLVERS))
        if solver in ("fused", "table") and (method not in UNROLLED_METHODS or adjoint):
            raise MedDetError(f"the {solver} nmODE solver supports {', '.join(UNROLLED_METHODS)} "
                              f"without adjoint; got method {method!r}, adjoint={adjoint}; use "
                              "solver='torchdiffeq'")
        if solver is None:
            solver = ("fused" if method in UNROLLED_METHODS and not adjoint else "torchdiffeq")
        self.solver = solver
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[Tensor, ...]] = {}
        self.T = float(T)
        self.method = method
        self.step_size = None if step_size is None else float(step_size)
        self.adjoint = adjoint
        self.unrolled = unrolled
        # Export-only switch (set by meddet.export): the table solver written with ops every
        # graph format has (floor, gather), so an ONNX graph holds ~10 ops per block instead of
        # the unrolled solver's ~150.
        self.graph_table = False
        self.rtol = rtol
        self.atol = atol
        self.gamma_conv: nn.Conv2d | None = None
        if gamma_conv_channels is not None:
            self.gamma_conv = nn.Conv2d(gamma_conv_channels, gamma_conv_channels, 1)
        # Grids are constants; computing them here keeps tensor->float conversions out of
        # traced forwards.
        self._grids: dict[torch.dtype, list[float]] = {}
        if self.step_size is not None and method in _FIXED_METHODS:
            self._grids = {dt: _fixed_grid(self.T, self.step_size, dt)
                           for dt in (torch.float32, torch.float64)}

    def extra_repr(self) -> str:
        s = f"T={self.T}, method={self.method!r}"
        if self.method in _FIXED_METHODS:
            s += f", step_size={self.step_size}"
        else:
            s += f", rtol={self.rtol}, atol={self.atol}"
        if self.unrolled:
            s += ", unrolled=True"
        else:
            s += f", solver={self.solver!r}"
        if self.adjoint:
            s += ", adjoint=True"
        return s

    def forward(self, x: Tensor) -> Tensor:
        """Solve the ODE with γ = x (or γ = conv1x1(x)) and return y(T).

        Args:
            x: any shape, any floating dtype; ``[B, C, H, W]`` when ``gamma_conv_channels``
                is set.

        Returns:
            y(T), same shape and dtype as ``x``.
        """
        out_dtype = x.dtype
        compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=x.device.type, enabled=False):
            gamma = x.to(compute_dtype)
            if self.gamma_conv is not None:
                gamma = nn.functional.conv2d(
                    gamma, self.gamma_conv.weight.to(compute_dtype),
                    self.gamma_conv.bias.to(compute_dtype),
                )
            if self.unrolled:
                y = self._solve_unrolled(gamma)
            elif self.graph_table:
                y = self._solve_table_graph(gamma)
            elif self.solver == "fused" and not self.adjoint:
                y = self._solve_fused(gamma)
            elif self.solver == "table" and not self.adjoint:
                y = self._solve_table(gamma)
            else:
                y = self._solve_torchdiffeq(gamma)
        return y.to(out_dtype)

    def _solve_fused(self, gamma: Tensor) -> Tensor:
        stage = type(self)._stage
        grid = self._grids[gamma.dtype]
        if torch.is_grad_enabled() and gamma.requires_grad:
            return _FusedODE.apply(gamma, stage, grid, self.method)
        return _fused_solve(stage, gamma, grid, self.method, with_sens=False)[0]

    def _solve_table_graph(self, gamma: Tensor) -> Tensor:
        """The table lookup of :meth:`_solve_table` with out-of-place, exportable ops."""
        y_tab, dy_tab = self._table(gamma)[:2]
        n = TABLE_SIZE  # a Python int, so a tracer records a constant
        pos = gamma * (n / math.pi)
        idx_f = torch.floor(pos)
        frac = pos - idx_f
        idx = (idx_f - torch.floor(idx_f / n) * n).to(torch.long)  # remainder, any sign
        return y_tab[idx] + dy_tab[idx] * frac

    def _solve_table(self, gamma: Tensor) -> Tensor:
        tables = self._table(gamma)
        # Elementwise, so work on a flat view of the data in its own memory order: a
        # channels_last input stays channels_last and the lookup runs on dense memory (on a
        # strided view it was ~2x slower and returned a contiguous tensor).
        cl = (gamma.dim() == 4 and not gamma.is_contiguous()
              and gamma.is_contiguous(memory_format=torch.channels_last))
        g = gamma.permute(0, 2, 3, 1) if cl else gamma
        flat = g.reshape(-1)
        if torch.is_grad_enabled() and gamma.requires_grad:
            y = _TableODE.apply(flat, tables)
        else:
            y = _table_lookup(flat, tables, with_sens=False)[0]
        y = y.view(g.shape)
        return y.permute(0, 3, 1, 2) if cl else y

    def _table(self, gamma: Tensor) -> tuple[Tensor, ...]:
        key = (gamma.dtype, gamma.device)
        if key not in self._tables:
            # One period [0, π] (endpoint included for the differences), solved in float64.
            n = TABLE_SIZE
            g = torch.arange(n + 1, dtype=torch.float64) * (math.pi / n)
            y, s = _fused_solve(type(self)._stage, g, self._grids[torch.float64], self.method,
                                with_sens=True)
            assert s is not None
            tabs = (y[:-1], y.diff(), s[:-1], s.diff())
            self._tables[key] = tuple(t.to(device=gamma.device, dtype=gamma.dtype).contiguous()
                                      for t in tabs)
        return self._tables[key]

    def _solve_torchdiffeq(self, gamma: Tensor) -> Tensor:
        import torchdiffeq  # local: only this path needs it

        func = _ODEFunc(type(self)._rhs, gamma)
        y0 = torch.zeros_like(gamma)
        t = torch.tensor([0.0, self.T], dtype=gamma.dtype, device=gamma.device)
        options = {"step_size": self.step_size} if self.method in _FIXED_METHODS else None
        kwargs = {"method": self.method, "options": options, "rtol": self.rtol, "atol": self.atol}
        if self.adjoint:
            # γ is not a parameter of func, so name it explicitly for the adjoint gradient.
            params = (gamma,) if gamma.requires_grad else ()
            sol = torchdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, **kwargs)
        else:
            sol = torchdiffeq.odeint(func, y0, t, **kwargs)
        return sol[-1]

    def _solve_unrolled(self, gamma: Tensor) -> Tensor:
        rhs = type(self)._rhs
        grid = self._grids[gamma.dtype]
        y = torch.zeros_like(gamma)
        # Operation order below copies torchdiffeq (fixed_grid.py, rk_common.py) so that each
        # float32 rounding is the same; do not "simplify" the expressions.
        for t0, t1 in itertools.pairwise(grid):
            dt = t1 - t0
            f0 = rhs(y, gamma)
            if self.method == "euler":
                dy = dt * f0
            elif self.method == "midpoint":
                half_dt = 0.5 * dt
                dy = dt * rhs(y + f0 * half_dt, gamma)
            else:  # rk4: torchdiffeq's rk4_alt_step_func (3/8 rule)
                k1 = f0
                k2 = rhs(y + dt * k1 * _ONE_THIRD, gamma)
                k3 = rhs(y + dt * (k2 - k1 * _ONE_THIRD), gamma)
                k4 = rhs(y + dt * (k1 - k2 + k3), gamma)
                dy = (k1 + 3 * (k2 + k3) + k4) * dt * 0.125
            y = y + dy
        return y


class NmODE(_NmODEBase):
    """First-order nmODE (paper eq. 2): dy/dt = -y + sin²(y + γ), y(0) = 0, output y(T).

    Same options as :class:`NmODE2`.
    """

    _rhs = staticmethod(_rhs_first_order)
    _stage = staticmethod(_stage_first_order)


class NmODE2(_NmODEBase):
    """Second-order nmODE, nmODE² (paper eq. 4-5): dy/dt = -y + sin²(y + cos²(y + γ)).

    With the defaults it maps a tensor γ of any shape elementwise to y(T) and owns no
    parameters: γ = f(x, w) is the output of the upstream layers.

    Args:
        T: end time of the integration. The paper states none; the default 1 is our choice,
            the ODE's natural time unit (the decay term -y has rate 1).
        method: a torchdiffeq method name (``rk4`` = torchdiffeq's 3/8-rule RK4).
        step_size: step of the fixed-grid methods (default 0.25, i.e. 4 steps); ignored by
            adaptive methods such as ``dopri5``.
        adjoint: use ``torchdiffeq.odeint_adjoint`` (O(1) activation memory, slower backward).
        unrolled: hand-unrolled fixed-step loop (``euler``, ``midpoint``, ``rk4``), numerically
            identical to torchdiffeq on the same grid; a static graph for tracing / export.
            Takes precedence over ``solver``.
        solver: ``"fused"`` (forward-sensitivity autograd Function, see the module docstring),
            ``"torchdiffeq"`` or ``"table"`` (interpolated lookup of the periodic solution map,
            ~1e-6 from the exact solvers; for fast inference); None (default) picks ``"fused"`` for ``euler`` /
            ``midpoint`` / ``rk4`` without ``adjoint`` and ``"torchdiffeq"`` otherwise. Both
            give the same y(T) bit for bit and the same gradient to rounding.
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        gamma_conv_channels: if set, γ = Conv2d(C, C, 1)(x) with C this value (adds C² + C
            parameters); by default γ = x.

    Raises:
        MedDetError: invalid T, unknown method or solver, fixed-grid method without a step,
            or an unrolled / fused method that is not implemented.
    """

    _rhs = staticmethod(_rhs_second_order)
    _stage = staticmethod(_stage_second_order)


class ResidualNmODE(nn.Module):
    """nmODE² as a gated residual: ``x + α ⊙ (Φ(x) − Φ(0))``, with ``α`` per channel, zero at start.

    The paper's form replaces a feature map ``x`` by ``Φ(x) = y(T)`` (:class:`NmODE2`). From
    random weights that map squashes the head: with y(0) = 0 and T = 1 it is confined to
    [0, 0.584], is not monotone (Φ(0) = 0.553, Φ(π/2) = 0) and is nearly flat on
    [1.15, 1.95], where the strongest activations of a tower fall, so it shrinks the spatial
    contrast of the features and the gradient reaching everything below it (docs/training.md,
    "The early loss plateau"). This form leaves the detector unchanged at initialisation (α = 0:
    the block is the identity) and lets training decide, channel by channel, how much of the
    ODE's response to add; subtracting the constant Φ(0) keeps a zero input at zero.

    Args:
        channels: channels of the input (dimension 1), one gate each.
        **kwargs: options of the inner :class:`NmODE2` (``T``, ``method``, ``step_size``, ...).

    Attributes:
        ode: the inner :class:`NmODE2` (export and inference switches act on it).
        alpha: ``[channels]`` gates.
    """

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__()
        if not (isinstance(channels, int) and channels >= 1):
            raise MedDetError(f"ResidualNmODE needs a positive channel count, got {channels!r}")
        self.ode = NmODE2(**kwargs)
        self.alpha = nn.Parameter(torch.zeros(channels))
        # Φ(0) is a constant of the ODE and its solver; kept as a Python float so tracing and
        # export see a literal. Built on the CPU: the module may be created on a meta device.
        with torch.no_grad():
            self.phi0 = float(self.ode(torch.zeros(1, dtype=torch.float64, device="cpu")))

    def forward(self, x: Tensor) -> Tensor:
        """``x + α ⊙ (Φ(x) − Φ(0))``.

        Args:
            x: ``[B, C, ...]`` with ``C = channels``.

        Returns:
            Same shape and dtype as ``x``.
        """
        if x.dim() < 2 or x.shape[1] != self.alpha.numel():
            raise ValueError(f"ResidualNmODE expects [B, {self.alpha.numel()}, ...], "
                             f"got {tuple(x.shape)}")
        gate = self.alpha.view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
        return x + gate * (self.ode(x) - self.phi0)
