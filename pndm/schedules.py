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

A :class:`pndm.schedule_spec.ScheduleSpec` describes a schedule in data (the engine manifest's
``schedule`` object): a named kind with its beta range, or ``custom`` with explicit betas;
:func:`schedule_betas` computes its betas and :func:`schedule_from_diffusers` reads one from a
diffusers scheduler config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pndm.errors import PndmError
from pndm.schedule_spec import ScheduleSpec

# diffusers' beta_schedule names -> ours (DESIGN.md: scaled_linear is DDIM's quad).
DIFFUSERS_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "quad", "squaredcos_cap_v2": "cosine"}
# Scheduler-config fields that change the model's noise levels and that pndm cannot reproduce:
# field -> the value pndm supports.
UNSUPPORTED_SCHEDULER_FIELDS = {"rescale_betas_zero_snr": False}


def _linear_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDPM (Ho et al. 2020, sec. 4): betas linear from beta_start (1e-4) to beta_end (0.02)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def _quad_betas(T: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """DDIM/PNDM "quad" (diffusers "scaled_linear"): sqrt(beta) linear from sqrt(beta_start) to
    sqrt(beta_end), squared."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def _cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """iDDPM (Nichol & Dhariwal 2021, eq. 17): f(t) = cos^2((t/T + s)/(1 + s) * pi/2),
    alpha_bar = f(t)/f(0), beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t), 0.999)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def schedule_betas(spec: ScheduleSpec) -> torch.Tensor:
    """The T betas of ``spec`` (float64)."""
    if spec.name == "linear":
        return _linear_betas(spec.T, spec.beta_start, spec.beta_end)
    if spec.name == "quad":
        return _quad_betas(spec.T, spec.beta_start, spec.beta_end)
    if spec.name == "cosine":
        return _cosine_betas(spec.T)
    return torch.tensor(spec.betas, dtype=torch.float64)


def schedule_from_diffusers(config: dict[str, Any], what: str = "scheduler config") -> ScheduleSpec:
    """The schedule a diffusers scheduler config (``scheduler_config.json``) describes.

    ``trained_betas`` -> custom; ``beta_schedule`` linear -> linear, scaled_linear -> quad,
    squaredcos_cap_v2 -> cosine, with ``beta_start``/``beta_end``/``num_train_timesteps``
    (diffusers' defaults 1e-4, 0.02, 1000 when absent). Anything else: one line naming the field.
    """
    if "beta_schedule" not in config and "trained_betas" not in config and "sigma_max" in config:
        kind = config.get("_class_name", "this scheduler")
        raise PndmError(f"{what}: {kind} describes noise levels by sigma (sigma_min/sigma_max), not "
                        "betas; give the schedule to sample with: --schedule with --beta-start/--beta-end "
                        "or --betas")
    for key, supported in UNSUPPORTED_SCHEDULER_FIELDS.items():
        if config.get(key, supported) != supported:
            raise PndmError(f"{what}: {key}={config[key]!r} is not supported (pndm needs {supported!r}); "
                            "use a model trained without it")
    T = config.get("num_train_timesteps", 1000)
    betas = config.get("trained_betas")
    try:
        if betas is not None:
            return ScheduleSpec("custom", betas=tuple(betas))
        kind = config.get("beta_schedule", "linear")
        if kind not in DIFFUSERS_BETA_SCHEDULES:
            raise PndmError(f"beta_schedule={kind!r} is not supported; supported: "
                            f"{', '.join(DIFFUSERS_BETA_SCHEDULES)}, or explicit trained_betas")
        name = DIFFUSERS_BETA_SCHEDULES[kind]
        if name == "cosine":
            return ScheduleSpec(name, T)
        return ScheduleSpec(name, T, config.get("beta_start", 1e-4), config.get("beta_end", 0.02))
    except PndmError as exc:
        raise PndmError(f"{what}: {exc}") from None
    except (TypeError, ValueError):
        raise PndmError(f"{what}: num_train_timesteps, beta_start, beta_end or trained_betas has the wrong "
                        "type; fix the scheduler config") from None


def interpolate_log_alpha_bar(nodes: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log alpha_bar at fractional ``t`` from ``nodes`` = log alpha_bar at -1, 0, ..., T-1 (module doc).

    Pure tensor code without checks, so it also runs inside an exported graph (t outside
    [-1, T-1] extrapolates the end segments).
    """
    T = nodes.shape[0] - 1
    left = torch.floor(t).clamp(-1, T - 2)  # segment [left, left + 1]
    w = t - left
    i = (left + 1).long()  # position of node `left` in `nodes`
    return (1 - w) * nodes[i] + w * nodes[i + 1]


def sigma_of_log_alpha_bar(log_alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - ab) / ab) = sqrt(expm1(-log ab)) (EDM eq. 4 / DDIM eq. 14), graph-safe.

    ONNX has no Expm1: exporters write exp(y) - 1, which in float32 keeps only ~3 digits of
    y = -log ab ~ 1e-5 near t = 0. Below |y| = 1e-2 the Taylor series y (1 + y/2 (1 + y/3)) is used
    instead (relative error < y^3/24 ~ 4e-8), so exported graphs agree with eager PyTorch.
    """
    y = -log_alpha_bar
    series = y * (1 + y / 2 * (1 + y / 3))
    return torch.sqrt(torch.where(y < 1e-2, series, torch.exp(y) - 1))


@dataclass(frozen=True)
class Schedule:
    """A discrete noise schedule with a continuous extension to fractional t (see module doc)."""

    name: str
    T: int
    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    spec: ScheduleSpec | None = None

    @property
    def log_nodes(self) -> torch.Tensor:
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
        return interpolate_log_alpha_bar(self.log_nodes.to(t.device), t)

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
        rising = -self.log_nodes.to(target.device)  # increasing in t
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


def make_schedule(name: str | ScheduleSpec = "linear", T: int = 1000, *, beta_start: float | None = None,
                  beta_end: float | None = None, betas: Sequence[float] | None = None) -> Schedule:
    """Build a schedule from a :class:`ScheduleSpec`, or from its fields.

    ``make_schedule("linear")`` is DDPM's 1e-4..0.02 over 1000 steps; ``beta_start``/``beta_end``
    give linear/quad another range; ``make_schedule("custom", betas=[...])`` uses explicit betas.
    """
    if isinstance(name, ScheduleSpec):
        spec = name
    else:
        spec = ScheduleSpec(name, None if betas is not None else T, beta_start, beta_end,
                            tuple(betas) if betas is not None else None)
    betas_t = schedule_betas(spec)
    return Schedule(name=spec.name, T=spec.T, betas=betas_t, alphas_cumprod=torch.cumprod(1 - betas_t, dim=0),
                    spec=spec)
