"""nmODE blocks: a feature map is the input γ of a small neural memory ODE, the output is y(T).

The paper (MedDet, arXiv 2409.00204, eq. 2 and eq. 4-5) replaces a plain activation with the
solution of an ODE whose external input γ = f(x, w) is the output of the upstream conv tower:

* first order (:class:`NmODE`, eq. 2):   dy/dt = -y + sin²(y + γ)
* second order (:class:`NmODE2`, eq. 4-5): dy/dt = -y + sin²(y + cos²(y + γ))

Both start from y(0) = 0 and integrate over [0, T]. γ enters elementwise, so the block is a
parameter-free elementwise map of any tensor shape (an optional 1x1 conv can compute γ).

Two solver paths give the same numbers:

* ``torchdiffeq.odeint`` (or ``odeint_adjoint``) with any of its methods, the default;
* a hand-unrolled fixed-step loop (``unrolled=True``) that is a static graph for tracing and
  export. It reproduces torchdiffeq's fixed grid and step rules exactly; note that
  torchdiffeq's ``"rk4"`` is the 3/8-rule variant (``rk4_alt_step_func``), not the classic RK4.

The ODE always runs in float32 (float64 inputs stay float64), also under autocast: sin²/cos²
compositions iterated over several stages lose too much in float16/bfloat16.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from meddet.errors import MedDetError

__all__ = ["NmODE", "NmODE2"]

# Methods the unrolled path implements; each matches torchdiffeq's solver of the same name.
UNROLLED_METHODS = ("euler", "midpoint", "rk4")
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

    def __init__(
        self,
        *,
        T: float = 1.0,
        method: str = "rk4",
        step_size: float | None = 0.25,
        adjoint: bool = False,
        unrolled: bool = False,
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
        self.T = float(T)
        self.method = method
        self.step_size = None if step_size is None else float(step_size)
        self.adjoint = adjoint
        self.unrolled = unrolled
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
            else:
                y = self._solve_torchdiffeq(gamma)
        return y.to(out_dtype)

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


class NmODE2(_NmODEBase):
    """Second-order nmODE, nmODE² (paper eq. 4-5): dy/dt = -y + sin²(y + cos²(y + γ)).

    With the defaults it maps a tensor γ of any shape elementwise to y(T) and owns no
    parameters: γ = f(x, w) is the output of the upstream layers.

    Args:
        T: end time of the integration (paper: 1).
        method: a torchdiffeq method name (``rk4`` = torchdiffeq's 3/8-rule RK4).
        step_size: step of the fixed-grid methods (default 0.25, i.e. 4 steps); ignored by
            adaptive methods such as ``dopri5``.
        adjoint: use ``torchdiffeq.odeint_adjoint`` (O(1) activation memory, slower backward).
        unrolled: hand-unrolled fixed-step loop (``euler``, ``midpoint``, ``rk4``), numerically
            identical to torchdiffeq on the same grid; a static graph for tracing / export.
        rtol: relative tolerance of adaptive methods.
        atol: absolute tolerance of adaptive methods.
        gamma_conv_channels: if set, γ = Conv2d(C, C, 1)(x) with C this value (adds C² + C
            parameters); by default γ = x.

    Raises:
        MedDetError: invalid T, unknown method, fixed-grid method without a step, or an
            unrolled method that is not implemented.
    """

    _rhs = staticmethod(_rhs_second_order)
