"""The table of sampling methods: name -> what it costs and how to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from pndm.solvers.ddim import ddim
from pndm.solvers.dpm_solver import dpm_solver_pp
from pndm.solvers.heun import heun
from pndm.solvers.ipndm import ipndm
from pndm.solvers.pf import probability_flow
from pndm.solvers.pndm_paper import f_pndm, fon, plms, s_pndm
from pndm.solvers.stochastic import EDM_OPTIONS, SDE2_OPTIONS, edm_stochastic, sde2
from pndm.solvers.unipc import unipc


@dataclass(frozen=True)
class MethodInfo:
    """One sampler. ``nfe(steps)`` is its exact number of model evaluations for ``steps`` grid
    steps, or None when adaptive (``pf``: :func:`pndm.solvers.solve` reports the count).
    ``default_grid`` is the grid :func:`pndm.solvers.solve` uses when none is given (docs/SOLVERS.md
    says why each)."""

    name: str
    description: str
    min_steps: int
    nfe: Callable[[int], int | None]
    run: Callable
    default_grid: str = "leading"
    accepts_eta: bool = False
    adaptive: bool = False
    stochastic: bool = False
    #: method options for ``solve(options=...)``: name -> (default, low, high) or (default, (choices...))
    options: dict = field(default_factory=dict)

    @property
    def deterministic(self) -> bool:
        """Whether the method maps x_T to x_0 deterministically with the default eta = 0."""
        return not self.stochastic

    def is_deterministic(self, eta: float = 0.0) -> bool:
        """Whether a run with this eta is deterministic (ddim with eta > 0 and the stochastic methods
        draw noise)."""
        return not (self.stochastic or (self.accepts_eta and eta > 0))


_TABLE = [
    MethodInfo("ddim", "DDIM (Song et al. 2021); eta > 0 adds noise, eta = 1 is DDPM's variance",
               1, lambda n: n, ddim, accepts_eta=True),
    MethodInfo("s-pndm", "PNDM paper: pseudo improved Euler first step, then 2-step pseudo linear multistep",
               2, lambda n: n + 1, s_pndm, "quad"),
    MethodInfo("f-pndm", "PNDM paper: 3 pseudo Runge-Kutta steps, then 4-step pseudo linear multistep",
               4, lambda n: n + 9, f_pndm),
    MethodInfo("plms", "PLMS as diffusers' skip_prk_steps: pseudo improved Euler, then orders 2, 3, 4",
               2, lambda n: n + 1, plms),
    MethodInfo("fon", "PNDM paper's classical baseline: RK4 then Adams-Bashforth 4 on the ODE in t",
               4, lambda n: n + 9, fon, "quad"),
    MethodInfo("pf", "probability-flow ODE, adaptive dopri5 (torchdiffeq); NFE reported after the run",
               1, lambda n: None, probability_flow, adaptive=True),
    MethodInfo("ipndm", "iPNDM (DEIS): Adams-Bashforth on eps with lower-order multistep warm-up",
               1, lambda n: n, ipndm, "quad"),
    MethodInfo("dpm-solver++2m", "DPM-Solver++(2M): 2nd-order multistep exponential integrator on x0",
               1, lambda n: n, partial(dpm_solver_pp, order=2), "logsnr"),
    MethodInfo("dpm-solver++3m", "DPM-Solver++(3M): 3rd-order multistep exponential integrator on x0",
               1, lambda n: n, partial(dpm_solver_pp, order=3), "logsnr"),
    MethodInfo("unipc", "UniPC-3 (bh2): predictor-corrector reusing each evaluation, data prediction",
               1, lambda n: n, partial(unipc, order=3), "logsnr"),
    MethodInfo("heun", "EDM Heun (2nd order) in sigma with x/sqrt(alpha_bar), Euler on the last step",
               1, lambda n: 2 * n - 1, heun),
    MethodInfo("ddpm", "DDPM ancestral sampling (= ddim with eta = 1), stochastic",
               1, lambda n: n, partial(ddim, eta=1.0), stochastic=True),
    MethodInfo("edm-sde", "EDM's stochastic sampler (Alg. 2): churn noise around each Heun step",
               2, lambda n: 2 * n - 1, edm_stochastic, "karras", stochastic=True, options=EDM_OPTIONS),
    MethodInfo("sde2", "weak 2nd-order Ito-Taylor solver of the reverse SDE (jvp or finite difference)",
               2, lambda n: 2 * n - 1, sde2, "quad", stochastic=True, options=SDE2_OPTIONS),
]

#: name -> :class:`MethodInfo`, in the order they are documented.
METHODS: dict[str, MethodInfo] = {m.name: m for m in _TABLE}


def steps_for_nfe(method: str, nfe: int) -> int | None:
    """The largest N whose NFE fits the budget ``nfe`` (None when even the minimum N costs more,
    or the method is adaptive)."""
    info = METHODS[method]
    if info.adaptive:
        return None
    fits = [n for n in range(info.min_steps, nfe + 1) if info.nfe(n) <= nfe]
    return fits[-1] if fits else None
