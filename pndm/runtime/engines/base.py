"""What every engine is: an eps callable that knows its image shape, schedule and batch range.

The contract (docs/CONTRACTS.md): ``engine(x, t) -> eps`` with ``x`` (B, C, H, W) float32 and
``t`` (B,) float32 timestep indices in [0, T-1]; the result is float32 with ``x``'s shape.
Backends that run on preallocated buffers (ONNX Runtime with I/O binding, TensorRT) return the
same output tensor on every call with the same batch size: callers that keep an eps must copy it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pndm.errors import EngineError


@dataclass(frozen=True)
class EngineInfo:
    """What the manifest (or the model spec) says about an engine."""

    path: str
    image_shape: tuple[int, int, int]
    schedule_name: str
    T: int
    batch_range: tuple[int, int]
    precision: str
    manifest: dict | None = None


class Engine:
    """Base class: validates the call against the engine's profile, then runs the backend."""

    backend = "base"

    def __init__(self, info: EngineInfo, device: torch.device):
        self.info = info
        self.path = info.path
        self.image_shape = tuple(info.image_shape)
        self.schedule_name = info.schedule_name
        self.T = info.T
        self.batch_range = tuple(info.batch_range)
        self.precision = info.precision
        self.manifest = info.manifest
        self.device = torch.device(device)

    def check_batch(self, batch: int) -> None:
        """Raise an :class:`EngineError` naming the profile if ``batch`` is outside it."""
        lo, hi = self.batch_range
        if not lo <= batch <= hi:
            raise EngineError(
                f"batch size {batch} is outside the engine's profile [{lo}, {hi}] ({self.path}): "
                f"use --batch between {lo} and {hi}, or re-export with a wider batch range"
            )

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise EngineError(
                f"input of shape {tuple(x.shape)} does not fit the engine's image shape {self.image_shape}"
            )
        if t.shape != (x.shape[0],):
            raise EngineError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        self.check_batch(x.shape[0])
        x = x.to(self.device, torch.float32).contiguous()
        t = t.to(self.device, torch.float32).contiguous()
        return self.run(x, t)

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Backend-specific forward pass on validated float32 tensors already on ``self.device``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """A JSON-ready summary for run.json and the checker report."""
        return {
            "path": self.path,
            "backend": self.backend,
            "precision": self.precision,
            "device": str(self.device),
            "image_shape": list(self.image_shape),
            "schedule": self.schedule_name,
            "T": self.T,
            "batch_range": list(self.batch_range),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.precision}, {self.device})"
