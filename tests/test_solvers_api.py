"""The sampling API: grid, NFE per method, callback, engine-buffer safety, dtypes, bad input."""

import pytest
import torch

from pndm.errors import PndmError
from pndm.schedules import make_schedule
from pndm.solvers import METHODS, sample, solve, time_grid
from pndm.solvers.testbeds import GaussianTestbed

SCHEDULE = make_schedule("linear")
TESTBED = GaussianTestbed.random(SCHEDULE, shape=(2, 4, 4))


def _x(steps, batch=2, dtype=torch.float64):
    t_top = float(time_grid(steps, SCHEDULE.T)[0])
    return TESTBED.prior(batch, t_top, torch.Generator().manual_seed(0)).to(dtype)


def test_time_grid_is_leading_with_exactly_n_points():
    assert time_grid(10, 1000).tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0, -1]
    assert time_grid(3, 1000).tolist() == [666, 333, 0, -1]  # 3 does not divide 1000
    assert time_grid(1000, 1000)[0] == 999 and len(time_grid(1000, 1000)) == 1001
    with pytest.raises(PndmError, match=r"\[1, T=1000\]"):
        time_grid(0, 1000)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("steps", [4, 7, 10])
def test_nfe_equals_the_stated_formula(method, steps):
    calls = []
    sol = solve(TESTBED.eps, _x(steps), method, steps, SCHEDULE, callback=lambda x, t, e, i: calls.append(i))
    assert calls == list(range(sol.nfe))
    expected = METHODS[method].nfe(steps)
    if METHODS[method].adaptive:
        assert expected is None and sol.nfe > steps  # pf: reported after the run
    else:
        assert sol.nfe == expected


def test_methods_table_is_complete():
    assert set(METHODS) == {"ddim", "s-pndm", "f-pndm", "plms", "fon", "pf", "ipndm",
                            "dpm-solver++2m", "dpm-solver++3m", "unipc", "heun", "ddpm", "edm-sde", "sde2"}
    assert [METHODS[m].nfe(10) for m in ("ddim", "s-pndm", "f-pndm", "plms", "heun")] == [10, 11, 19, 11, 19]
    assert METHODS["ddim"].is_deterministic(0.0) and not METHODS["ddim"].is_deterministic(1.0)
    assert all(info.description and info.min_steps >= 1 for info in METHODS.values())


def test_callback_sees_the_evaluated_points_and_fractional_prk_midpoints():
    seen = []
    sample(TESTBED.eps, _x(10), "f-pndm", 10, SCHEDULE, callback=lambda x, t, e, i: seen.append((x, t, e)))
    ts = [float(t[0]) for _, t, _ in seen]
    assert ts[:4] == [900, 850, 850, 800] and ts[12:] == [600, 500, 400, 300, 200, 100, 0]
    x, t, e = seen[5]
    assert torch.equal(e, TESTBED.eps(x, t))  # the callback's eps is what the model returned at x


def test_odd_stride_puts_prk_midpoints_at_half_steps():
    seen = []
    record = lambda x, t, e, i: seen.append(float(t[0]))  # noqa: E731
    sample(TESTBED.eps, _x(333), "f-pndm", 333, SCHEDULE, callback=record)
    assert seen[:2] == [996, 994.5]


class BufferEngine:
    """An engine that writes every output into the same tensor (like a TensorRT binding)."""

    def __init__(self, fn):
        self.fn, self.out = fn, None

    def __call__(self, x, t):
        res = self.fn(x, t)
        if self.out is None:
            self.out = torch.empty_like(res)
        self.out.copy_(res)
        return self.out


@pytest.mark.parametrize("method", ["plms", "f-pndm", "ipndm", "dpm-solver++3m", "unipc", "heun", "fon"])
def test_reused_output_buffer_gives_the_same_sample(method):
    x = _x(10)
    fresh = sample(TESTBED.eps, x, method, 10, SCHEDULE)
    reused = sample(BufferEngine(TESTBED.eps), x, method, 10, SCHEDULE)
    assert torch.equal(fresh, reused)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "pf" and METHODS[m].deterministic))
def test_float32_matches_float64(method):
    x64 = _x(20)
    x32 = sample(TESTBED.eps, x64.float(), method, 20, SCHEDULE)
    assert x32.dtype == torch.float32
    assert torch.allclose(x32.double(), sample(TESTBED.eps, x64, method, 20, SCHEDULE), atol=2e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].deterministic))
def test_cuda_matches_cpu(method):
    x = _x(10)
    cpu = sample(TESTBED.eps, x, method, 10, SCHEDULE)
    gpu = sample(TESTBED.eps, x.cuda(), method, 10, SCHEDULE)
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, atol=1e-8)


def test_ddim_eta_is_stochastic_and_reproducible_per_generator():
    x = _x(10)
    a = sample(TESTBED.eps, x, "ddim", 10, SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = sample(TESTBED.eps, x, "ddim", 10, SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(5))
    c = sample(TESTBED.eps, x, "ddim", 10, SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, sample(TESTBED.eps, x, "ddim", 10, SCHEDULE))


def test_ddim_eta_one_over_all_steps_samples_the_data_distribution():
    """eta = 1 over all T steps is DDPM's ancestral sampler: with the optimal eps its samples have
    the Gaussian data's per-dimension mean mu and std s."""
    tb = GaussianTestbed.random(SCHEDULE, shape=(1, 1, 2), seed=3)
    x = tb.prior(4000, 999.0, torch.Generator().manual_seed(1))
    out = sample(tb.eps, x, "ddim", 1000, SCHEDULE, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(out.mean(0), tb.mu, atol=0.03) and torch.allclose(out.std(0), tb.s, rtol=0.05)


def test_pf_tolerance_trades_evaluations_for_accuracy():
    """Against a very tight solve (all three share the final DDIM step from t = 0)."""
    x = _x(10)
    loose, tight, ref = (solve(TESTBED.eps, x, "pf", 10, SCHEDULE, tol=tol) for tol in (1e-3, 1e-6, 1e-10))
    assert loose.nfe < tight.nfe < ref.nfe
    assert (tight.x0 - ref.x0).abs().max() < 0.1 * (loose.x0 - ref.x0).abs().max()


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(PndmError, match="unknown sampling method 'euler'.*ddim.*f-pndm.*unipc"):
        sample(TESTBED.eps, _x(10), "euler", 10, SCHEDULE)


@pytest.mark.parametrize(
    "method, steps", [("f-pndm", 3), ("fon", 3), ("plms", 1), ("ddim", 0), ("ddim", 1001), ("ddim", 2.0)]
)
def test_steps_out_of_range(method, steps):
    with pytest.raises(ValueError, match=f"{method} needs an integer number of steps in"):
        sample(TESTBED.eps, _x(10), method, steps, SCHEDULE)


def test_wrong_shape_eps():
    with pytest.raises(PndmError, match=r"eps returned shape \(2, 1, 4, 4\) at evaluation 0 \(t=900\)"):
        sample(lambda x, t: x[:, :1], _x(10), "ddim", 10, SCHEDULE)


def test_nan_eps_names_the_evaluation_and_t():
    def breaks_at_third(x, t, calls=[]):  # noqa: B006 - counts calls across this test only
        calls.append(1)
        out = TESTBED.eps(x, t)
        return out * float("nan") if len(calls) == 3 else out

    with pytest.raises(PndmError, match=r"NaN or Inf at evaluation 2 \(t=850\)"):
        sample(breaks_at_third, _x(10), "f-pndm", 10, SCHEDULE)


def test_other_bad_inputs():
    with pytest.raises(PndmError, match="eta=0.5 applies only to ddim"):
        sample(TESTBED.eps, _x(10), "plms", 10, SCHEDULE, eta=0.5)
    with pytest.raises(PndmError, match="x_T must be a floating-point"):
        sample(TESTBED.eps, torch.zeros(2, 4, 4), "ddim", 10, SCHEDULE)
    with pytest.raises(PndmError, match="make_schedule"):
        sample(TESTBED.eps, _x(10), "ddim", 10, "linear")
    with pytest.raises(PndmError, match="eps returned list"):
        sample(lambda x, t: [0], _x(10), "ddim", 10, SCHEDULE)
