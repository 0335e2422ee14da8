"""Clipping the denoised estimate: an optional eps transform usable with every sampler.

Static thresholding (DDPM's ``clip_denoised``, Ho et al. 2020 reference code; Saharia et al.
2022, sec. 2.3): from eps, the denoised estimate is

    x0_hat = (x_t - sqrt(1 - ab) eps) / sqrt(ab)            (DDIM eq. 12, "predicted x0"),

clipped to the data range [-1, 1], and eps is re-derived so that the sampler steps towards the
clipped estimate:

    eps' = (x_t - sqrt(ab) clip(x0_hat)) / sqrt(1 - ab).

At large t, 1/sqrt(ab) amplifies small eps errors (x 160 at t = 999 of the linear schedule), so an
imperfect model can commit a trajectory to an out-of-range image in its first steps; clipping
bounds that. It changes the sampler's answer (no longer the model's probability-flow ODE), so it
is off by default, as in PNDMScheduler, and recorded wherever it is used.
"""

from __future__ import annotations

import torch

from pndm.schedules import Schedule


def clip_denoised(x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """eps' whose denoised estimate is clip(x0_hat, -1, 1); ``t`` is the (B,) timestep of ``x``."""
    ab = schedule.alpha_bar(t).to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
    x0_hat = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
    return (x - ab.sqrt() * x0_hat) / (1 - ab).sqrt()
