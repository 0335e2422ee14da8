"""Noise schedules of discrete-time diffusion models (DDPM, iDDPM).

A schedule holds ``T`` betas and the products ``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``
(Ho et al. 2020, eq. 4: ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``), all in
float64. Index ``t`` runs over ``0 .. T-1`` exactly as the model was trained; index ``-1`` is
the clean image, ``alpha_bar(-1) = 1``.

Fractional timesteps (the midpoints of pseudo Runge-Kutta steps, probability-flow solves)
use **piecewise-linear interpolation of log alpha_bar** between the integer nodes
``-1, 0, 1, ..., T-1`` (node -1 has log alpha_bar = 0). Within ``[j-1, j]`` this is exactly
a constant per-step decay ``alpha_bar(t) = alpha_bar[j-1] * alpha_j ** (t - j + 1)``, so the
continuous schedule agrees with the discrete one at every integer index, is monotone, and
has a closed-form inverse (:meth:`Schedule.t_of_alpha_bar`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pndm.errors import PndmError

SCHEDULE_NAMES = ("linear", "quad", "cosine")


def _linear_betas(T: int) -> torch.Tensor:
    """DDPM (Ho et al. 2020, sec. 4): betas linear from 1e-4 to 0.02."""
    return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)


def _quad_betas(T: int) -> torch.Tensor:
    """DDIM/PNDM "quad": sqrt(beta) linear from sqrt(1e-4) to sqrt(0.02), squared."""
    return torch.linspace(1e-4**0.5, 0.02**0.5, T, dtype=torch.float64) ** 2


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM (Nichol & Dhariwal 2021, eq. 17): f(t) = cos^2((t/T + s)/(1 + s) * pi/2),
    alpha_bar = f(t)/f(0), beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), 0.999)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


_BETAS = {"linear": _linear_betas, "quad": _quad_betas, "cosine": _cosine_betas}


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule with a continuous extension to fractional t (see module doc)."""

    name: str
    T: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def _log_nodes(self) -> torch.Tensor:
        """log alpha_bar at the nodes -1, 0, ..., T-1 (T+1 values, the first is 0)."""
        zero = torch.zeros(1, dtype=torch.float64)
        return torch.cat([zero, torch.log(self.alphas_cumprod)])

    def _check_range(self, t: torch.Tensor) -> None:
        if t.numel() and (bool((t < -1).any()) or bool((t > self.T - 1).any())):
            raise PndmError(
                f"timestep out of range [-1, {self.T - 1}] for the {self.name} schedule "
                f"(got min {float(t.min()):g}, max {float(t.max()):g}): pass indices in that range"
            )

    def log_alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """log alpha_bar(t), piecewise linear between integer nodes; float64 on t's device."""
        t = torch.as_tensor(t, dtype=torch.float64)
        self._check_range(t)
        nodes = self._log_nodes.to(t.device)
        left = torch.floor(t).clamp(-1, self.T - 2)  # segment [left, left + 1]
        w = t - left
        i = (left + 1).long()  # position of node `left` in `nodes`
        return (1 - w) * nodes[i] + w * nodes[i + 1]

    def alpha_bar(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar(t) for (fractional) t in [-1, T-1]; alpha_bar(-1) = 1. Float64."""
        return torch.exp(self.log_alpha_bar(t))

    def dlog_alpha_bar_dt(self, t: torch.Tensor | float) -> torch.Tensor:
        """d log alpha_bar / dt of the interpolant: log(1 - beta_j) on (j-1, j].

        At an integer t = j the slope of the segment below (towards the data) is used, the
        direction a sampler moves in.
        """
        t = torch.as_tensor(t, dtype=torch.float64)
        self._check_range(t)
        j = torch.ceil(t).clamp(0, self.T - 1).long()
        return torch.log1p(-self.betas.to(t.device)[j])

    def t_of_alpha_bar(self, alpha_bar: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`alpha_bar`: the fractional t in [-1, T-1] with that alpha_bar."""
        target = -torch.log(torch.as_tensor(alpha_bar, dtype=torch.float64))
        rising = -self._log_nodes.to(target.device)  # increasing in t
        if target.numel() and (bool((target < 0).any()) or bool((target > rising[-1]).any())):
            raise PndmError(
                f"alpha_bar outside the {self.name} schedule's range "
                f"[{math.exp(-float(rising[-1])):.3g}, 1]: pass a value in that range"
            )
        hi = torch.searchsorted(rising, target).clamp(1, self.T)
        lo = hi - 1
        w = (target - rising[lo]) / (rising[hi] - rising[lo])
        return lo.to(torch.float64) - 1 + w

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """sigma(t) = sqrt((1 - alpha_bar)/alpha_bar): noise level of x/sqrt(alpha_bar) (EDM, DDIM eq. 14)."""
        return torch.sqrt(torch.expm1(-self.log_alpha_bar(t)))

    def t_of_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Inverse of :meth:`sigma`: alpha_bar = 1 / (1 + sigma^2)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.t_of_alpha_bar(1 / (1 + sigma**2))


def make_schedule(name: str = "linear", T: int = 1000) -> Schedule:
    """Build the named schedule (``linear``, ``quad`` or ``cosine``) over ``T`` steps."""
    if name not in _BETAS:
        raise PndmError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULE_NAMES)}")
    if not isinstance(T, int) or isinstance(T, bool) or T < 2:
        raise PndmError(f"schedule length T must be an integer >= 2 (got {T!r})")
    betas = _BETAS[name](T)
    return Schedule(name=name, T=T, betas=betas, alphas_cumprod=torch.cumprod(1 - betas, dim=0))
