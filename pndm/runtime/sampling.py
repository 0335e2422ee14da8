"""The batch loop: seeds -> x_T -> solver over an engine -> images, with per-call timing.

Image i is a function of its seed only (noise from :mod:`pndm.runtime.seeds`), so a run's
images do not depend on the batch size, the backend's batching or the torchrun rank layout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from pndm.errors import PndmError
from pndm.runtime.engines.base import Engine
from pndm.runtime.seeds import batches, draw_noise, image_generators


class TimedEps:
    """Wraps an eps callable: counts model calls and the wall time spent inside them.

    On CUDA the device is synchronized around each call so the time is the model's, not the
    launch's. ``on_call`` (if given) is called after every evaluation (progress bars).
    ``first_seconds`` is the first call's time (it carries the backend's one-time setup).
    """

    def __init__(self, eps: Callable, device: torch.device, on_call: Callable[[], None] | None = None):
        self.eps = eps
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.on_call = on_call
        self.calls = 0
        self.seconds = 0.0
        self.first_seconds = 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.sync()
        start = time.perf_counter()
        out = self.eps(x, t)
        self.sync()
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        if self.calls == 0:
            self.first_seconds = elapsed
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return out


@dataclass
class SampleRun:
    """Images in [-1, 1] (N, C, H, W) on the CPU, their seeds, and how long it took."""

    images: torch.Tensor
    seeds: list[int]
    method: str
    steps: int
    nfe: float
    batch: int
    model_calls: int
    model_seconds: float
    wall_seconds: float
    first_call_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def stats(self) -> dict:
        n = len(self.seeds)
        return {
            "method": self.method,
            "steps": self.steps,
            "nfe": self.nfe,
            "batch": self.batch,
            "num_images": n,
            "model_calls": self.model_calls,
            "latency_per_nfe_ms": 1e3 * self.model_seconds / max(self.model_calls, 1),
            "wall_seconds": self.wall_seconds,
            "images_per_second": n / self.wall_seconds if self.wall_seconds > 0 else None,
        }


def nfe_of(method: str, steps: int) -> int | None:
    """Model evaluations per image for ``method`` at ``steps`` (the solvers' formula; None if adaptive)."""
    from pndm.solvers import METHODS

    return METHODS[method].nfe(steps)


def _run_loop(loops: dict, engine: Engine, program, x_T: torch.Tensor, timed: TimedEps, bar) -> torch.Tensor:
    """One batch through its :class:`GraphLoop` (made and captured on first use, timed as the first
    call); every replay counts as ``program.nfe`` model calls."""
    from pndm.runtime.graph_loop import GraphLoop

    batch = x_T.shape[0]
    if batch not in loops:
        loop = loops[batch] = GraphLoop(engine, program, batch)
        timed.sync()
        start = time.perf_counter()
        loop.prepare()
        timed.sync()
        if timed.calls == 0:
            timed.first_seconds = time.perf_counter() - start
        timed.seconds += time.perf_counter() - start
    timed.sync()
    start = time.perf_counter()
    x_0 = loops[batch](x_T).float().cpu()
    timed.seconds += time.perf_counter() - start
    timed.calls += program.nfe
    bar.update(program.nfe)
    return x_0


def sample_seeds(
    engine: Engine,
    seeds: list[int],
    *,
    method: str,
    steps: int,
    batch: int,
    eta: float = 0.0,
    clip_x0: bool = False,
    grid=None,
    eps: Callable | None = None,
    progress: bool = True,
    desc: str = "sampling",
    graph_loop: bool = False,
) -> SampleRun:
    """Sample one image per seed with ``method``/``steps``/``grid`` (None: the method's) through ``engine``.

    ``eps`` replaces the engine as the model the solver calls (a wrapper of it, e.g. the checker's
    NaN watch); the engine still supplies the image shape, schedule, device and batch profile.
    ``graph_loop``: run the whole loop per batch size as one :class:`pndm.runtime.graph_loop.GraphLoop`
    (a CUDA graph on CUDA, the same program eagerly on the CPU); its warm-up and capture count as
    the first call. Not with ``eps``, eta > 0, clip_x0 or adaptive methods.
    """
    from pndm.solvers import sample

    chunks = batches(seeds, batch)
    for size in sorted({len(c) for c in chunks}):
        engine.check_batch(size)  # before any work: a bad last batch must not fail half-way
    schedule = engine.schedule
    nfe = nfe_of(method, steps)
    bar = tqdm(
        total=nfe * len(chunks) if nfe else None,
        desc=desc,
        unit="nfe",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    timed = TimedEps(eps or engine, engine.device, on_call=lambda: bar.update(1))
    program = None
    if graph_loop:
        from pndm.runtime.graph_loop import GraphLoop, trace_linear

        if eps is not None:
            raise PndmError("graph_loop runs the engine itself: it cannot take a replacement eps")
        program = trace_linear(method, steps, schedule, eta=eta, clip_x0=clip_x0, grid=grid)
        loops: dict[int, GraphLoop] = {}
    outputs = []
    start = time.perf_counter()
    try:
        for chunk in chunks:
            generators = image_generators(chunk)  # x_T, then the same streams give DDIM's step noise
            x_T = draw_noise(generators, engine.image_shape, engine.device)
            if program is not None:
                outputs.append(_run_loop(loops, engine, program, x_T, timed, bar))
                continue
            x_0 = sample(
                timed,
                x_T,
                method,
                steps,
                schedule,
                eta=eta,
                generator=generators if eta > 0 else None,
                clip_x0=clip_x0,
                grid=grid,
            )
            outputs.append(x_0.float().cpu())
    finally:
        bar.close()
    wall = time.perf_counter() - start
    return SampleRun(
        images=torch.cat(outputs),
        seeds=list(seeds),
        method=method,
        steps=steps,
        nfe=nfe if nfe is not None else timed.calls / len(chunks),  # adaptive methods: the mean
        batch=batch,
        model_calls=timed.calls,
        model_seconds=timed.seconds,
        wall_seconds=wall,
        first_call_seconds=timed.first_seconds,
    )
