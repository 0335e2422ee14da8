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

from pndm.runtime.engines.base import Engine
from pndm.runtime.seeds import batches, draw_noise, image_generators


class TimedEps:
    """Wraps an eps callable: counts model calls and the wall time spent inside them.

    On CUDA the device is synchronized around each call so the time is the model's, not the
    launch's. ``on_call`` (if given) is called after every evaluation (progress bars).
    """

    def __init__(self, eps: Callable, device: torch.device, on_call: Callable[[], None] | None = None):
        self.eps = eps
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.on_call = on_call
        self.calls = 0
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.sync()
        start = time.perf_counter()
        out = self.eps(x, t)
        self.sync()
        self.seconds += time.perf_counter() - start
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
) -> SampleRun:
    """Sample one image per seed with ``method``/``steps``/``grid`` (None: the method's) through ``engine``.

    ``eps`` replaces the engine as the model the solver calls (a wrapper of it, e.g. the checker's
    NaN watch); the engine still supplies the image shape, schedule, device and batch profile.
    """
    from pndm.schedules import make_schedule
    from pndm.solvers import sample

    chunks = batches(seeds, batch)
    for size in sorted({len(c) for c in chunks}):
        engine.check_batch(size)  # before any work: a bad last batch must not fail half-way
    schedule = make_schedule(engine.schedule_name, engine.T)
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
    outputs = []
    start = time.perf_counter()
    try:
        for chunk in chunks:
            generators = image_generators(chunk)  # x_T, then the same streams give DDIM's step noise
            x_T = draw_noise(generators, engine.image_shape, engine.device)
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
    )
