"""The samplers of the PNDM paper (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
Models on Manifolds"), plus PLMS as diffusers runs it.

All are :func:`~pndm.solvers.multistep.linear_multistep` configurations:

===========  =================  ===========  =============  ==========
method       gradient/transfer  warm-up      then           NFE
===========  =================  ===========  =============  ==========
``s-pndm``   pseudo (eq. 9)     1 Heun step  AB2            N + 1
``plms``     pseudo (eq. 9)     1 Heun step  AB2, AB3, AB4  N + 1
``f-pndm``   pseudo (eq. 9)     3 PRK steps  AB4 (eq. 12)   N + 9
``fon``      classical (eq. 6)  3 RK4 steps  AB4            N + 9
===========  =================  ===========  =============  ==========
"""

from __future__ import annotations

import torch

from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.multistep import classical_scheme, linear_multistep, pseudo_scheme
from pndm.solvers.transfer import ddim_step


def s_pndm(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """S-PNDM: pseudo improved Euler for the first step, then the 2-step pseudo linear multistep
    eps' = (3 e_t - e_{t+delta}) / 2 (PNDM sec. 4.2 / appendix). NFE = N + 1."""
    return linear_multistep(ev, x, grid, pseudo_scheme(schedule), max_order=2, warmup="heun")


def plms(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """PLMS without Runge-Kutta, step for step as diffusers' PNDMScheduler(skip_prk_steps=True):
    a pseudo improved Euler first step (its second evaluation is the repeated timestep in
    diffusers), then pseudo Adams-Bashforth of order 2, 3 and from then on 4 (eq. 12). NFE = N + 1."""
    return linear_multistep(ev, x, grid, pseudo_scheme(schedule), max_order=4, warmup="heun")


def f_pndm(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """F-PNDM: three pseudo Runge-Kutta steps (eq. 13, midpoints at t - delta/2), then the pseudo
    linear multistep eps' = (55 e_t - 59 e_{t+d} + 37 e_{t+2d} - 9 e_{t+3d}) / 24 (eq. 12).
    NFE = 4 * 3 + (N - 3) = N + 9."""
    return linear_multistep(ev, x, grid, pseudo_scheme(schedule), max_order=4, warmup="runge-kutta")


def fon(ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule) -> torch.Tensor:
    """FON, the paper's classical fourth-order baseline: Runge-Kutta 4 for three steps, then
    Adams-Bashforth 4, both on the ODE dx/dt (eq. 6) with straight-line moves and the same grid and
    evaluation points as F-PNDM.

    The ODE in t is defined for t in [0, T-1] only (the model is), so the last interval from t=0
    to the clean image is one DDIM step (eq. 9) with eps evaluated at t=0. NFE = N + 9.
    """
    x = linear_multistep(ev, x, grid[:-1], classical_scheme(schedule), max_order=4, warmup="runge-kutta")
    return ddim_step(ev, schedule, x, grid[-2], grid[-1])
