"""The whole sampling loop as one program (pndm.runtime.graph_loop): same answers as the solvers."""

from __future__ import annotations

import pytest
import torch
from runtime_fixtures import TINY, one_torch_thread, tiny_model  # noqa: F401

from pndm.engine_format import IOSpec
from pndm.errors import PndmError
from pndm.runtime.engines.base import EngineInfo
from pndm.runtime.engines.torch_engine import TorchEngine
from pndm.runtime.graph_loop import GraphLoop, capturable, trace_linear
from pndm.runtime.sampling import sample_seeds
from pndm.schedule_spec import ScheduleSpec
from pndm.schedules import make_schedule
from pndm.solvers import sample

LINEAR = [
    "ddim", "s-pndm", "f-pndm", "plms", "fon", "ipndm", "dpm-solver++2m", "dpm-solver++3m", "unipc", "heun"
]


class ToyEngine:
    """A cheap non-linear eps model with an engine's attributes (the loop must not rely on linearity
    of the model, only of the solver)."""

    device = torch.device("cpu")
    image_shape = (2, 4, 4)

    def __call__(self, x, t):
        return torch.tanh(0.7 * x + torch.sin(t / 300)[:, None, None, None]) + 0.1 * x.flip(-1)


@pytest.mark.parametrize("method", LINEAR)
def test_recorded_loop_matches_the_solver(method):
    schedule = make_schedule("linear", 1000)
    steps = 6
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    program = trace_linear(method, steps, schedule)
    expected = sample(ToyEngine(), x_T, method, steps, schedule)
    got = GraphLoop(ToyEngine(), program, batch=3, capture=False)(x_T)
    assert program.nfe == {"f-pndm": 15, "fon": 15, "s-pndm": 7, "plms": 7, "heun": 11}.get(method, 6)
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize(
    "method, grid", [("ipndm", "quad"), ("dpm-solver++2m", "karras"), ("unipc", "logsnr")]
)
def test_recorded_loop_on_other_time_grids(method, grid):
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    expected = sample(ToyEngine(), x_T, method, 7, schedule, grid=grid)
    got = GraphLoop(ToyEngine(), trace_linear(method, 7, schedule, grid=grid), batch=3, capture=False)(x_T)
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-5)


def test_a_wrong_program_gives_a_different_answer():
    """The comparison above can fail: the program of another method does not match."""
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    expected = sample(ToyEngine(), x_T, "s-pndm", 6, schedule)
    got = GraphLoop(ToyEngine(), trace_linear("plms", 6, schedule), batch=3, capture=False)(x_T)
    assert (got - expected).abs().max() > 1e-3


@pytest.mark.parametrize(
    "method, options", [("pf", {}), ("ddim", {"eta": 1.0}), ("f-pndm", {"clip_x0": True})]
)
def test_non_linear_runs_are_refused(method, options):
    assert capturable(method, **options)
    with pytest.raises(PndmError, match="cannot capture"):
        trace_linear(method, 5, make_schedule("linear", 1000), **options)


def _tiny_engine(device="cpu"):
    info = EngineInfo(
        path="tiny", image_shape=(3, 16, 16), schedule=ScheduleSpec("linear", 1000),
        batch_range=(1, 8),
        precision="fp32", io=IOSpec.for_image((3, 16, 16)),
    )
    return TorchEngine(info, torch.device(device), tiny_model()).open()


def test_sample_seeds_graph_loop_on_cpu_matches_the_normal_loop():
    engine = _tiny_engine()
    normal = sample_seeds(engine, [0, 1, 2], method="f-pndm", steps=5, batch=2, progress=False)
    looped = sample_seeds(
        engine, [0, 1, 2], method="f-pndm", steps=5, batch=2, progress=False, graph_loop=True
    )
    assert looped.model_calls == normal.model_calls == 2 * 14
    torch.testing.assert_close(looped.images, normal.images, rtol=0, atol=1e-4)


@pytest.fixture
def float32_cuda():
    """CUDA convolutions and matmuls in float32: PyTorch's default TF32 rounds their inputs to 10 bits, so
    two float32-equal orderings of the solver arithmetic would differ by TF32 noise, not by a loop error."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["f-pndm", "dpm-solver++3m"])
def test_cuda_graph_replay_matches_the_recorded_loop_and_the_solver(method, float32_cuda):
    engine = _tiny_engine("cuda")
    schedule = make_schedule("linear", 1000)
    x_T = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).cuda()
    program = trace_linear(method, 10, schedule)
    eager = GraphLoop(engine, program, batch=4, capture=False)(x_T)
    graph = GraphLoop(engine, program, batch=4)
    first, second = graph(x_T), graph(x_T)
    assert graph.graph is not None
    torch.testing.assert_close(first, eager, rtol=0, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    # the random tiny model drives x to |x| ~ 250-700: float32 rounding of the two orderings of the solver
    # arithmetic differs by ~1e-6 of that (5e-7 measured on the CPU)
    expected = sample(engine, x_T, method, 10, schedule)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


@pytest.mark.cuda
def test_cuda_sample_seeds_with_the_graph_loop(float32_cuda):
    engine = _tiny_engine("cuda")
    normal = sample_seeds(engine, [0, 1, 2, 3], method="ddim", steps=10, batch=4, progress=False)
    looped = sample_seeds(
        engine, [0, 1, 2, 3], method="ddim", steps=10, batch=4, progress=False, graph_loop=True
    )
    torch.testing.assert_close(looped.images, normal.images, rtol=0, atol=1e-4)
