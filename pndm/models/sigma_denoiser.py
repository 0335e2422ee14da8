"""Sigma-parameterised denoisers ``D(x; sigma)`` (EDM, Karras et al. 2022) as models of pndm's time t.

EDM's networks (``EDMPrecond``, ``VPPrecond``, ``VEPrecond``, and code built on them) all have the
interface ``net(x, sigma, class_labels=None) -> D``: ``x = y + sigma n`` is an unscaled noisy image
at noise level ``sigma`` (continuous), ``D`` the denoised estimate of ``y``; the VP / VE / EDM
preconditioning (c_skip, c_out, c_in, c_noise: EDM Table 1) lives inside the network.

pndm's solvers work on a VP time index t with ``x_t = sqrt(ab) x0 + sqrt(1 - ab) eps``. The two are
the same process up to scaling (EDM eq. 4 with s(t) = sqrt(ab)): ``x_t / sqrt(ab) = x0 + sigma eps``
with ``sigma(t) = sqrt((1 - ab) / ab)``. So :class:`SigmaDenoiser` evaluates
``D(x_t / sqrt(ab(t)), sigma(t))``, an x0 prediction (``prediction="sample"``), and the runtime turns
it into eps like any x0 model (:mod:`pndm.prediction`): ``eps = (x_t/sqrt(ab) - D) / sigma``.

The schedule, :func:`sigma_schedule`: T nodes whose sigmas run from ``sigma_min`` (t = 0) to
``sigma_max`` (t = T - 1) on EDM's grid (EDM eq. 5, ``rho = 7``), stored as the custom betas
``beta_i = 1 - ab_i / ab_{i-1}``, ``ab_i = 1 / (1 + sigma_i^2)``. pndm's uniform time grid over t
then walks EDM's sigma spacing, and every solver, the export and the checker serve these models.
Class-conditional EDM networks take one-hot labels; the wrapper builds them from int64 labels.

EDM's published network pickles (``network-snapshot-*.pkl``) carry code: they are loaded only with
``allow_pickle=True`` (``--trust-pickle``) and the EDM source (``dnnlib``, ``torch_utils``) importable.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from pndm.errors import CheckpointError
from pndm.schedules import ScheduleSpec, interpolate_log_alpha_bar, make_schedule, sigma_of_log_alpha_bar

DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX, DEFAULT_RHO = 0.002, 80.0, 7.0


def sigma_schedule(sigma_min: float = DEFAULT_SIGMA_MIN, sigma_max: float = DEFAULT_SIGMA_MAX,
                   T: int = 1000, rho: float = DEFAULT_RHO) -> ScheduleSpec:
    """The custom schedule whose node t = i has EDM's sigma_i (module doc), i = 0 .. T-1."""
    if not 0 < sigma_min < sigma_max:
        raise CheckpointError(f"sigma range {sigma_min:g}..{sigma_max:g} is invalid: "
                              "need 0 < sigma_min < sigma_max")
    i = torch.arange(T, dtype=torch.float64) / (T - 1)
    sigmas = (sigma_min ** (1 / rho) + i * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho
    ab = 1 / (1 + sigmas**2)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return ScheduleSpec("custom", betas=tuple((1 - ab / prev).tolist()))


def sigma_config(sigma_min: float, sigma_max: float, rho: float = DEFAULT_RHO) -> dict[str, float]:
    """What the manifest's ``model.config`` records about a sigma denoiser (rebuilds its schedule)."""
    return {"denoiser": "sigma", "sigma_min": float(sigma_min), "sigma_max": float(sigma_max),
            "rho": float(rho)}


class SigmaDenoiser(nn.Module):
    """``forward(x, t[, class_labels]) = D(x / sqrt(ab(t)), sigma(t))``: an x0 prediction (module doc)."""

    def __init__(self, net: nn.Module, schedule: ScheduleSpec, num_classes: int | None = None):
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.register_buffer("log_nodes", make_schedule(schedule).log_nodes.float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        log_ab = interpolate_log_alpha_bar(self.log_nodes, t)
        sigma = sigma_of_log_alpha_bar(log_ab)  # sqrt((1 - ab) / ab)
        x_ve = x * torch.exp(-0.5 * log_ab).view(-1, 1, 1, 1)  # x_t / sqrt(ab) = x0 + sigma eps
        if self.num_classes is None:
            return self.net(x_ve, sigma)
        one_hot = torch.nn.functional.one_hot(class_labels, self.num_classes).to(x.dtype)
        return self.net(x_ve, sigma, one_hot)


def load_edm_pickle(path: Path, allow_pickle: bool) -> nn.Module:
    """The EMA network of an EDM training pickle (``{"ema": net, ...}``) or a pickled network."""
    if not allow_pickle:
        raise CheckpointError(
            f"{path}: EDM network pickles carry code (classes of the EDM repository) that runs when loaded;"
            " "
            "pass allow_pickle=True only for a file you trust, with the EDM source "
            "(dnnlib, torch_utils) importable"
        )
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 -- the user opted in (module doc)
    except ModuleNotFoundError as exc:
        raise CheckpointError(f"{path}: the pickle needs the EDM source ({exc.name!r} is not importable): "
                              "clone NVlabs/edm and put it on PYTHONPATH") from None
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        message = f"{path}: not a readable EDM network pickle ({type(exc).__name__}: {exc})"
        raise CheckpointError(message) from None
    net = data.get("ema") if isinstance(data, dict) else data
    needed = ("img_channels", "img_resolution", "sigma_min", "sigma_max")
    missing = [a for a in needed if not hasattr(net, a)]
    if not isinstance(net, nn.Module) or missing:
        raise CheckpointError(f"{path}: holds no EDM network (an nn.Module with img_channels, "
                              "img_resolution, sigma_min, sigma_max, like EDMPrecond)")
    return net.float().eval()


def edm_sigma_range(net: nn.Module) -> tuple[float, float]:
    """The sigmas to sample a network over: EDM's sampler clamps the network's own range (attributes
    ``sigma_min``/``sigma_max``, if any) to [0.002, 80] (``generate.py``)."""
    return (max(DEFAULT_SIGMA_MIN, float(getattr(net, "sigma_min", DEFAULT_SIGMA_MIN))),
            min(DEFAULT_SIGMA_MAX, float(getattr(net, "sigma_max", DEFAULT_SIGMA_MAX))))


def wrap_sigma_network(net: nn.Module, num_classes: int | None, sigma_min: float | None = None,
                       sigma_max: float | None = None, rho: float = DEFAULT_RHO
                       ) -> tuple[SigmaDenoiser, ScheduleSpec, dict]:
    """(wrapped model, its schedule, its manifest config) for a ``net(x, sigma[, one_hot])``;
    the sigma range defaults to :func:`edm_sigma_range`."""
    lo, hi = edm_sigma_range(net)
    lo, hi = sigma_min if sigma_min is not None else lo, sigma_max if sigma_max is not None else hi
    schedule = sigma_schedule(lo, hi, rho=rho)
    return SigmaDenoiser(net, schedule, num_classes).eval(), schedule, sigma_config(lo, hi, rho)
