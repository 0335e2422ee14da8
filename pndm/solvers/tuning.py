"""Optimising a time grid for one model: derivative-free search over the timesteps t_i.

The N timesteps keep their ends (t = T-1 where x_T is drawn, t = 0 before the step into the clean
image) and are parameterised monotonically by N-1 logits z:

    gaps = softmax(z),   u_j = sum_{k<j} gaps_k  (u_0 = 0, u_{N-1} = 1),   t_i = (T-1) u_i,

so every z gives strictly increasing points and the search is unconstrained. The objective is the
RMSE of a solve on those points against a reference x_0 (a high-accuracy solve from the same x_T).
The search is compass (coordinate pattern) search (Kolda, Lewis & Torczon 2003, "Optimization by
direct search", Alg. 3.2): try z +- step e_k for each k, keep any improvement, halve the step after a
sweep without one, stop when the step or the evaluation budget runs out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pndm.schedules import Schedule
from pndm.solvers.api import solve
from pndm.solvers.evaluator import EpsFn
from pndm.solvers.grid import GridArg, make_grid


def points_of_logits(z: torch.Tensor, T: int) -> list[float]:
    """Descending timesteps (T-1) u_i from the logits z (module doc); N = len(z) + 1."""
    u = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.softmax(z, 0), 0)])
    u[-1] = 1.0
    return ((T - 1) * u).flip(0).tolist()


def logits_of_points(points, T: int) -> torch.Tensor:
    """Inverse of :func:`points_of_logits` (up to a constant): z = log(gaps)."""
    u = torch.as_tensor(points, dtype=torch.float64).flip(0) / (T - 1)
    return torch.log(torch.diff(u))


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference (in float64)."""
    return float(((a.double() - b.double()) ** 2).mean().sqrt())


def tune_grid(
    eps: EpsFn,
    x_T: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    steps: int,
    schedule: Schedule,
    *,
    start: GridArg = "quad",
    budget: int = 150,
    step: float = 0.5,
    min_step: float = 0.03,
    on_eval: Callable[[int, float], None] | None = None,
) -> tuple[list[float], float, float]:
    """Compass search for the ``steps`` timesteps of ``method`` from ``x_T`` (drawn at t = T-1) that
    best reproduce ``reference``. Starts from ``start`` (a grid whose ends are T-1 and 0). Returns
    (points, error of the start grid, error of the tuned points); ``on_eval(count, best)`` after every
    solve. At most ``budget`` solves."""
    T = schedule.T
    first = make_grid(start, steps, schedule)[:-1]

    def error(points) -> float:
        return rmse(solve(eps, x_T, method, steps, schedule, grid=points).x0, reference)

    start_error = error(first.tolist())
    if steps < 3:  # no interior point to move
        return first.tolist(), start_error, start_error
    z = logits_of_points(first, T)
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
