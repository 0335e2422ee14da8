"""Time grids: their points, the variable-step multistep weights, every method on every grid, bad
options, and the accuracy claims against diffusers on the exact testbeds."""

import itertools
from fractions import Fraction

import pytest
import torch

from pndm.errors import PndmError
from pndm.schedules import make_schedule
from pndm.solvers import GRIDS, METHODS, make_grid, solve
from pndm.solvers.multistep import adams_bashforth_weights
from pndm.solvers.testbeds import FiniteDataTestbed, GaussianTestbed, ReferenceCache, grid_error

SCHEDULE = make_schedule("linear")
#: NFE 5: iPNDM on timesteps tuned by pndm.solvers.tuning.tune_grid (from quad:1.5, 256 samples of seed 1,
#: not the 8 samples of seed 0 measured here; docs/SOLVERS.md).
NFE5_BEST = ("ipndm", [999.0, 506.0, 371.0, 78.0, 0.0])
FIXED_GRIDS = [g for g, info in GRIDS.items() if info.build is not None]
DETERMINISTIC = [m for m, info in METHODS.items() if not info.adaptive and info.deterministic]


@pytest.mark.parametrize("order, expected", [
    (1, ["1"]), (2, ["3/2", "-1/2"]), (3, ["23/12", "-16/12", "5/12"]),
    (4, ["55/24", "-59/24", "37/24", "-9/24"]),
])
def test_variable_step_weights_reduce_to_adams_bashforth_on_uniform_steps(order, expected):
    for stride in (1.0, 100.0, 7.5):  # any uniform spacing, walked downwards
        nodes = [500 + k * stride for k in range(order)]  # newest first
        weights = adams_bashforth_weights(nodes, 500 - stride)
        assert weights == pytest.approx([float(Fraction(e)) for e in expected], abs=1e-12)


def test_variable_step_weights_integrate_the_interpolant_exactly():
    """On uneven nodes the weights integrate every polynomial of degree < K exactly."""
    nodes, target = [300.0, 520.0, 610.0, 900.0], 130.0
    weights = adams_bashforth_weights(nodes, target)
    for degree in range(4):
        exact = ((target / 100) ** (degree + 1) - (nodes[0] / 100) ** (degree + 1)) * 100 / (degree + 1)
        quadrature = sum(w * (u / 100) ** degree for w, u in zip(weights, nodes, strict=True))
        assert (target - nodes[0]) * quadrature == pytest.approx(exact)


@pytest.mark.parametrize("grid", FIXED_GRIDS)
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 50, 200])
def test_every_grid_has_n_strictly_decreasing_points_then_the_clean_image(grid, steps):
    g = make_grid(grid, steps, SCHEDULE)
    assert len(g) == steps + 1 and g[-1] == -1 and g.dtype == torch.float64
    assert bool((g[1:] < g[:-1]).all()) and 0 <= float(g[-2]) and float(g[0]) <= 999


def test_grid_points():
    assert make_grid("leading", 10, SCHEDULE)[:-1].tolist() == list(range(900, -1, -100))
    assert make_grid("trailing", 10, SCHEDULE)[:-1].tolist() == list(range(999, 0, -100))  # as diffusers
    assert make_grid("linspace", 4, SCHEDULE)[:-1].tolist() == [999, 666, 333, 0]
    assert make_grid("quad", 4, SCHEDULE)[:-1].tolist() == pytest.approx([999, 999 * 4 / 9, 999 / 9, 0])
    assert make_grid("quad:3", 3, SCHEDULE)[:-1].tolist() == pytest.approx([999, 999 / 8, 0])
    for grid in ("karras", "karras:3", "logsnr"):
        sig = SCHEDULE.sigma(make_grid(grid, 6, SCHEDULE)[:-1])
        assert float(sig[0]) == pytest.approx(float(SCHEDULE.sigma(999))) and float(sig[-1]) == pytest.approx(
            float(SCHEDULE.sigma(0)))
        if grid == "logsnr":  # uniform in log sigma = -lambda
            steps = torch.diff(torch.log(sig))
            assert torch.allclose(steps, steps[0].expand_as(steps))
        else:  # uniform in sigma^(1/rho) (EDM eq. 5)
            rho = 3 if grid == "karras:3" else 7
            steps = torch.diff(sig ** (1 / rho))
            assert torch.allclose(steps, steps[0].expand_as(steps), rtol=1e-6)


@pytest.mark.parametrize("grid, message", [
    ("cosine", r"unknown grid 'cosine': choose one of leading, trailing, linspace, quad, karras, logsnr, "
               "tuned"),
    ("quad:9", r"grid quad: power must be in \[0.5, 6\] \(got 9\)"),
    ("karras:0", r"grid karras: rho must be in \[1, 20\] \(got 0\)"),
    ("karras:x", r"rho must be a number"),
    ("leading:2", r"grid 'leading' takes no option"),
    ("tuned", r"grid 'tuned' comes from a recipe"),
    ([500.0, 600.0, 0.0], r"strictly decreasing timesteps in \[0, 999\]"),
    ([1200.0, 600.0, 0.0], r"strictly decreasing timesteps in \[0, 999\]"),
    ([600.0, 0.0], r"has 2 timesteps but steps=3"),
])
def test_bad_grids_are_one_line_errors(grid, message):
    with pytest.raises(PndmError, match=message) as err:
        solve(GaussianTestbed.random(SCHEDULE).eps, torch.zeros(1, 3, 8, 8, dtype=torch.float64), "ddim", 3,
              SCHEDULE, grid=grid)
    assert "\n" not in str(err.value)


def test_the_default_grid_is_the_methods_and_explicit_points_equal_the_named_grid():
    tb = GaussianTestbed.random(SCHEDULE, shape=(1, 4, 4))
    x = tb.prior(2, 999, torch.Generator().manual_seed(0))
    for method in ("ipndm", "dpm-solver++2m", "f-pndm"):
        default = METHODS[method].default_grid
        a = solve(tb.eps, x, method, 8, SCHEDULE).x0
        assert torch.equal(a, solve(tb.eps, x, method, 8, SCHEDULE, grid=default).x0)
    points = make_grid("quad", 8, SCHEDULE)[:-1].tolist()
    assert torch.equal(solve(tb.eps, x, "plms", 8, SCHEDULE, grid="quad").x0,
                       solve(tb.eps, x, "plms", 8, SCHEDULE, grid=points).x0)


@pytest.fixture(scope="module")
def gaussian_refs():
    return ReferenceCache(GaussianTestbed.random(SCHEDULE, shape=(2, 4, 4)), batch=4)


@pytest.mark.parametrize("method, grid", list(itertools.product(DETERMINISTIC, FIXED_GRIDS)))
def test_every_method_converges_on_every_grid(gaussian_refs, method, grid):
    """Gaussian testbed (exact endpoint): the error falls as N grows, at least as fast as first order."""
    errors = [grid_error(gaussian_refs, method, grid, steps)[1] for steps in (10, 40)]
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05


# --- against diffusers on the finite-data testbed (diffusers is a test-only dependency) ---

def _diffusers_error(refs, make_scheduler, steps):
    """Drive a diffusers scheduler with the testbed's eps from the same start noise as ours."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(steps)
    x, ref = refs(float(scheduler.timesteps[0]))
    x = x.clone() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = refs.testbed.eps(scheduler.scale_model_input(x, t), t.expand(x.shape[0]).double())
        x = scheduler.step(eps, t, x).prev_sample
    return float(((x.double() - ref) ** 2).mean().sqrt())


def _diffusers_configs(diffusers):
    """DPM-Solver++ 2M/3M, UniPC 2/3 and DEIS 2/3, with and without Karras sigmas, every spacing,
    with and without lower_order_final."""
    base = {"num_train_timesteps": 1000, "beta_schedule": "linear"}
    kinds = {"dpm++": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
             "unipc": (diffusers.UniPCMultistepScheduler, {}), "deis": (diffusers.DEISMultistepScheduler, {})}
    for (name, (cls, extra)), order, karras, spacing, lof in itertools.product(
            kinds.items(), (2, 3), (True, False), ("leading", "linspace", "trailing"), (True, False)):
        if name == "unipc" and order == 3 and not lof:
            continue  # diffusers' UniPC-3 without lower_order_final fails (singular system) at 5 steps
        options = {**base, **extra, "solver_order": order, "use_karras_sigmas": karras,
                   "timestep_spacing": spacing, "lower_order_final": lof}
        yield f"{name} {options}", lambda cls=cls, options=options: cls(**options)


@pytest.fixture(scope="module")
def finite_refs():
    return ReferenceCache(FiniteDataTestbed.random(SCHEDULE), batch=8)


@pytest.mark.slow
def test_nfe10_best_pndm_is_3x_more_accurate_than_diffusers_dpmpp_2m_karras(finite_refs):
    diffusers = pytest.importorskip("diffusers")
    theirs = _diffusers_error(finite_refs, lambda: diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        use_karras_sigmas=True), 10)
    ours = grid_error(finite_refs, "ipndm", "quad", 10)
    assert ours[0] == 10 and ours[1] * 3 <= theirs


@pytest.mark.slow
def test_nfe5_best_pndm_beats_the_best_diffusers_configuration(finite_refs):
    diffusers = pytest.importorskip("diffusers")
    theirs = min(_diffusers_error(finite_refs, make, 5) for _, make in _diffusers_configs(diffusers))
    ours = grid_error(finite_refs, *NFE5_BEST, 5)
    assert ours[0] == 5 and ours[1] < theirs
