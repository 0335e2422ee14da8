"""pf (adaptive dopri5 on the probability-flow ODE): a loose tolerance gives a coarse but sane x_0,
and the integration error falls steadily as the tolerance tightens."""

import math

import pytest
import torch

from pndm.schedules import make_schedule
from pndm.solvers import solve
from pndm.solvers.testbeds import GaussianTestbed, rmse
from pndm.solvers.transfer import transfer

T_TOP = 900.0  # top of the N = 10 grid


def _setup(schedule_name):
    tb = GaussianTestbed.random(make_schedule(schedule_name), shape=(3, 4, 4))
    return tb, tb.prior(8, T_TOP, torch.Generator().manual_seed(0))


def _exact_ode_then_last_ddim_step(tb, x):
    """What pf computes with a perfect integrator: the exact PF-ODE solution at t = 0 (the Gaussian
    keeps z = (x_t - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab) constant), then pf's DDIM step to clean."""
    ab_top, ab_0 = float(tb.schedule.alpha_bar(T_TOP)), float(tb.schedule.alpha_bar(0.0))
    z = (x - math.sqrt(ab_top) * tb.mu) / torch.sqrt(ab_top * tb.s**2 + 1 - ab_top)
    x_t0 = math.sqrt(ab_0) * tb.mu + torch.sqrt(ab_0 * tb.s**2 + 1 - ab_0) * z
    return transfer(x_t0, tb.eps(x_t0, torch.tensor(0.0)), ab_0, 1.0)


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_loose_tolerance_gives_a_sane_sample(schedule_name):
    """Before the last step was made to land on t = 0, tol=1e-3 returned RMSE 2.3 (linear)."""
    tb, x = _setup(schedule_name)
    exact = tb.exact_x0(x, T_TOP)
    assert rmse(solve(tb.eps, x, "pf", 10, tb.schedule, tol=1e-2).x0, exact) < 0.1
    assert rmse(solve(tb.eps, x, "pf", 10, tb.schedule, tol=1e-3).x0, exact) < 0.05


@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
def test_integration_error_falls_with_tolerance(schedule_name):
    """Measured against the exact ODE plus the same final DDIM step, so the fixed t = 0 -> clean
    step (the ~1e-4 floor of every method) does not hide the integrator's error."""
    tb, x = _setup(schedule_name)
    target = _exact_ode_then_last_ddim_step(tb, x)
    runs = [solve(tb.eps, x, "pf", 10, tb.schedule, tol=tol) for tol in (1e-3, 1e-5, 1e-7)]
    errs = [rmse(run.x0, target) for run in runs]
    nfes = [run.nfe for run in runs]
    assert errs[0] < 1e-2 and errs[1] < 0.1 * errs[0] and errs[2] < 0.1 * errs[1], errs
    assert nfes[0] < nfes[1] < nfes[2], nfes
