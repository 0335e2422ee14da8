"""EDM's deterministic second-order sampler (Karras et al. 2022, Algorithm 1) on our grid."""

from __future__ import annotations

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.multistep import heun_step, pseudo_scheme
from pndm.solvers.transfer import ddim_step


def heun(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """Heun's method on dy/dsigma = eps with y = x/sqrt(ab), sigma = sqrt((1-ab)/ab) (EDM eq. 4
    with s(t)=1 after scaling x by 1/sqrt(ab)):

        y_pred = y + (sigma' - sigma) eps(x, t)                      (Euler, Alg. 1 line 5)
        y'     = y + (sigma' - sigma) (eps(x, t) + eps(x_pred, t'))/2  (trapezoid, line 8)

    An Euler step in (y, sigma) is exactly PNDM's transfer (eq. 9), so each step is the pseudo
    improved Euler step. The last step into sigma = 0 is plain Euler (Alg. 1 line 6), as the model
    is not defined there. NFE = 2N - 1.
    """
    scheme = pseudo_scheme(schedule)
    for t, t_next in zip(grid[:-2], grid[1:-1], strict=True):
        x = heun_step(ev, scheme, x, t, t_next, history=[])
    return ddim_step(ev, schedule, x, grid[-2], grid[-1])
