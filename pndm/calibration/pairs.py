"""Collect, save and load calibration pairs ``(x_t, t)``.

A pair is the input of one model evaluation during a real sampling run: ``count`` trajectories
from seeded Gaussian noise x_T, solved with ``method`` in ``steps`` steps, each evaluation seen
through the solver's ``callback``. With the default DDIM grid t_i = i * (T // N) the pairs cover
t from 0 to (N-1) * T // N, across the whole [0, T-1] range, at the x_t the model really meets
(random inputs in (-1, 1) would not: DESIGN.md).

Stored as safetensors: tensors ``x`` (N, C, H, W), ``t`` (N,) and the model's ``eps`` (N, C, H, W),
all float32, and the collection settings as JSON in the header under ``pndm_calibration``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm import tqdm

from pndm.errors import PndmError
from pndm.fileio import atomic_path

METADATA_KEY = "pndm_calibration"
DEFAULT_METHOD = "ddim"
DEFAULT_STEPS = 10
DEFAULT_COUNT = 2


@dataclass
class CalibrationSet:
    """``x`` (N, C, H, W) and ``t`` (N,) float32 model inputs, the model's ``eps`` at them, and how
    they were collected (``info``)."""

    x: torch.Tensor
    t: torch.Tensor
    eps: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.t.numel())


def check_method(method: str) -> None:
    """Refuse a calibration ``method`` that is no solver of :mod:`pndm.solvers`."""
    from pndm.solvers import METHODS

    if method not in METHODS:
        raise PndmError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


@torch.no_grad()
def collect_pairs(eps, image_shape: tuple[int, int, int], schedule, *, method: str = DEFAULT_METHOD,
                  steps: int = DEFAULT_STEPS, count: int = DEFAULT_COUNT, seed: int = 0,
                  batch: int | None = None, progress: bool = True) -> CalibrationSet:
    """Run ``count`` trajectories of ``method`` (``steps`` steps) and keep every model input.

    ``eps`` is the fp32 reference model (any eps callable); ``schedule`` a
    :class:`pndm.schedules.Schedule`; trajectories run ``batch`` at a time (default: all at once)
    from x_T ~ N(0, I) drawn with ``torch.Generator().manual_seed(seed)``.
    """
    from pndm.solvers import METHODS, sample

    check_method(method)
    if count < 1 or steps < 1:
        raise PndmError(f"calibration needs count >= 1 and steps >= 1 (got count={count}, steps={steps})")
    batch = batch or count
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn(count, *image_shape, generator=generator)
    xs: list[torch.Tensor] = []
    ts: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []

    def keep(x, t, eps_value, _index):
        xs.append(x.detach().float().cpu().clone())
        outs.append(eps_value.detach().float().cpu().clone())
        t_row = torch.as_tensor(t, dtype=torch.float32).detach().cpu().reshape(-1)
        ts.append(t_row.expand(x.shape[0]).clone())
        bar.update(1)

    per_run = METHODS[method].nfe(steps)  # None for adaptive methods
    total = per_run * -(-count // batch) if per_run is not None else None
    with tqdm(total=total, desc=f"calibration ({method}, {steps} steps)", unit="eval", disable=not progress,
              leave=False) as bar:
        for start in range(0, count, batch):
            sample(eps, x_T[start:start + batch], method, steps, schedule, callback=keep)
    t = torch.cat(ts)
    info = {"method": method, "steps": steps, "count": count, "seed": seed, "schedule": schedule.name,
            "T": int(schedule.T), "t_min": float(t.min()), "t_max": float(t.max())}
    return CalibrationSet(torch.cat(xs), t, torch.cat(outs), info)


@torch.no_grad()
def forward_process_pairs(eps, image_shape: tuple[int, int, int], schedule, *,
                          steps: int = DEFAULT_STEPS, count: int = DEFAULT_COUNT,
                          seed: int = 0) -> CalibrationSet:
    """Pairs from the forward process, for models whose own trajectories mean nothing (random weights).

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) n (DDPM eq. 4) at the DDIM grid t_i = i * (T // steps),
    ``count`` images per t. x0 are smooth random images in (-1, 1) (Gaussian noise at 1/4 resolution,
    upsampled bilinearly, through tanh); a random-init model's own trajectories blow up, so quantizing it
    needs inputs of the right scale instead.
    """
    if count < 1 or steps < 1:
        raise PndmError(f"calibration needs count >= 1 and steps >= 1 (got count={count}, steps={steps})")
    generator = torch.Generator().manual_seed(seed)
    channels, height, width = image_shape
    low = torch.randn(count, channels, max(1, height // 4), max(1, width // 4), generator=generator)
    x0 = torch.tanh(2 * torch.nn.functional.interpolate(low, size=(height, width), mode="bilinear"))
    grid = [i * (int(schedule.T) // steps) for i in range(steps)]
    xs, ts, outs = [], [], []
    for t_index in grid:
        ab = torch.as_tensor(schedule.alpha_bar(torch.tensor(float(t_index))), dtype=torch.float32)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        t = torch.full((count,), float(t_index))
        xs.append(x_t)
        ts.append(t)
        outs.append(eps(x_t, t).detach().float().cpu().clone())
    t = torch.cat(ts)
    info = {"method": "forward-process", "steps": steps, "count": count, "seed": seed,
            "schedule": schedule.name, "T": int(schedule.T), "t_min": float(t.min()), "t_max": float(t.max())}
    return CalibrationSet(torch.cat(xs), t, torch.cat(outs), info)


def save_pairs(path: str | Path, pairs: CalibrationSet) -> Path:
    """Write ``pairs`` to a safetensors file atomically. Serialized in memory, so a failed write (a full
    disk) is an ``OSError`` naming the file, not safetensors' own error."""
    path = Path(path)
    header = {METADATA_KEY: json.dumps(pairs.info, sort_keys=True)}
    tensors = {"x": pairs.x.contiguous(), "t": pairs.t.contiguous(), "eps": pairs.eps.contiguous()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(tensors, metadata=header))
    return path


def load_pairs(path: str | Path) -> CalibrationSet:
    """Read a calibration file written by :func:`save_pairs` (no code is executed)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        first = str(exc).splitlines()[0]
        raise PndmError(f"{path}: not a readable calibration file ({first}); recollect it") from None
    rows = {tensors[k].shape[0] for k in tensors if tensors[k].dim() > 0}
    if set(tensors) != {"x", "t", "eps"} or len(rows) != 1:
        raise PndmError(f"{path}: a calibration file holds 'x', 't' and 'eps', one row per pair; recollect")
    info = json.loads(header.get(METADATA_KEY, "{}"))
    return CalibrationSet(tensors["x"], tensors["t"], tensors["eps"], info)
