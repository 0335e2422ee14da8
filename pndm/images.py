"""Turning model-space images in [-1, 1] into 8-bit pixels and PNG files."""

from __future__ import annotations

import math
import os

import torch
from PIL import Image

from pndm.fileio import atomic_path


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1] -> (B, H, W, C) uint8, rounding to the nearest level."""
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


def _to_pil(pixels_hwc: torch.Tensor) -> Image.Image:
    array = pixels_hwc.numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def save_png(pixels_hwc: torch.Tensor, path: str | os.PathLike) -> None:
    """Write one (H, W, C) uint8 image atomically."""
    with atomic_path(path) as tmp:
        _to_pil(pixels_hwc).save(tmp, format="PNG")


def make_grid(pixels: torch.Tensor, ncols: int | None = None, pad: int = 2) -> torch.Tensor:
    """Tile (B, H, W, C) uint8 images into one (H', W', C) image, ``ncols`` per row (default ~sqrt(B))."""
    b, h, w, c = pixels.shape
    ncols = ncols or math.ceil(math.sqrt(b))
    nrows = math.ceil(b / ncols)
    grid = torch.zeros(nrows * (h + pad) + pad, ncols * (w + pad) + pad, c, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def save_grid(x: torch.Tensor, path: str | os.PathLike, ncols: int | None = None) -> None:
    """Save (B, C, H, W) images in [-1, 1] as one PNG grid."""
    save_png(make_grid(to_uint8(x), ncols), path)
