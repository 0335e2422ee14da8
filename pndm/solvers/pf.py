"""Probability-flow ODE solved by an adaptive Runge-Kutta method (torchdiffeq's dopri5).

Song et al. 2021 (score SDE, eq. 13) in the DDIM parameterization (DDIM eq. 14):
y = x / sqrt(ab), sigma = sqrt((1-ab)/ab), dy/dsigma = eps(sqrt(ab) y, t(sigma)). This form has
no schedule derivative and is not stiff near the data, so the step-size control sees the model
only. t(sigma) inverts the schedule's interpolation (fractional t).

The solve runs from the top of the grid down to t = 0; the last interval into the clean image is
one DDIM step at t = 0 (the model is not defined below t = 0). The NFE is whatever the
controller needed plus that one evaluation; :func:`pndm.solvers.solve` reports it.
"""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import alpha_bar_at, ddim_step, sigma_of


def probability_flow(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, tol: float = 1e-5
) -> torch.Tensor:
    """Adaptive dopri5 with rtol = atol = ``tol`` from t = grid[0] to t = 0, then a DDIM step."""
    t_top, t_low = grid[0], grid[-2]
    if t_top > t_low:
        ab_top, ab_low = alpha_bar_at(schedule, t_top), alpha_bar_at(schedule, t_low)

        sigma_top, sigma_low = sigma_of(ab_top), sigma_of(ab_low)

        def velocity(sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # the initial step-size probe may look past the span: keep the model inside it
            s = min(max(float(sigma), sigma_low), sigma_top)
            t = min(max(float(schedule.t_of_sigma(s)), t_low), t_top)
            return ev(y / math.sqrt(1 + s * s), t)

        span = torch.tensor([sigma_top, sigma_low], dtype=x.dtype, device=x.device)
        y = odeint(velocity, x / math.sqrt(ab_top), span, rtol=tol, atol=tol, method="dopri5")[-1]
        x = y * math.sqrt(ab_low)
    return ddim_step(ev, schedule, x, t_low, grid[-1])
