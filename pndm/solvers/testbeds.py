"""Exact eps models for measuring solver error without a trained network.

* :class:`GaussianTestbed`: data x0 ~ N(mu, s^2) per dimension. The optimal eps is closed form and
  the probability-flow ODE keeps z = (x_t - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab) constant, so the
  exact x_0 reached from any x_t is mu + s z.
* :class:`FiniteDataTestbed`: data is a handful of points (slightly blurred); the ideal denoiser
  is the softmax-weighted mean over the points. Non-linear; its reference is a tight adaptive solve.

Both take ``eps(x, t)`` with the timestep index t (any x dtype/device) like a real model, and
``eps_at(x, ab)`` directly in alpha_bar (used by the reference solve, which may go below t = 0).
"""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from pndm.schedules import Schedule
from pndm.solvers.api import solve
from pndm.solvers.grid import GridArg, make_grid
from pndm.solvers.registry import steps_for_nfe


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

    reference_x0 = exact_x0


class FiniteDataTestbed:
    """Data = ``points`` (n, C, H, W), each blurred by N(0, spread^2 I); eps from the ideal denoiser.

    With spread = 0 this is the empirical training set, whose ideal denoiser collapses every
    trajectory exactly onto a training point (every solver then reads error 0); a small spread
    keeps the softmax weighting non-linear while making the endpoint a smooth function of x_T.
    """

    def __init__(self, schedule: Schedule, points: torch.Tensor, spread: float = 0.2):
        self.schedule, self.points, self.spread = schedule, points, spread

    @classmethod
    def random(cls, schedule: Schedule, n: int = 8, shape=(1, 4, 4), seed: int = 0, dtype=torch.float64):
        """n points uniform in [-1, 1]^(C*H*W)."""
        g = torch.Generator().manual_seed(seed)
        return cls(schedule, torch.rand((n, *shape), generator=g, dtype=dtype) * 2 - 1)

    def eps_at(self, x: torch.Tensor, ab) -> torch.Tensor:
        """Mixture posterior: with v = ab spread^2 + 1 - ab, component i gives
        E[eps | x, i] = sqrt(1-ab) (x - sqrt(ab) d_i) / v and has weight
        w_i = softmax_i(-|x - sqrt(ab) d_i|^2 / (2 v)); eps = sum_i w_i E[eps | x, i]."""
        d = self.points.to(x).flatten(1)  # (n, D)
        ab = torch.as_tensor(ab, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # (B, 1, 1)
        v = ab * self.spread**2 + 1 - ab
        diff = x.flatten(1)[:, None, :] - ab.sqrt() * d[None]  # (B, n, D)
        w = torch.softmax(-(diff**2).sum(-1, keepdim=True) / (2 * v), dim=1)
        return ((1 - ab).sqrt() * (w * diff).sum(1, keepdim=True) / v).view_as(x)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.eps_at(x, self.schedule.alpha_bar(t.double().cpu()).to(x))

    def prior(self, batch: int, t: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = sqrt(ab) (d + spread n') + sqrt(1-ab) n for random data points d."""
        ab = float(self.schedule.alpha_bar(t))
        idx = torch.randint(len(self.points), (batch,), generator=generator)
        std = math.sqrt(ab * self.spread**2 + 1 - ab)
        n = torch.randn((batch, *self.points.shape[1:]), generator=generator, dtype=self.points.dtype)
        return math.sqrt(ab) * self.points[idx] + std * n

    def reference_x0(self, x_t: torch.Tensor, t: float, tol: float = 1e-10) -> torch.Tensor:
        """Tight dopri5 solve of dy/dsigma = eps (y = x/sqrt(ab)) from sigma(t) all the way to 0
        (eps is defined there for spread > 0)."""
        sigma_top = float(self.schedule.sigma(t))

        def velocity(sigma, y):
            ab = 1 / (1 + sigma**2)
            return self.eps_at(y * ab.sqrt(), ab.expand(y.shape[0]))

        span = torch.tensor([sigma_top, 0.0], dtype=x_t.dtype)
        y_top = x_t * math.sqrt(1 + sigma_top**2)
        return odeint(velocity, y_top, span, rtol=tol, atol=tol, method="dopri5")[-1]


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root-mean-square difference."""
    return float(((a - b) ** 2).mean().sqrt())


def observed_order(steps: list[int], errors: list[float]) -> float:
    """Convergence order p in error ~ C N^-p: minus the least-squares slope of log(error) on log(N)."""
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return -float((lx * ly).sum() / (lx * lx).sum())


def convergence_table(testbed, methods, steps_list, batch: int = 8, seed: int = 0,
                      grid: GridArg = "leading") -> dict[str, list]:
    """method -> [(NFE, RMSE against the testbed's reference x_0)] for each N in ``steps_list``, on
    ``grid``. x_T is drawn from the exact marginal at the top of the grid (the same draw for every
    method) and its reference x_0 is computed once per top."""
    refs = ReferenceCache(testbed, batch, seed)
    return {method: [grid_error(refs, method, grid, steps) for steps in steps_list] for method in methods}


class ReferenceCache:
    """Start points x_T (the testbed's exact marginal at a grid's top, one seed for all) and their
    reference x_0, computed once per top timestep."""

    def __init__(self, testbed, batch: int = 8, seed: int = 0):
        self.testbed, self.batch, self.seed = testbed, batch, seed
        self._cache: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, t_top: float) -> tuple[torch.Tensor, torch.Tensor]:
        if t_top not in self._cache:
            x = self.testbed.prior(self.batch, t_top, torch.Generator().manual_seed(self.seed))
            self._cache[t_top] = (x, self.testbed.reference_x0(x, t_top))
        return self._cache[t_top]


def grid_error(refs: ReferenceCache, method: str, grid: GridArg, steps: int) -> tuple[int, float]:
    """(NFE, RMSE against the reference) of one deterministic run on ``grid`` from its top."""
    t_top = float(make_grid(grid, steps, refs.testbed.schedule)[0])
    x, ref = refs(t_top)
    run = solve(refs.testbed.eps, x, method, steps, refs.testbed.schedule, grid=grid)
    return run.nfe, rmse(run.x0, ref)


def accuracy_table(refs: ReferenceCache, methods, grids, nfes) -> dict[tuple[str, str], list]:
    """(method, grid) -> [(NFE used, RMSE) or None] for each NFE budget in ``nfes``: each run takes
    the largest N whose NFE fits the budget (None when the method's minimum N does not)."""
    table = {}
    for method in methods:
        for grid in grids:
            row = []
            for budget in nfes:
                steps = steps_for_nfe(method, budget)
                row.append(None if steps is None else grid_error(refs, method, grid, steps))
            table[method, grid] = row
    return table
