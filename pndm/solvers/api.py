"""The public entry points: :func:`sample` and :func:`solve`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pndm.errors import PndmError
from pndm.schedules import Schedule
from pndm.solvers.evaluator import Callback, EpsEvaluator, EpsFn
from pndm.solvers.grid import GridArg, make_grid
from pndm.solvers.registry import METHODS, MethodInfo
from pndm.solvers.thresholding import clip_denoised


@dataclass(frozen=True)
class Solution:
    """A finished run: the sample and how many model evaluations it took."""

    x0: torch.Tensor
    nfe: int
    method: str
    steps: int


def _check_inputs(method: str, x_T, steps, schedule, eta: float, tol: float) -> MethodInfo:
    info = METHODS.get(method)
    if info is None:
        raise PndmError(f"unknown sampling method {method!r}: choose one of {', '.join(METHODS)}")
    if not isinstance(schedule, Schedule):
        raise PndmError(f"schedule must be a pndm.schedules.Schedule (got {type(schedule).__name__}): "
                        "build one with make_schedule(name, T)")
    if not isinstance(steps, int) or isinstance(steps, bool) or not info.min_steps <= steps <= schedule.T:
        raise PndmError(f"{method} needs an integer number of steps in [{info.min_steps}, T={schedule.T}] "
                        f"(got {steps!r})")
    if not isinstance(x_T, torch.Tensor) or x_T.dim() != 4 or not x_T.is_floating_point():
        what = type(x_T).__name__
        if isinstance(x_T, torch.Tensor):
            what = f"{x_T.dtype} tensor of shape {tuple(x_T.shape)}"
        raise PndmError(f"x_T must be a floating-point (B, C, H, W) tensor (got {what})")
    check_eta(method, eta)
    if not tol > 0:
        raise PndmError(f"tol must be > 0 (got {tol}); it is pf's relative and absolute tolerance")
    return info


def check_eta(method: str, eta: float) -> None:
    """eta (DDIM's noise, eq. 16) is >= 0, and nonzero only for ddim."""
    if eta != 0 and not METHODS[method].accepts_eta:
        raise PndmError(f"eta={eta} applies only to ddim (ddim with eta=1 is ddpm); for {method} drop it")
    if not eta >= 0:
        raise PndmError(f"eta must be >= 0 (got {eta}); 0 is deterministic DDIM, 1 is DDPM's variance")


def _method_options(info: MethodInfo, options: dict | None) -> dict:
    """``options`` checked against the method's declared ones (name, range or choices), defaults filled."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        valid = ", ".join(info.options) or "none"
        raise PndmError(f"{info.name} has no option {unknown[0]!r} (its options: {valid})")
    out = {}
    for name, spec in info.options.items():
        value = options.get(name, spec[0])
        if len(spec) == 2:
            if value not in spec[1]:
                raise PndmError(f"{info.name} option {name} must be one of {', '.join(spec[1])} "
                                f"(got {value!r})")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not spec[1] <= value <= spec[2]:
            raise PndmError(f"{info.name} option {name} must be a number in [{spec[1]:g}, {spec[2]:g}] "
                            f"(got {value!r})")
        out[name] = value
    return out


def solve(
    eps: EpsFn,
    x_T: torch.Tensor,
    method: str,
    steps: int,
    schedule: Schedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callback | None = None,
    tol: float = 1e-5,
    clip_x0: bool = False,
    grid: GridArg | None = None,
    options: dict | None = None,
) -> Solution:
    """Run ``method`` from x_T (the sample at the top of the grid) to x_0 and report the NFE.

    ``grid``: a name from :data:`pndm.solvers.GRIDS` (``"quad"``, ``"karras:5"``; None = the method's
    ``default_grid``) or explicit descending timesteps (a tuned recipe's); see :func:`make_grid`.

    ``eps(x, t)`` is called with t a (B,) tensor of x's dtype holding timestep indices (fractional
    for midpoints); ``callback(x, t, eps, index)`` sees every evaluation. ``eta`` and ``generator``
    (one, or a list with one per image) apply to ddim (``generator`` also to ddpm, edm-sde, sde2),
    ``tol`` (rtol = atol) to pf, ``options`` to methods that declare them (``METHODS[m].options``:
    edm-sde's s_churn, s_tmin, s_tmax, s_noise; sde2's derivative, fd_eps). ``clip_x0``
    clips every denoised estimate to [-1, 1] (:mod:`pndm.solvers.thresholding`; off by default:
    it changes the answer).
    """
    info = _check_inputs(method, x_T, steps, schedule, eta, tol)
    points = make_grid(info.default_grid if grid is None else grid, steps, schedule).tolist()
    transform = (lambda x, t, e: clip_denoised(x, t, e, schedule)) if clip_x0 else None
    ev = EpsEvaluator(eps, callback, transform)
    kwargs = _method_options(info, options)
    if info.accepts_eta:
        kwargs.update(eta=eta, generator=generator)
    elif info.stochastic:
        kwargs.update(generator=generator)
    elif info.adaptive:
        kwargs.update(tol=tol)
    x0 = info.run(ev, x_T, points, schedule, **kwargs)
    return Solution(x0=x0, nfe=ev.count, method=method, steps=steps)


def sample(
    eps: EpsFn,
    x_T: torch.Tensor,
    method: str,
    steps: int,
    schedule: Schedule,
    *,
    eta: float = 0.0,
    generator: torch.Generator | list[torch.Generator] | None = None,
    callback: Callback | None = None,
    tol: float = 1e-5,
    clip_x0: bool = False,
    grid: GridArg | None = None,
    options: dict | None = None,
) -> torch.Tensor:
    """x_0 from x_T with ``method`` over ``steps`` grid steps (:func:`solve` also returns the NFE)."""
    run = solve(eps, x_T, method, steps, schedule, eta=eta, generator=generator, callback=callback, tol=tol,
                clip_x0=clip_x0, grid=grid, options=options)
    return run.x0
