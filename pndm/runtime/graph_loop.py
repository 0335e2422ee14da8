"""The whole sampling loop as one CUDA graph: every model call and every solver update of a
(method, steps, batch) captured together, so a step costs no Python and no launch latency.

Why it can be captured: with a fixed time grid, every deterministic fixed-step solver here
(DDIM with eta = 0, PLMS, S-/F-PNDM, FON, iPNDM, DPM-Solver++, UniPC, Heun) is *linear* in its
sources, x_T and the model outputs eps_1..eps_K: the k-th model input and x_0 are

    x_in_k = sum_{j<k} A[k, j] s_j,        x_0 = sum_j b_j s_j,        s = (x_T, eps_1, ..., eps_K)

with coefficients that depend only on the schedule and the grid (PNDM eq. 9's transfer and every
multistep sum are linear combinations with scalar weights). :func:`trace_linear` finds A, b and the
K timesteps by running the solver once on a float64 probe whose "pixels" are the unit vectors
(column j of the probe is source j) and checks the linearity on one extra random column. The loop
is then the same two operations K times, on static buffers, with no branch on data
(:class:`GraphLoop`): on CUDA it is captured once and replayed; on the CPU (or with
``capture=False``) the identical program runs eagerly ("recording mode"), which is what the CPU
tests compare against :func:`pndm.solvers.sample`.

Not linear, hence not captured: ``pf`` (adaptive), DDIM with eta > 0 (fresh noise), x0 clipping.
Memory: K + 1 image batches are kept (f-pndm with 50 steps at batch 64 on 32x32x3: 47 MB).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pndm.errors import PndmError


@dataclass(frozen=True)
class LinearProgram:
    """A solver run as linear algebra: ``A`` (K, K+1), ``b`` (K+1,), ``t`` (K,), all float64."""

    method: str
    steps: int
    A: torch.Tensor
    b: torch.Tensor
    t: torch.Tensor

    @property
    def nfe(self) -> int:
        return int(self.t.numel())


def capturable(method: str, *, eta: float = 0.0, clip_x0: bool = False) -> str | None:
    """None if ``method`` with these options can run as a :class:`LinearProgram`, else why not."""
    from pndm.solvers import METHODS

    info = METHODS.get(method)
    if info is None:
        return f"unknown method {method!r}"
    if info.adaptive:
        return f"{method} is adaptive (its number of model calls depends on the data)"
    if eta > 0:
        return "DDIM with eta > 0 draws fresh noise at every step"
    if clip_x0:
        return "x0 clipping is not linear"
    return None


def trace_linear(method: str, steps: int, schedule, **solve_options) -> LinearProgram:
    """Run ``method`` once on a float64 probe and read off its :class:`LinearProgram`.

    ``solve_options`` go to :func:`pndm.solvers.solve` (e.g. a time grid). Raises
    :class:`PndmError` if the method is not capturable or turns out not to be linear.
    """
    from pndm.solvers import METHODS, solve

    eta, clip_x0 = solve_options.get("eta", 0.0), solve_options.get("clip_x0", False)
    reason = capturable(method, eta=eta, clip_x0=clip_x0)
    if reason:
        raise PndmError(f"cannot capture the sampling loop as one graph: {reason}")
    K = METHODS[method].nfe(steps)
    width = K + 2  # sources 0..K, then one random column that checks linearity
    rng = torch.Generator().manual_seed(0)
    check = torch.randn(K + 1, generator=rng, dtype=torch.float64)
    probe = torch.zeros(1, 1, 1, width, dtype=torch.float64)
    probe[..., 0] = 1.0
    probe[..., -1] = check[0]
    inputs: list[torch.Tensor] = []
    times: list[float] = []

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = len(inputs)
        if k >= K:
            raise PndmError(f"{method} made more than its {K} model calls: it cannot be captured")
        inputs.append(x.reshape(width).clone())
        times.append(float(t[0]))
        out = torch.zeros_like(x)
        out[..., k + 1] = 1.0
        out[..., -1] = check[k + 1]
        return out

    x0 = solve(eps, probe, method, steps, schedule, **solve_options).x0.reshape(width)
    if len(inputs) != K:
        raise PndmError(f"{method} made {len(inputs)} model calls, not {K}: it cannot be captured")
    A = torch.stack([row[: K + 1] for row in inputs])
    b = x0[: K + 1]
    predicted = torch.cat([A @ check, (b @ check).reshape(1)])
    observed = torch.cat([torch.stack([row[-1] for row in inputs]), x0[-1:]])
    if not torch.allclose(predicted, observed, rtol=1e-9, atol=1e-9):
        raise PndmError(f"{method} is not linear in x_T and eps: it cannot be captured")
    if torch.triu(A, diagonal=1).abs().max() > 0 or A[:, -1].abs().max() > 0:
        raise PndmError(f"{method}'s model input depends on a later model output: it cannot be captured")
    return LinearProgram(method=method, steps=steps, A=A, b=b, t=torch.tensor(times, dtype=torch.float64))


class GraphLoop:
    """A :class:`LinearProgram` over an eps engine on static buffers; one CUDA graph on CUDA.

    ``loop(x_T) -> x_0`` for x_T of shape (batch, C, H, W). ``capture`` (default: on CUDA devices)
    records the whole loop into a :class:`torch.cuda.CUDAGraph` after one eager warm-up run (which
    lets the engine finish its lazy setup); each call then copies x_T in, replays and copies x_0
    out. Without capture the same program runs eagerly on the same buffers.
    """

    def __init__(self, engine, program: LinearProgram, batch: int, *, capture: bool | None = None):
        self.engine = engine
        self.program = program
        self.batch = batch
        device = torch.device(engine.device)
        self.capture = device.type == "cuda" if capture is None else capture
        if self.capture and device.type != "cuda":
            raise PndmError("a CUDA graph needs a CUDA engine (the engine runs on the CPU)")
        K = program.nfe
        shape = (batch, *engine.image_shape)
        self.A = program.A.to(device, torch.float32)
        self.b = program.b.to(device, torch.float32)
        self.t = program.t.to(device, torch.float32)
        self.sources = torch.zeros((K + 1, *shape), device=device)
        self.t_in = torch.zeros(batch, device=device)
        self.x0 = torch.zeros(shape, device=device)
        self.graph = None

    def _program(self) -> None:
        """The loop itself: K x (combine sources, set t, call the engine, store eps), then x_0."""
        for k in range(self.program.nfe):
            x_in = torch.tensordot(self.A[k, : k + 1], self.sources[: k + 1], dims=1)
            self.t_in.copy_(self.t[k].expand(self.batch))
            self.sources[k + 1].copy_(self.engine(x_in, self.t_in))
        self.x0.copy_(torch.tensordot(self.b, self.sources, dims=1))

    def prepare(self) -> None:
        """Capture the graph now (one eager warm-up run, then the capture); nothing without capture."""
        if not self.capture or self.graph is not None:
            return
        device = self.x0.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._program()  # warm-up: the engine's lazy setup must not happen inside the capture
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls a backend makes on its own threads must not abort the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._program()
        self.graph = graph

    def __call__(self, x_T: torch.Tensor) -> torch.Tensor:
        if tuple(x_T.shape) != tuple(self.x0.shape):
            raise PndmError(f"x_T has shape {tuple(x_T.shape)}, the captured loop {tuple(self.x0.shape)}")
        self.prepare()
        self.sources[0].copy_(x_T)
        if self.graph is None:
            self._program()
        else:
            self.graph.replay()
        return self.x0.clone()
