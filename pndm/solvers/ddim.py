"""DDIM (Song et al. 2021): one model evaluation per step, optionally stochastic (eta > 0)."""

from __future__ import annotations

import math

import torch

from pndm.errors import PndmError
from pndm.schedules import Schedule
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import alpha_bar_at, predict_x0


def ddim(
    ev: EpsEvaluator,
    x: torch.Tensor,
    grid: list[float],
    schedule: Schedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
) -> torch.Tensor:
    """DDIM, eq. 12 with sigma_t(eta) from eq. 16:

        x_next = sqrt(ab') x0 + sqrt(1 - ab' - s^2) eps + s z,
        s = eta * sqrt((1-ab')/(1-ab)) * sqrt(1 - ab/ab'),   z ~ N(0, I).

    eta = 0 is the deterministic sampler (PNDM's transfer, eq. 9); eta = 1 is DDPM's ancestral
    variance. NFE = N. ``generator`` may be one generator for the batch or a list with one per
    image (then image i's noise depends only on its own generator, not on the batch).
    """
    for t, t_next in zip(grid[:-1], grid[1:], strict=True):
        ab, ab_next = alpha_bar_at(schedule, t), alpha_bar_at(schedule, t_next)
        eps = ev(x, t)
        s = eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
        x = math.sqrt(ab_next) * predict_x0(x, eps, ab) + math.sqrt(max(1 - ab_next - s * s, 0.0)) * eps
        if s > 0:
            x = x + s * standard_normal_like(x, generator)
    return x


def standard_normal_like(x: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None):
    """z ~ N(0, I) shaped like x, from one generator or one per image (drawn on its device)."""
    if not isinstance(generator, (list, tuple)):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != x.shape[0]:
        raise PndmError(f"got {len(generator)} generators for a batch of {x.shape[0]}: pass one per image")
    draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
    return torch.stack(draws).to(x.device)
