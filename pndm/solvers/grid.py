"""Time grids: which N timesteps a fixed-step sampler evaluates the model at.

Every grid is N strictly decreasing timesteps in [0, T-1] (fractional values allowed) followed by
:data:`CLEAN` (-1, alpha_bar = 1, the clean image). ``GRIDS`` lists them:

* ``leading``  t_i = i * (T // N) (DDIM/PNDM, diffusers' "leading"; the top is below T - 1).
* ``trailing`` t_k = round(T - k T/N) - 1, k = 0..N-1 (diffusers' "trailing"; the lowest is T/N - 1).
* ``linspace`` t_i = (T-1) i/(N-1).
* ``quad``     t_i = (T-1) (i/(N-1))^p, option p = ``power`` (DDIM's "quadratic" skip for p = 2;
  DEIS's time-quadratic grid).
* ``karras``   sigma_i = (s_max^(1/rho) + (i/(N-1)) (s_min^(1/rho) - s_max^(1/rho)))^rho (EDM eq. 5)
  between sigma(T-1) and sigma(0) of the schedule, t_i = t(sigma_i); option ``rho``.
* ``logsnr``   lambda = log(alpha/sigma) uniform between lambda(T-1) and lambda(0) (DPM-Solver's
  "logSNR" grid).
* ``tuned``    explicit timesteps from a recipe (``pndm-run tune``); pass them as ``grid=[...]``.

A grid is named by a string ``"name"`` or ``"name:value"`` (the value sets the grid's one option:
``quad:3``, ``karras:5``), or given as explicit timesteps (a descending sequence, ``tuned``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pndm.errors import PndmError
from pndm.schedules import Schedule

#: Grid value that stands for the clean image (alpha_bar = 1) after the last model step.
CLEAN = -1.0


@dataclass(frozen=True)
class GridInfo:
    """One grid family: ``build(steps, schedule, value)`` returns N descending timesteps (float64).
    ``option`` names its one numeric option (None: none) with its default and allowed range."""

    name: str
    description: str
    build: Callable[[int, Schedule, float | None], torch.Tensor] | None
    option: str | None = None
    default: float | None = None
    low: float | None = None
    high: float | None = None


def _unit(steps: int) -> torch.Tensor:
    """i/(N-1) for i = N-1 .. 0 (just [1] for N = 1: the single point is the top)."""
    if steps == 1:
        return torch.ones(1, dtype=torch.float64)
    return torch.arange(steps - 1, -1, -1, dtype=torch.float64) / (steps - 1)


def _leading(steps: int, schedule: Schedule, _value) -> torch.Tensor:
    return time_grid(steps, schedule.T)[:-1]


def _trailing(steps: int, schedule: Schedule, _value) -> torch.Tensor:
    k = torch.arange(steps, dtype=torch.float64)
    return torch.round(schedule.T - k * schedule.T / steps) - 1


def _power(steps: int, schedule: Schedule, power: float) -> torch.Tensor:
    return (schedule.T - 1) * _unit(steps) ** power


def _linspace(steps: int, schedule: Schedule, _value) -> torch.Tensor:
    return _power(steps, schedule, 1.0)


def _karras(steps: int, schedule: Schedule, rho: float) -> torch.Tensor:
    """EDM eq. 5, sigma_i = (s_max^(1/rho) + (1 - u_i)(s_min^(1/rho) - s_max^(1/rho)))^rho, u_i = i/(N-1)."""
    s_max, s_min = float(schedule.sigma(schedule.T - 1)), float(schedule.sigma(0))
    a, b = s_max ** (1 / rho), s_min ** (1 / rho)
    sigmas = (b + _unit(steps) * (a - b)) ** rho
    return _ts_of_sigmas(sigmas, schedule)


def _logsnr(steps: int, schedule: Schedule, _value) -> torch.Tensor:
    """lambda_i uniform; sigma = exp(-lambda) in y = x/sqrt(ab) (lambda = -log sigma)."""
    l_top, l_low = -math.log(float(schedule.sigma(schedule.T - 1))), -math.log(float(schedule.sigma(0)))
    return _ts_of_sigmas(torch.exp(-(l_low + _unit(steps) * (l_top - l_low))), schedule)


def _ts_of_sigmas(sigmas: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """t(sigma), with sigma clamped into [sigma(0), sigma(T-1)] against rounding at the two ends."""
    s_min, s_max = float(schedule.sigma(0)), float(schedule.sigma(schedule.T - 1))
    return schedule.t_of_sigma(sigmas.clamp(s_min, s_max)).clamp(0, schedule.T - 1)


_TABLE = [
    GridInfo("leading", "t_i = i*(T//N): DDIM/PNDM and diffusers' leading spacing", _leading),
    GridInfo("trailing", "t_k = round(T - k*T/N) - 1: diffusers' trailing spacing", _trailing),
    GridInfo("linspace", "t_i = (T-1) i/(N-1): uniform from T-1 to 0", _linspace),
    GridInfo("quad", "t_i = (T-1) (i/(N-1))^power: dense near the data", _power, "power", 2.0, 0.5, 6.0),
    GridInfo("karras", "EDM's sigma grid (eq. 5) between sigma(T-1) and sigma(0)", _karras,
             "rho", 7.0, 1.0, 20.0),
    GridInfo("logsnr", "uniform in log-SNR between T-1 and 0", _logsnr),
    GridInfo("tuned", "explicit timesteps from a recipe (pndm-run tune)", None),
]

#: name -> :class:`GridInfo`, in the order they are documented.
GRIDS: dict[str, GridInfo] = {g.name: g for g in _TABLE}

GridArg = str | Sequence[float] | torch.Tensor


def parse_grid(spec: str) -> tuple[GridInfo, float | None]:
    """``"name"`` or ``"name:value"`` -> (grid, option value or its default); one-line errors."""
    name, _, value = spec.partition(":")
    info = GRIDS.get(name)
    if info is None:
        raise PndmError(f"unknown grid {name!r}: choose one of {', '.join(GRIDS)}")
    if info.build is None:
        raise PndmError("grid 'tuned' comes from a recipe: pass its timesteps as grid=[...] "
                        "(or pndm-run sample --recipe FILE / --grid tuned)")
    if not value:
        return info, info.default
    if info.option is None:
        raise PndmError(f"grid {name!r} takes no option (got {spec!r})")
    try:
        number = float(value)
    except ValueError:
        raise PndmError(f"grid option {info.option} must be a number (got {spec!r}, "
                        f"e.g. {name}:{info.default:g})") from None
    if not info.low <= number <= info.high:
        raise PndmError(f"grid {name}: {info.option} must be in [{info.low:g}, {info.high:g}] "
                        f"(got {number:g})")
    return info, number


def explicit_grid(points, schedule: Schedule) -> torch.Tensor:
    """Validate explicit timesteps: strictly decreasing, within [0, T-1]."""
    ts = torch.as_tensor(points, dtype=torch.float64).flatten()
    if ts.numel() == 0 or not bool(torch.isfinite(ts).all()):
        raise PndmError("an explicit grid needs finite timesteps (got none or NaN/Inf)")
    if bool((ts[1:] >= ts[:-1]).any()) or float(ts.min()) < 0 or float(ts.max()) > schedule.T - 1:
        raise PndmError(f"an explicit grid must be strictly decreasing timesteps in [0, {schedule.T - 1}] "
                        f"(got {[round(float(t), 3) for t in ts[:6]]}{'...' if ts.numel() > 6 else ''})")
    return ts


def make_grid(grid: GridArg, steps: int, schedule: Schedule) -> torch.Tensor:
    """The N = ``steps`` descending timesteps of ``grid`` followed by :data:`CLEAN` (N + 1 float64
    values). Explicit timesteps must number exactly ``steps``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= schedule.T:
        raise PndmError(f"steps must be an integer in [1, T={schedule.T}] (got {steps!r})")
    if isinstance(grid, str):
        info, value = parse_grid(grid)
        ts = info.build(steps, schedule, value)
        if bool((ts[1:] >= ts[:-1]).any()):
            raise PndmError(f"grid {grid!r} has repeated timesteps at N={steps} (T={schedule.T}): "
                            "use fewer steps or another grid")
    else:
        ts = explicit_grid(grid, schedule)
        if ts.numel() != steps:
            raise PndmError(f"the explicit grid has {ts.numel()} timesteps but steps={steps}: "
                            "they must agree")
    return torch.cat([ts, torch.tensor([CLEAN], dtype=torch.float64)])


def time_grid(steps: int, T: int) -> torch.Tensor:
    """The leading grid for a schedule of length T: ``t_i = i * (T // steps)``, ``i = N-1 .. 0``, then
    :data:`CLEAN`. Exactly ``steps`` points even when ``steps`` does not divide ``T`` (the top point is
    then below ``T - 1``). Returns ``steps + 1`` float64 values."""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise PndmError(f"steps must be an integer in [1, T={T}] (got {steps!r})")
    ts = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (T // steps)
    return torch.cat([ts, torch.tensor([CLEAN], dtype=torch.float64)])
