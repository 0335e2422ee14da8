"""Stochastic samplers on the Gaussian testbed: the samples' mean and covariance match the exact data
distribution within their Monte-Carlo error; options and NFE; determinism per generator."""

import math

import pytest
import torch

from pndm.errors import PndmError
from pndm.schedules import make_schedule
from pndm.solvers import METHODS, make_grid, solve
from pndm.solvers.testbeds import GaussianTestbed

SCHEDULE = make_schedule("linear")
TESTBED = GaussianTestbed.random(SCHEDULE, shape=(2, 4, 4))
N_SAMPLES = 4000
#: |z| bound for 32 dimensions (and 496 correlations) of fixed seeds: P(|z| > 4.5) ~ 7e-6 each
Z = 4.5


def _samples(method, steps, grid, options=None, n=N_SAMPLES):
    g = torch.Generator().manual_seed(1)
    x = TESTBED.prior(n, float(make_grid(grid, steps, SCHEDULE)[0]), g)
    return solve(TESTBED.eps, x, method, steps, SCHEDULE, generator=g, grid=grid, options=options)


@pytest.mark.parametrize("method, steps, grid, options", [
    ("ddpm", 200, "quad", None),
    ("ddim", 200, "linspace", None),  # eta 0.5 below
    ("edm-sde", 100, "quad", None),
    ("sde2", 50, "quad", {"derivative": "jvp"}),
    ("sde2", 50, "quad", {"derivative": "fd"}),
])
def test_sample_mean_and_covariance_match_the_data_within_monte_carlo_error(method, steps, grid, options):
    eta = {"ddim": 0.5}.get(method, 0.0)
    g = torch.Generator().manual_seed(1)
    x = TESTBED.prior(N_SAMPLES, float(make_grid(grid, steps, SCHEDULE)[0]), g)
    run = solve(TESTBED.eps, x, method, steps, SCHEDULE, generator=g, grid=grid, options=options, eta=eta)
    x0 = run.x0.flatten(1)
    mu, s = TESTBED.mu.flatten(), TESTBED.s.flatten()
    assert run.nfe == METHODS[method].nfe(steps)
    mean_z = (x0.mean(0) - mu) / (s / math.sqrt(N_SAMPLES))
    var_z = (x0.var(0) / s**2 - 1) / math.sqrt(2 / N_SAMPLES)
    corr = torch.corrcoef(x0.T) - torch.eye(x0.shape[1], dtype=x0.dtype)
    assert float(mean_z.abs().max()) < Z
    assert float(var_z.abs().max()) < Z
    assert float(corr.abs().max()) < Z / math.sqrt(N_SAMPLES)


def test_the_second_order_sde_solver_has_a_smaller_weak_error_than_ddpm_at_equal_nfe():
    """Weak error = RMS error of the per-dimension sample std (the mean is at Monte-Carlo level for all)."""
    def std_error(run):
        return float(((run.x0.flatten(1).std(0) - TESTBED.s.flatten()) ** 2).mean().sqrt())

    ddpm, sde2 = _samples("ddpm", 50, "quad"), _samples("sde2", 25, "quad")
    assert ddpm.nfe == 50 and sde2.nfe == 49
    assert std_error(sde2) * 2 < std_error(ddpm)


def test_stochastic_runs_are_deterministic_per_generator_and_differ_across_seeds():
    x = TESTBED.prior(2, 999, torch.Generator().manual_seed(0))
    for method in ("ddpm", "edm-sde", "sde2"):
        runs = [solve(TESTBED.eps, x, method, 6, SCHEDULE, generator=torch.Generator().manual_seed(s)).x0
                for s in (0, 0, 1)]
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
        assert not METHODS[method].is_deterministic()


@pytest.mark.parametrize("method, options, message", [
    ("edm-sde", {"s_churn": -1}, r"edm-sde option s_churn must be a number in \[0, 1000\]"),
    ("edm-sde", {"churn": 1}, r"edm-sde has no option 'churn' \(its options: s_churn, s_tmin, s_tmax, "),
    ("sde2", {"derivative": "exact"}, r"sde2 option derivative must be one of auto, jvp, fd"),
    ("ipndm", {"fd_eps": 0.1}, r"ipndm has no option 'fd_eps' \(its options: none\)"),
])
def test_bad_options_are_one_line_errors(method, options, message):
    with pytest.raises(PndmError, match=message):
        solve(TESTBED.eps, TESTBED.prior(1, 999), method, 4, SCHEDULE, options=options)


def test_jvp_refuses_engines_without_autodiff():
    class Onnx:
        backend = "onnxruntime"

        def __call__(self, x, t):
            return TESTBED.eps(x, t)

    x = TESTBED.prior(1, 999)
    with pytest.raises(PndmError, match="forward-mode AD needs a PyTorch engine"):
        solve(Onnx(), x, "sde2", 4, SCHEDULE, options={"derivative": "jvp"})
    assert solve(Onnx(), x, "sde2", 4, SCHEDULE).nfe == 7  # auto: finite difference
