"""Exact eps models for measuring solver error without a trained network.

* :class:`GaussianTestbed`: data x0 ~ N(mu, s^2) per dimension. The optimal eps is closed form and
  the probability-flow ODE keeps z = (x_t - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab) constant, so the
  exact x_0 reached from any x_t is mu + s z.
* :class:`FiniteDataTestbed`: data is a handful of points; the ideal denoiser E[x0 | x_t] is the
  softmax-weighted mean of the points. Non-linear; its reference solution is a tight adaptive solve.

Both take ``eps(x, t)`` with the timestep index t (any x dtype/device) like a real model, and
``eps_at(x, ab)`` directly in alpha_bar (used by the reference solve, which may go below t = 0).
"""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from pndm.schedules import Schedule


class GaussianTestbed:
    """x0 ~ N(mu, s^2 I) with per-dimension mu and s of shape (C, H, W)."""

    def __init__(self, schedule: Schedule, mu: torch.Tensor, s: torch.Tensor):
        self.schedule, self.mu, self.s = schedule, mu, s

    @classmethod
    def random(cls, schedule: Schedule, shape=(3, 8, 8), seed: int = 0, dtype=torch.float64):
        """mu uniform in [-0.5, 0.5], s uniform in [0.3, 0.7] (image-like scales)."""
        g = torch.Generator().manual_seed(seed)
        mu = torch.rand(shape, generator=g, dtype=dtype) - 0.5
        s = 0.3 + 0.4 * torch.rand(shape, generator=g, dtype=dtype)
        return cls(schedule, mu, s)

    def _marginal(self, ab, like: torch.Tensor):
        mu, s = self.mu.to(like), self.s.to(like)
        return ab**0.5 * mu, (ab * s**2 + 1 - ab) ** 0.5

    def eps_at(self, x: torch.Tensor, ab) -> torch.Tensor:
        """E[eps | x_t] = sqrt(1-ab) (x - sqrt(ab) mu) / (ab s^2 + 1 - ab)."""
        mean, std = self._marginal(ab, x)
        return (1 - ab) ** 0.5 * (x - mean) / std**2

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t.double().cpu()).to(x).view(-1, 1, 1, 1)
        return self.eps_at(x, ab)

    def prior(self, batch: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch of x_t drawn from the exact marginal at timestep t."""
        ab = float(self.schedule.alpha_bar(t))
        mean, std = self._marginal(ab, self.mu)
        z = torch.randn((batch, *self.mu.shape), generator=generator, dtype=self.mu.dtype)
        return mean + std * z

    def exact_x0(self, x_t: torch.Tensor, t: float) -> torch.Tensor:
        """The probability-flow ODE's endpoint: x_0 = mu + s * (x_t - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab)."""
        mean, std = self._marginal(float(self.schedule.alpha_bar(t)), x_t)
        return self.mu.to(x_t) + self.s.to(x_t) * (x_t - mean) / std


class FiniteDataTestbed:
    """Data = ``points`` (n, C, H, W) with equal weight; eps from the ideal denoiser."""

    def __init__(self, schedule: Schedule, points: torch.Tensor):
        self.schedule, self.points = schedule, points

    @classmethod
    def random(cls, schedule: Schedule, n: int = 6, shape=(1, 4, 4), seed: int = 0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        return cls(schedule, torch.rand((n, *shape), generator=g, dtype=dtype) * 2 - 1)

    def denoise(self, x: torch.Tensor, ab) -> torch.Tensor:
        """E[x0 | x_t] = sum_i w_i d_i, w = softmax(-|x - sqrt(ab) d_i|^2 / (2 (1 - ab)))."""
        d = self.points.to(x)
        ab = torch.as_tensor(ab, dtype=x.dtype, device=x.device).reshape(-1, 1)
        sq = ((x.flatten(1)[:, None, :] - ab.sqrt()[:, :, None] * d.flatten(1)[None]) ** 2).sum(-1)
        w = torch.softmax(-sq / (2 * (1 - ab)), dim=1)
        return (w @ d.flatten(1)).view_as(x)

    def eps_at(self, x: torch.Tensor, ab) -> torch.Tensor:
        """eps = (x - sqrt(ab) E[x0 | x]) / sqrt(1 - ab)."""
        ab_b = torch.as_tensor(ab, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return (x - ab_b.sqrt() * self.denoise(x, ab)) / (1 - ab_b).sqrt()

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.schedule.alpha_bar(t.double().cpu()).to(x)
        return self.eps_at(x, ab)

    def prior(self, batch: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(ab) d + sqrt(1-ab) n for random data points d."""
        ab = float(self.schedule.alpha_bar(t))
        idx = torch.randint(len(self.points), (batch,), generator=generator)
        n = torch.randn((batch, *self.points.shape[1:]), generator=generator, dtype=self.points.dtype)
        return math.sqrt(ab) * self.points[idx] + math.sqrt(1 - ab) * n

    def reference_x0(self, x_t: torch.Tensor, t: float, tol: float = 1e-10) -> torch.Tensor:
        """Tight dopri5 solve of dy/dsigma = eps (y = x/sqrt(ab)) from sigma(t) to sigma_min, where
        the posterior is a single point, then x0 = E[x0 | x] there."""
        sigma_top = float(self.schedule.sigma(t))
        sigma_min = 1e-4

        def velocity(sigma, y):
            ab = 1 / (1 + sigma**2)
            return self.eps_at(y * ab.sqrt(), ab.expand(y.shape[0]))

        span = torch.tensor([sigma_top, sigma_min], dtype=x_t.dtype)
        y = odeint(velocity, x_t * math.sqrt(1 + sigma_top**2), span, rtol=tol, atol=tol, method="dopri5")[-1]
        ab_min = 1 / (1 + sigma_min**2)
        return self.denoise(y * math.sqrt(ab_min), torch.full((y.shape[0],), ab_min, dtype=y.dtype))


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference."""
    return float(((a - b) ** 2).mean().sqrt())


def observed_order(steps: list[int], errors: list[float]) -> float:
    """Convergence order p in error ~ C N^-p: minus the least-squares slope of log(error) on log(N)."""
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return -float((lx * ly).sum() / (lx * lx).sum())
