"""Stochastic samplers: EDM's churned Heun and a weak second-order solver of the reverse SDE.

DDPM's ancestral sampler is :func:`pndm.solvers.ddim.ddim` with eta = 1 (method ``ddpm``).

Both samplers here work in EDM's variables y = x / sqrt(ab), sigma = sqrt((1-ab)/ab) (EDM eq. 4 with
s(t) = 1 after scaling), where the probability-flow ODE is dy/dsigma = eps and the reverse SDE (Song
et al. 2021 eq. 6; EDM eq. 6 with beta(t) = sigma'/sigma) is, with tau = -sigma running forward,

    dy = a dtau + b dW,   a(y, tau) = -2 eps(y, sigma),   b(tau) = sqrt(2 sigma).          (R)

The model is called at x = y / sqrt(1 + sigma^2) and t(sigma). The step from t = 0 into the clean
image (sigma = 0, where the model is not defined) is one deterministic DDIM step, as for heun.
"""

from __future__ import annotations

import math

import torch

from pndm.schedules import Schedule
from pndm.solvers.ddim import standard_normal_like
from pndm.solvers.evaluator import EpsEvaluator
from pndm.solvers.transfer import ddim_step

#: EDM's stochastic sampler options (Karras et al. 2022, Alg. 2 and Table 5): name -> (default, low, high).
EDM_OPTIONS = {"s_churn": (40.0, 0.0, 1000.0), "s_tmin": (0.05, 0.0, 1e4), "s_tmax": (50.0, 0.0, 1e4),
               "s_noise": (1.003, 0.0, 2.0)}
#: The second-order SDE solver's options: ``derivative`` "auto" | "jvp" | "fd" and the finite-difference
#: fraction ``fd_eps`` (of the step) for "fd".
SDE2_OPTIONS = {"derivative": ("auto", ("auto", "jvp", "fd")), "fd_eps": (0.01, 1e-4, 1.0)}


def _sigmas(schedule: Schedule, grid: list[float]) -> list[float]:
    return [float(schedule.sigma(t)) for t in grid[:-1]]


def edm_stochastic(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, generator=None,
    s_churn: float = 40.0, s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.003,
) -> torch.Tensor:
    """EDM Algorithm 2 (Karras et al. 2022) on the grid's sigmas:

        gamma_i = min(S_churn/N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0        (line 4)
        sigma_hat = sigma_i (1 + gamma_i),  y_hat = y + sqrt(sigma_hat^2 - sigma_i^2) S_noise z   (lines 5-6)
        d = eps(y_hat, sigma_hat),  y' = y_hat + (sigma' - sigma_hat) d                     (lines 7-8)
        y' = y_hat + (sigma' - sigma_hat) (d + eps(y', sigma'))/2                            (lines 9-11)

    sigma_hat is capped at sigma(T-1) (the model's range). The last step into sigma = 0 is DDIM.
    NFE = 2N - 1.
    """
    sigmas = _sigmas(schedule, grid)
    s_top = float(schedule.sigma(schedule.T - 1))
    n = len(sigmas)
    y = x * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(n - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s <= s_tmax else 0.0
        s_hat = min(s * (1 + gamma), s_top)
        if s_hat > s:
            y = y + math.sqrt(s_hat**2 - s**2) * s_noise * standard_normal_like(y, generator)
        d = ev(y / math.sqrt(1 + s_hat**2), float(schedule.t_of_sigma(s_hat)))
        y_next = y + (s_next - s_hat) * d
        d2 = ev(y_next / math.sqrt(1 + s_next**2), grid[i + 1])
        y = y + (s_next - s_hat) * (d + d2) / 2
    x = y / math.sqrt(1 + sigmas[-1] ** 2)
    return ddim_step(ev, schedule, x, grid[-2], grid[-1])


def _directional_derivative(ev: EpsEvaluator, schedule: Schedule, y, sigma, eps0, dy, dsigma, mode, fd_eps):
    """D eps(y, sigma)[(dy, dsigma)]: torch.func.jvp through the model ("jvp") or the forward difference
    (eps(y + e dy, sigma + e dsigma) - eps(y, sigma)) / e with e = ``fd_eps`` ("fd"). One evaluation."""
    if mode == "fd":
        s2 = sigma + fd_eps * dsigma
        eps2 = ev((y + fd_eps * dy) / math.sqrt(1 + s2 * s2), float(schedule.t_of_sigma(s2)))
        return (eps2 - eps0) / fd_eps
    # jvp in (y, sigma): x = y / sqrt(1 + sigma^2), t = t(sigma), so dx = dy/sqrt(1+s^2) - y s/(1+s^2)^1.5 ds
    # and dt = ds / (dsigma/dt) (the schedule's local slope, by a central difference of t(sigma))
    c = 1 / math.sqrt(1 + sigma * sigma)
    x = y * c
    dx = dy * c - y * (sigma * c**3) * dsigma
    t = float(schedule.t_of_sigma(sigma))
    h = 1e-3 * sigma
    dt_dsigma = float(schedule.t_of_sigma(min(sigma + h, float(schedule.sigma(schedule.T - 1))))
                      - schedule.t_of_sigma(sigma - h)) / (2 * h)
    return ev.jvp(x, t, dx, dt_dsigma * dsigma)


def sde2(
    ev: EpsEvaluator, x: torch.Tensor, grid: list[float], schedule: Schedule, *, generator=None,
    derivative: str = "auto", fd_eps: float = 0.01,
) -> torch.Tensor:
    """Weak second-order Ito-Taylor scheme for (R) (Kloeden & Platen 1992, eq. 14.2.7, the simplified
    weak order-2.0 Taylor scheme, additive noise), step h = sigma - sigma' > 0 in tau:

        y' = y + a h + b dW + (1/2) h (d_tau a h + J_a (a h + b dW)) + (1/2) (d_tau b) dW h,
        dW ~ N(0, h),  d_tau b = -1/b,

    where the bracket is L0 a h + L1 a dW without L0's Ito term b^2/2 Lap(a): it is the directional
    derivative of a along the Euler-Maruyama increment (a h + b dW, h), taken by torch.func.jvp
    (``derivative="jvp"``: the eps callable must be differentiable torch code) or by a forward
    difference over the fraction ``fd_eps`` of that increment ("fd", for ONNX/TensorRT engines; with
    fd_eps = 1 it is Platen's derivative-free weak order-2 scheme, KP eq. 15.1.3, whose second-order
    difference also carries the Ito term in expectation). "auto" = jvp for PyTorch engines and plain
    callables, fd for others. NFE = 2N - 1 (a jvp counted as one evaluation; it costs about 1.5-3x a
    forward pass). The last step into sigma = 0 is DDIM.
    """
    mode = derivative
    if mode == "auto":
        mode = "fd" if ev.differentiable is None else "jvp"
    sigmas = _sigmas(schedule, grid)
    y = x * math.sqrt(1 + sigmas[0] ** 2)
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i], sigmas[i + 1]
        h = s - s_next
        b = math.sqrt(2 * s)
        eps0 = ev(y / math.sqrt(1 + s * s), grid[i])
        dw = math.sqrt(h) * standard_normal_like(y, generator)
        a = -2 * eps0
        increment = a * h + b * dw  # Euler-Maruyama
        # D a[(increment, h)] in tau = -sigma: a = -2 eps, dsigma = -h
        da = -2 * _directional_derivative(ev, schedule, y, s, eps0, increment, -h, mode, fd_eps)
        y = y + increment + 0.5 * h * da - 0.5 * dw * h / b
    x = y / math.sqrt(1 + sigmas[-1] ** 2)
    return ddim_step(ev, schedule, x, grid[-2], grid[-1])
