"""Turning model-space images in [-1, 1] into 8-bit pixels and PNG files, and reading image files back."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pndm.errors import PndmError
from pndm.fileio import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
# pndm's pictures of several images, written beside the samples but not samples: pndm-run sample's grid and
# --save-trajectory picture, pndm-run interpolate's strip of frames
GRID_PNG, TRAJECTORY_PNG, STRIP_PNG = "grid.png", "trajectory.png", "strip.png"
COLLAGE_NAMES = frozenset({GRID_PNG, TRAJECTORY_PNG, STRIP_PNG})


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float in [-1, 1] -> (B, H, W, C) uint8, rounding to the nearest level."""
    pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # image channels -> the PNG (PIL) mode that holds them


def check_png_channels(channels: int, fix: str = "use --format npz") -> None:
    """Refuse images PNG cannot hold (more than 4 channels), before the work."""
    if channels not in PNG_MODES:
        raise PndmError(f"the images have {channels} channels and a PNG holds 1 to 4: {fix}")


def _to_pil(pixels_hwc: torch.Tensor) -> Image.Image:
    array = pixels_hwc.numpy()
    check_png_channels(array.shape[2])
    mode = PNG_MODES[array.shape[2]]
    return Image.fromarray(array[:, :, 0] if mode == "L" else array, mode=mode)


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


def _grey_or_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 'L' or 'RGB' by what it holds, alpha dropped: grey modes -> 'L' (16-bit and 32-bit integer
    grey scaled from 0..65535); a palette image -> 'L' when every colour it uses is grey, else 'RGB'; the
    rest (RGB, RGBA, CMYK, YCbCr...) -> 'RGB'."""
    if im.mode in ("1", "L", "LA", "La"):
        return im.convert("L")
    if im.mode.startswith("I"):  # 'I;16' (a 16-bit grey PNG), 'I;16B', 'I': convert("L") would clip at 255
        grey = np.asarray(im).astype(np.float64) / 257
        return Image.fromarray(grey.round().clip(0, 255).astype(np.uint8), mode="L")
    rgb = im.convert("RGB")
    if im.mode in ("P", "PA"):
        r, g, b = rgb.split()
        if r.tobytes() == g.tobytes() == b.tobytes():
            return r
    return rgb


def read_image_files(files: list[Path], where: str, hint: str = ": resize them to one size first",
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) from image ``files``: grey ones 1 channel, colour ones 3 (:func:`_grey_or_rgb`),
    and all 3 when the set mixes them. ``size`` (H, W): every image is resized to it (bilinear, antialiased);
    without it the images must share one size. Errors are one line starting with ``where`` (``hint``: how to
    fix a size mismatch)."""
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = _grey_or_rgb(im)
                if size is not None and im.size != size[::-1]:
                    im = im.resize(size[::-1], Image.Resampling.BILINEAR)
                flat = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
                images.append(flat.reshape(im.height, im.width, len(im.getbands())).permute(2, 0, 1))
        except (UnidentifiedImageError, OSError) as exc:
            raise PndmError(f"{where}: cannot read image {path} ({exc})") from None
        if images[-1].shape[1:] != images[0].shape[1:]:
            (h, w), (h0, w0) = images[-1].shape[1:], images[0].shape[1:]
            raise PndmError(f"{where}: {path.name} is {h}x{w} but {files[0].name} is {h0}x{w0}; all images "
                            f"must share one size{hint}")
    channels = max(image.shape[0] for image in images)
    return torch.stack([image.expand(channels, -1, -1) for image in images])
