"""Writing a sampling run: one PNG per image (or one .npz), ``grid.png`` and ``run.json``.

Everything goes through :func:`pndm.fileio.atomic_path`, and the output folder is checked for
writability before any sampling starts, so an error never leaves half a run behind.
"""

from __future__ import annotations

import io
import json
import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from pndm.errors import PndmError
from pndm.fileio import atomic_path, atomic_write_text
from pndm.images import make_grid, save_png

GRID_MAX_IMAGES = 64  # grid.png shows the first 64 seeds; every image is still written on its own


def prepare_out_dir(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and prove it is writable (before sampling, not after)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".pndm-write-test"):
            pass
        (out / ".pndm-write-test").unlink()
    except OSError as e:
        raise PndmError(
            f"cannot write to the output folder {out} ({e.strerror or e}): choose a writable --out"
        ) from e
    return out


def image_name(seed: int) -> str:
    return f"seed{seed:06d}.png"


def write_pngs(pixels: torch.Tensor, seeds: list[int], out: Path) -> None:
    """One ``seedNNNNNN.png`` per (H, W, C) uint8 image."""
    for image, seed in zip(pixels, seeds, strict=True):
        save_png(image, out / image_name(seed))


def write_npz(pixels: torch.Tensor, seeds: list[int], out: Path) -> Path:
    """``samples.npz`` with ``images`` (N, H, W, C) uint8 and ``seeds`` (N,) int64."""
    path = out / "samples.npz"
    buffer = io.BytesIO()
    np.savez(buffer, images=pixels.numpy(), seeds=np.asarray(seeds, dtype=np.int64))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return path


def write_grid(pixels: torch.Tensor, out: Path) -> None:
    save_png(make_grid(pixels[:GRID_MAX_IMAGES]), out / "grid.png")


def versions() -> dict:
    """Versions of the packages that decide a run's numbers."""
    found = {"python": platform.python_version()}
    for package in ("pndm", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "onnx"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def write_json(data: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
