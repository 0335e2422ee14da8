"""Convergence on the exact testbeds: errors shrink with N, orders are what the methods promise,
and the pseudo methods beat DDIM by the paper's margin."""

import pytest
import torch

from pndm.schedules import make_schedule
from pndm.solvers import METHODS
from pndm.solvers.testbeds import (
    FiniteDataTestbed,
    GaussianTestbed,
    convergence_table,
    observed_order,
)

STEPS = (10, 20, 50, 100)
FIXED_STEP = [m for m, info in METHODS.items() if not info.adaptive and info.deterministic]


@pytest.fixture(scope="module")
def gaussian_table():
    tb = GaussianTestbed.random(make_schedule("linear"), shape=(3, 4, 4))
    return convergence_table(tb, FIXED_STEP, STEPS, batch=4)


def _errors(rows):
    return [err for _, err in rows]


@pytest.mark.parametrize("method", FIXED_STEP)
def test_gaussian_error_shrinks_with_steps(gaussian_table, method):
    errs = _errors(gaussian_table[method])
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.02


def test_gaussian_observed_orders(gaussian_table):
    order = {m: observed_order(list(STEPS), _errors(rows)) for m, rows in gaussian_table.items()}
    assert 0.85 < order["ddim"] < 1.15  # Euler
    assert 1.7 < order["s-pndm"] < 2.3 and 1.8 < order["heun"] < 2.4  # second order
    for m in ("f-pndm", "plms", "ipndm"):  # high order until the fixed last step (t=0 -> clean) dominates
        assert order[m] > 1.4


def test_f_pndm_is_20x_more_accurate_than_ddim_at_50_steps(gaussian_table):
    assert dict(zip(STEPS, _errors(gaussian_table["ddim"]), strict=True))[50] > 20 * dict(
        zip(STEPS, _errors(gaussian_table["f-pndm"]), strict=True)
    )[50]


def test_exact_solution_is_exact():
    """The Gaussian reference is the PF-ODE endpoint: a very tight pf solve lands on it."""
    from pndm.solvers import solve

    tb = GaussianTestbed.random(make_schedule("cosine"), shape=(1, 2, 2))
    x = tb.prior(4, 900.0, torch.Generator().manual_seed(0))
    x0 = solve(tb.eps, x, "pf", 10, tb.schedule, tol=1e-9).x0
    # pf ends with one DDIM step from t=0, whose error is O(sigma(0)^2 / s)
    assert float((x0 - tb.exact_x0(x, 900.0)).abs().max()) < 2e-3


def test_finite_dataset_errors_shrink_against_a_fine_reference():
    tb = FiniteDataTestbed.random(make_schedule("linear"))
    table = convergence_table(tb, ["ddim", "s-pndm", "f-pndm", "ipndm", "heun"], (10, 20, 50, 100), batch=4)
    for method, rows in table.items():
        errs = _errors(rows)
        assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), (method, errs)
    assert _errors(table["f-pndm"])[2] * 10 < _errors(table["ddim"])[2]
