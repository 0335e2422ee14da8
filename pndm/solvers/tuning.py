"""Optimising a time grid for one model: derivative-free search over the timesteps t_i.

The top timestep stays at T-1 (where x_T is drawn); the N timesteps are parameterised monotonically
by N logits z:

    g = softmax(z),   u_j = g_0 + ... + g_j  (j = 0..N-1, u_{N-1} = 1),   t_j = (T-1) u_j,

so every z gives strictly increasing points in (0, T-1] (the lowest, (T-1) g_0, is free too) and the
search is unconstrained. The objective is the RMSE of a solve on those points against a reference
x_0 (a high-accuracy solve from the same x_T). The search is compass (coordinate pattern) search
(Kolda, Lewis & Torczon 2003, "Optimization by direct search", Alg. 3.2): try z +- step e_k for each
k, keep any improvement, halve the step after a sweep without one, stop when the step or the
evaluation budget runs out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pndm.schedules import Schedule
from pndm.solvers.api import solve
from pndm.solvers.evaluator import EpsFn
from pndm.solvers.grid import GridArg, make_grid
from pndm.solvers.testbeds import rmse

#: The lowest start point is lifted to this fraction of T-1 so that its logit is finite.
LOWEST = 1e-4


def points_of_logits(z: torch.Tensor, T: int) -> list[float]:
    """Descending timesteps (T-1) u_j from the logits z (module doc); N = len(z)."""
    u = torch.cumsum(torch.softmax(z, 0), 0)
    u[-1] = 1.0
    return ((T - 1) * u).flip(0).tolist()


def logits_of_points(points, T: int) -> torch.Tensor:
    """Logits of descending timesteps rescaled to top T-1 (inverse of :func:`points_of_logits` up to
    a constant; a lowest point 0 is lifted to :data:`LOWEST`): z = log(diff([0, u]))."""
    u = torch.as_tensor(points, dtype=torch.float64).flip(0)
    u = (u / u[-1]).clamp(min=LOWEST)
    return torch.log(torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), u])))


def tune_grid(
    eps: EpsFn,
    x_T: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    steps: int,
    schedule: Schedule,
    *,
    start: GridArg = "quad",
    budget: int = 60,
    step: float = 0.5,
    min_step: float = 0.03,
    on_eval: Callable[[int, float], None] | None = None,
) -> tuple[list[float], float, float]:
    """Compass search for the ``steps`` timesteps of ``method`` from ``x_T`` (drawn at t = T-1) that
    best reproduce ``reference``. Starts from ``start``'s points rescaled to top T-1. Returns (points,
    error of the start, error of the tuned points); ``on_eval(count, best)`` after every solve. At
    most ``budget`` solves."""
    T = schedule.T
    z = logits_of_points(make_grid(start, steps, schedule)[:-1], T)

    def error(points) -> float:
        return rmse(solve(eps, x_T, method, steps, schedule, grid=points).x0, reference)

    start_error = error(points_of_logits(z, T))
    if steps < 2:  # nothing to move: the single point is the top
        return points_of_logits(z, T), start_error, start_error
    best, count = start_error, 1
    while step >= min_step and count < budget:
        improved = False
        for k in range(len(z)):
            for sign in (1.0, -1.0):
                if count >= budget:
                    break
                trial = z.clone()
                trial[k] += sign * step
                value = error(points_of_logits(trial, T))
                count += 1
                if on_eval is not None:
                    on_eval(count, min(best, value))
                if value < best:
                    z, best, improved = trial, value, True
                    break
        if not improved:
            step /= 2
    return points_of_logits(z, T), start_error, best
