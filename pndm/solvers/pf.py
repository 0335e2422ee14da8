"""Probability-flow ODE solved by an adaptive Runge-Kutta method (torchdiffeq's dopri5).

Song et al. 2021 (score SDE, eq. 13) in the DDIM parameterization (DDIM eq. 14):
y = x / sqrt(ab), sigma = sqrt((1-ab)/ab), dy/dsigma = eps(sqrt(ab) y, t(sigma)). This form has
no schedule derivative and is not stiff near the data, so the step-size control sees the model
only. The integration variable is u = log sigma (= -lambda, minus the half log-SNR of
DPM-Solver eq. 3.1): dy/du = sigma * eps. In sigma itself the solution is nearly linear over
most of the span (sigma from ~100 down to ~1) and bends only for sigma below the data scale,
so the controller keeps proposing one step across the whole bend and having it rejected; in
log sigma the natural step is proportional to sigma. t(sigma) inverts the schedule's
interpolation (fractional t).

The solve runs from the top of the grid down to t = 0; the last interval into the clean image is
one DDIM step at t = 0 (the model is not defined below t = 0). The controller's last step is cut
to end exactly at t = 0: left to itself, torchdiffeq steps past the end time and interpolates back,
and with a loose tolerance most of that step's stages would fall below t = 0. The NFE is whatever
the controller needed plus that one evaluation; :func:`pndm.solvers.solve` reports it.
"""

from __future__ import annotations

import math

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import alpha_bar_at, ddim_step, sigma_of


def probability_flow(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, tol: float = 1e-5
) -> torch.Tensor:
    """Adaptive dopri5 in log sigma with rtol = atol = ``tol`` from t = grid[0] to t = 0, then a DDIM step."""
    t_top, t_low = grid[0], grid[-2]
    if t_top > t_low:
        from torchdiffeq import odeint  # here, not at the top: it imports scipy (~1 s) for pf only

        ab_top, ab_low = alpha_bar_at(schedule, t_top), alpha_bar_at(schedule, t_low)

        sigma_top, sigma_low = sigma_of(ab_top), sigma_of(ab_low)

        def velocity(log_sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            """dy/dlog(sigma) = sigma * eps(x, t(sigma)) with x = y / sqrt(1 + sigma^2)."""
            # only the initial step-size probe can ask for a sigma past the span; rounding in
            # exp and t_of_sigma can leave [t_low, t_top] by an ulp
            s = min(max(math.exp(float(log_sigma)), sigma_low), sigma_top)
            t = min(max(float(schedule.t_of_sigma(s)), t_low), t_top)
            return s * ev(y / math.sqrt(1 + s * s), t)

        span = torch.tensor([math.log(sigma_top), math.log(sigma_low)], dtype=x.dtype, device=x.device)
        # torchdiffeq steps past the last time and interpolates back; past sigma_low the model is
        # undefined, so step_t cuts the last step to land on it
        y = odeint(
            velocity, x / math.sqrt(ab_top), span, rtol=tol, atol=tol, method="dopri5",
            options={"step_t": span[-1:]},
        )[-1]
        x = y * math.sqrt(ab_low)
    return ddim_step(ev, schedule, x, t_low, grid[-1])
