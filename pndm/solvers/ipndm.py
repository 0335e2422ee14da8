"""iPNDM (Zhang & Chen 2023, DEIS, sec. 4 "improved PNDM")."""

from __future__ import annotations

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.multistep import linear_multistep, pseudo_scheme


def ipndm(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """Adams-Bashforth on eps in the DDIM parameterization y = x/sqrt(ab), sigma = sqrt((1-ab)/ab),
    where dy/dsigma = eps and one step is y' = y + (sigma' - sigma) * eps_combined (which is PNDM's
    transfer, eq. 9). The warm-up uses lower-order multistep (orders 1, 2, 3, then 4) instead of
    Runge-Kutta, so NFE = N."""
    return linear_multistep(ev, x, grid, pseudo_scheme(schedule), max_order=4, warmup=None)
