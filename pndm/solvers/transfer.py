"""Shared one-step formulas between two noise levels.

Coefficients are computed as Python floats from the float64 schedule, so the same code runs on
CPU and CUDA tensors of any float dtype without host-device copies of the schedule.
"""

from __future__ import annotations

import math

import torch

from pndm.schedules import Schedule


def alpha_bar_at(schedule: Schedule, t: float) -> float:
    """alpha_bar(t) as a Python float (t may be fractional; -1 is the clean image)."""
    return float(schedule.alpha_bar(t))


def transfer(x: torch.Tensor, eps: torch.Tensor, ab: float, ab_next: float) -> torch.Tensor:
    """PNDM's transfer phi(x_t, eps, t, t-delta) (Liu et al. 2022, eq. 9) = deterministic DDIM
    (Song et al. 2021, eq. 12 with sigma = 0):

        x_next = sqrt(ab_next) * (x - sqrt(1-ab) eps) / sqrt(ab) + sqrt(1-ab_next) * eps
               = sqrt(ab_next/ab) x + (sqrt(1-ab_next) - sqrt(ab_next (1-ab) / ab)) eps
    """
    c_x = math.sqrt(ab_next / ab)
    c_eps = math.sqrt(1 - ab_next) - math.sqrt(ab_next * (1 - ab) / ab)
    return c_x * x + c_eps * eps


def predict_x0(x: torch.Tensor, eps: torch.Tensor, ab: float) -> torch.Tensor:
    """Data prediction x0 = (x - sqrt(1-ab) eps) / sqrt(ab) (Ho et al. 2020, from eq. 4)."""
    return (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)


def sigma_of(ab: float) -> float:
    """sigma = sqrt((1-ab)/ab), the noise level of y = x / sqrt(ab) (DDIM eq. 14, EDM's sigma)."""
    return math.sqrt((1 - ab) / ab)


def lambda_of(ab: float) -> float:
    """Half log-SNR lambda = log(alpha/sigma) = 0.5 * log(ab / (1 - ab)) (DPM-Solver eq. 3.1);
    +inf for the clean image."""
    return math.inf if ab >= 1 else 0.5 * math.log(ab / (1 - ab))


def ddim_step(ev, schedule: Schedule, x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """Evaluate eps at (x, t) and move to t_next with :func:`transfer` (one deterministic DDIM step,
    which is Euler's method in (x/sqrt(ab), sigma)). Used for the final step into the clean image."""
    return transfer(x, ev(x, t), alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_next))
