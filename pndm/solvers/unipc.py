"""UniPC, B(h) = expm1(h) variant "bh2" (Zhao et al. 2023, "UniPC", Alg. 1-2 and sec. 3.3).

Data prediction m = x0(x, t) in lambda = log(alpha/sigma), step s -> t, h = lambda_t - lambda_s.
With r_k = (lambda_{s_k} - lambda_s)/h and D_k = (m_{s_k} - m_s)/r_k for earlier points s_k:

    UniP-p (predictor, eq. 8):  x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) m_s
                                      - alpha_t B(h) sum_{k<p} rho_k D_k
    UniC-p (corrector, eq. 9):  the same with one more term rho_p (m_t - m_s), where m_t comes
                                from the evaluation at the predicted x_t, which the next step
                                reuses, so the corrector costs no extra evaluation.

rho solves R rho = g with R[i, k] = r_k^i and g_i = (-h) phi_{i+2}(-h) (i+1)! / B(-h), where
phi_1(z) = (e^z - 1)/z and phi_{k+1}(z) = (phi_k(z) - 1/k!)/z (the predictor drops the last
column and row; rho = 1/2 for a predictor of order 2 and a corrector of order 1).
The order warms up 1, 2, ... and falls to 1 on the last step (into sigma = 0). NFE = N.
"""

from __future__ import annotations

import math

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import alpha_bar_at, lambda_of, predict_x0


def _weights(rs: list[float], z: float, b_h: float, corrector: bool) -> list[float]:
    """rho for points r_1..r_{p-1} (and r_p = 1 for the corrector), z = -h."""
    n = len(rs) + (1 if corrector else 0)
    if n == 0:
        return []
    if n == 1:
        return [0.5]
    phi = math.expm1(z) / z  # phi_1
    g = []
    for i in range(1, n + 1):
        phi = (phi - 1 / math.factorial(i)) / z  # phi_{i+1}
        g.append(z * phi * math.factorial(i) / b_h)
    nodes = torch.tensor(rs + ([1.0] if corrector else []), dtype=torch.float64)
    R = torch.stack([nodes**i for i in range(n)])
    return torch.linalg.solve(R, torch.tensor(g, dtype=torch.float64)).tolist()


def _update(x, m, lam, ab_s, ab_t, m_t=None):
    """One UniP step from the newest history point (or UniC with the new evaluation m_t)."""
    lam_t = lambda_of(ab_t)
    h = lam_t - lam[-1]
    base = math.sqrt((1 - ab_t) / (1 - ab_s)) * x - math.sqrt(ab_t) * math.expm1(-h) * m[-1]
    rs = [(lam[-1 - k] - lam[-1]) / h for k in range(1, len(m))]
    diffs = [(m[-1 - k] - m[-1]) / r for k, r in enumerate(rs, start=1)]
    if m_t is not None:
        diffs.append(m_t - m[-1])
    if not diffs:
        return base
    b_h = math.expm1(-h)
    rhos = _weights(rs, -h, b_h, corrector=m_t is not None)
    res = rhos[0] * diffs[0]
    for rho, d in zip(rhos[1:], diffs[1:], strict=True):
        res = res + rho * d
    return base - math.sqrt(ab_t) * b_h * res


def unipc(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, order: int
) -> torch.Tensor:
    """UniPC-``order`` (bh2) with the corrector after every step but the last."""
    m: list[torch.Tensor] = []
    lam: list[float] = []
    steps = len(grid) - 1
    prev = None  # (x_s, m, lam, ab_s, ab_t) of the previous predictor step, for the corrector
    for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        ab_s, ab_t = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_next)
        m_new = predict_x0(x, ev(x, t), ab_s)
        if prev is not None:
            x_s, m_prev, lam_prev, ab_prev = prev
            x = _update(x_s, m_prev, lam_prev, ab_prev, ab_s, m_t=m_new)
        m.append(m_new)
        lam.append(lambda_of(ab_s))
        step_order = min(order, steps - i, len(m))
        m_used, lam_used = m[-step_order:], lam[-step_order:]
        prev = (x, m_used, lam_used, ab_s)
        x = _update(x, m_used, lam_used, ab_s, ab_t)
        del m[:-order], lam[:-order]
    return x
