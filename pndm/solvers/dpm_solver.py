"""DPM-Solver++ multistep, 2nd and 3rd order (Lu et al. 2022, "DPM-Solver++", sec. 4 and Alg. 2).

Data prediction m = x0(x, t) is integrated in lambda = log(alpha/sigma) with the exact
exponential integrator (DPM-Solver++ eq. 9)

    x_t = (sigma_t/sigma_s) x_s + alpha_t * int_0^h e^{-(h-u)} m(lambda_s + u) du,  h = lambda_t - lambda_s,

and m expanded in a Taylor series around lambda_s whose derivatives come from divided
differences of earlier evaluations. The exact integrals of the expansion terms are:

    int e^{-(h-u)} du         = 1 - e^{-h}
    int e^{-(h-u)} u du       = h - 1 + e^{-h}
    int e^{-(h-u)} u^2/2 du   = h^2/2 - h + 1 - e^{-h}

Warm-up uses the available lower order; the last step into sigma = 0 (h = inf) is first order,
where it reduces to x_0 = m, and runs of fewer than 15 steps use at most order 2 on the step
before (diffusers' ``lower_order_final``, which stabilises coarse grids). NFE = N.
"""

from __future__ import annotations

import math

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import alpha_bar_at, lambda_of, predict_x0


def _first_order(x, m0, ab_s, ab_t, h):
    """DPM-Solver++(1) = DDIM: x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) m_s
    (with h = inf into sigma_t = 0 this is x_t = m_s)."""
    return math.sqrt((1 - ab_t) / (1 - ab_s)) * x - math.sqrt(ab_t) * math.expm1(-h) * m0


def _second_order_2m(x, m, lam, ab_s, ab_t, h):
    """DPM-Solver++(2M), Alg. 2: D = (1 + 1/(2r)) m_s - 1/(2r) m_{s-1},  r = h_{s-1}/h,
    then the first-order update with D in place of m_s."""
    r = (lam[-1] - lam[-2]) / h
    d = (1 + 0.5 / r) * m[-1] - (0.5 / r) * m[-2]
    return _first_order(x, d, ab_s, ab_t, h)


def _third_order_3m(x, m, lam, ab_s, ab_t, h):
    """DPM-Solver++(3M) with the coefficients of the authors' code (and diffusers):

        D1 = h m'(lambda_s) and D2 = h^2 [s, s-1, s-2] = h^2 m''/2 from Newton divided differences,
        x_t = (sigma_t/sigma_s) x_s + alpha_t [(1 - e^{-h}) m_s + (h - 1 + e^{-h})/h D1
                                              + (h^2/2 - h + 1 - e^{-h})/h^2 D2].

    The exact Taylor integral would weight D2 twice as much (the m'' term is
    (h^2/2 - h + 1 - e^{-h}) m''); the shipped weight is kept for equivalence with the reference
    implementations and because it is more accurate on coarse uniform-t grids (docs/SOLVERS.md).
    """
    h0, h1 = lam[-1] - lam[-2], lam[-2] - lam[-3]
    d1_0 = (m[-1] - m[-2]) * (h / h0)  # h * [s, s-1]
    d1_1 = (m[-2] - m[-3]) * (h / h1)  # h * [s-1, s-2]
    d2 = (d1_0 - d1_1) * (h / (h0 + h1))  # h^2 * [s, s-1, s-2]
    d1 = d1_0 + (h0 / h) * d2  # h * m'(lambda_s)
    em = math.expm1(-h)
    return (
        math.sqrt((1 - ab_t) / (1 - ab_s)) * x
        - math.sqrt(ab_t) * em * m[-1]
        + math.sqrt(ab_t) * ((h + em) / h) * d1
        + math.sqrt(ab_t) * ((h * h / 2 - h - em) / (h * h)) * d2
    )


def _first_order_update(x, m, lam, ab_s, ab_t, h):
    return _first_order(x, m[-1], ab_s, ab_t, h)


#: Runs shorter than this also lower the second-to-last step to order <= 2 (as diffusers does).
SHORT_RUN = 15

_UPDATES = {1: _first_order_update, 2: _second_order_2m, 3: _third_order_3m}


def dpm_solver_pp(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, order: int
) -> torch.Tensor:
    """DPM-Solver++(``order``M) over ``grid`` (order 2 or 3)."""
    m: list[torch.Tensor] = []
    lam: list[float] = []
    last = len(grid) - 2
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        ab_s, ab_t = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_next)
        m.append(predict_x0(x, ev(x, t), ab_s))
        lam.append(lambda_of(ab_s))
        del m[:-order], lam[:-order]
        h = lambda_of(ab_t) - lam[-1]
        step_order = 1 if i == last else min(order, len(m))
        if i == last - 1 and last + 1 < SHORT_RUN:
            step_order = min(step_order, 2)
        x = _UPDATES[step_order](x, m, lam, ab_s, ab_t, h)
    return x
