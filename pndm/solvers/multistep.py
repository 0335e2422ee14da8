"""The linear-multistep engine behind PLMS, S-PNDM, F-PNDM, FON and iPNDM.

PNDM (Liu et al. 2022) splits a numerical method into a *gradient part* (which direction to
move in: eps for the pseudo methods, dx/dt for classical ones) and a *transfer part* (how to
move along it: phi of eq. 9 for pseudo methods, ``x + h * f`` for classical ones). Any
combination of directions — Runge-Kutta stages (eq. 13), multistep sums (eq. 12) — is then a
direction too. :class:`Scheme` is that pair; :func:`linear_multistep` runs a warm-up followed by
Adams-Bashforth steps of up to ``max_order`` over the grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.grid import CLEAN
from pndm.solvers.transfer import alpha_bar_at, transfer


def adams_bashforth_weights(nodes: list[float], target: float) -> list[float]:
    """Variable-step Adams-Bashforth weights, newest node first (Hairer, Norsett & Wanner, "Solving
    ODEs I", sec. III.5, eq. 5.2 with variable steps):

        x(u') - x(u_0) = int_{u_0}^{u'} P(v) dv,  P = the Lagrange interpolant of the directions d_k at u_k,
        int_{u_0}^{u'} P(v) dv = h sum_k w_k d_k,  w_k = (1/h) int_{u_0}^{u'} L_k(v) dv,  h = u' - u_0.

    In s = (v - u_0)/h (s_k = (u_k - u_0)/h) the w_k are the quadrature weights exact for polynomials
    of degree < K on [0, 1]: sum_k w_k s_k^j = 1/(j + 1), j = 0..K-1 (a Vandermonde system). On uniform
    steps (s_k = -k) they are the classical 1; 3/2, -1/2; 23/12, -16/12, 5/12; 55/24, -59/24, 37/24,
    -9/24 (PNDM eq. 12).
    """
    h = target - nodes[0]
    s = torch.tensor([(u - nodes[0]) / h for u in nodes], dtype=torch.float64)
    powers = torch.arange(len(nodes), dtype=torch.float64)
    vandermonde = s[None, :] ** powers[:, None]  # [j, k] = s_k^j
    return torch.linalg.solve(vandermonde, 1 / (powers + 1)).tolist()


@dataclass(frozen=True)
class Scheme:
    """How a direction is computed from eps, and how x moves along a direction from t to t_next."""

    direction: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    advance: Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor]


def pseudo_scheme(schedule: Schedule) -> Scheme:
    """Pseudo numerical method: the direction is eps itself, the move is phi (PNDM eq. 9)."""

    def advance(x, eps, t, t_next):
        return transfer(x, eps, alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_next))

    return Scheme(direction=lambda x, eps, t: eps, advance=advance)


def classical_scheme(schedule: Schedule) -> Scheme:
    """Classical method on the probability-flow ODE in the timestep index t (PNDM eq. 6):

        dx/dt = 1/2 * dlog(ab)/dt * (x - eps / sqrt(1 - ab)),

    moved by the straight line x + (t_next - t) * f.
    """

    def direction(x, eps, t):
        ab = alpha_bar_at(schedule, t)
        rate = float(schedule.dlog_alpha_bar_dt(t))
        return 0.5 * rate * (x - eps / (1 - ab) ** 0.5)

    return Scheme(direction=direction, advance=lambda x, f, t, t_next: x + (t_next - t) * f)


def _combine(history: list[torch.Tensor], nodes: list[float], target: float, order: int) -> torch.Tensor:
    """Adams-Bashforth sum of the newest ``order`` directions (taken at ``nodes``, oldest first) for
    the step to ``target``."""
    weights = adams_bashforth_weights(nodes[::-1][:order], target)
    out = weights[0] * history[-1]
    for k in range(1, order):
        out = out + weights[k] * history[-1 - k]
    return out


def heun_step(ev, scheme, x, t, t_next, history):
    """Pseudo improved Euler (PNDM eq. 10 family): predictor along d(t), then the mean of d(t)
    and d(t_next) at the prediction. Two evaluations; the first one enters the history."""
    d1 = scheme.direction(x, ev(x, t), t)
    history.append(d1)
    x_pred = scheme.advance(x, d1, t, t_next)
    d2 = scheme.direction(x_pred, ev(x_pred, t_next), t_next)
    return scheme.advance(x, (d1 + d2) / 2, t, t_next)


def _runge_kutta_step(ev, scheme, x, t, t_next, history):
    """(Pseudo) classical fourth-order Runge-Kutta (PNDM eq. 13); midpoint at (t + t_next)/2.
    Four evaluations; the first one enters the history."""
    t_mid = (t + t_next) / 2
    d1 = scheme.direction(x, ev(x, t), t)
    history.append(d1)
    x2 = scheme.advance(x, d1, t, t_mid)
    d2 = scheme.direction(x2, ev(x2, t_mid), t_mid)
    x3 = scheme.advance(x, d2, t, t_mid)
    d3 = scheme.direction(x3, ev(x3, t_mid), t_mid)
    x4 = scheme.advance(x, d3, t, t_next)
    d4 = scheme.direction(x4, ev(x4, t_next), t_next)
    return scheme.advance(x, (d1 + 2 * d2 + 2 * d3 + d4) / 6, t, t_next)


WARMUPS = {"heun": (heun_step, 1), "runge-kutta": (_runge_kutta_step, 3)}


def linear_multistep(
    ev: EpsEvaluator,
    x: torch.Tensor,
    grid: list[float],
    scheme: Scheme,
    *,
    max_order: int,
    warmup: str | None = None,
) -> torch.Tensor:
    """Walk ``grid`` with ``warmup`` steps ("heun": 1 step, "runge-kutta": 3 steps, None: none),
    then one evaluation per step combined by variable-step Adams-Bashforth of order
    min(max_order, history) (:func:`adams_bashforth_weights`).

    The interpolation variable is the timestep t itself (PNDM eq. 12 is Adams-Bashforth in t), so
    grids uniform in t (leading, linspace, trailing) get the classical weights. The clean image
    (:data:`CLEAN`) has no model time; the step into it counts as long as the step before it,
    u = 2 t_0 - t_1, as PNDM and diffusers treat it on the leading grid (their last step goes to
    t_0 - T//N).
    """
    history: list[torch.Tensor] = []
    warm_step, warm_count = WARMUPS[warmup] if warmup else (None, 0)
    u = list(grid)
    if u[-1] == CLEAN:
        u[-1] = 2 * u[-2] - u[-3] if len(u) > 2 else u[-2] - 1
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        if i < warm_count:
            x = warm_step(ev, scheme, x, t, t_next, history)
            continue
        history.append(scheme.direction(x, ev(x, t), t))
        del history[:-max_order]
        order = min(max_order, len(history))
        x = scheme.advance(x, _combine(history, u[i + 1 - order : i + 1], u[i + 1], order), t, t_next)
    return x
