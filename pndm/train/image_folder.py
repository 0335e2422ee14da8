"""Reading training images from a folder of image files or from an ``.npz`` array."""

from __future__ import annotations

from pathlib import Path

import torch

from pndm.errors import PndmError
from pndm.images import IMAGE_SUFFIXES, read_image_files


def read_image_folder(folder: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """All images under ``folder`` (recursively) as uint8 (N, C, H, W): each resized to ``size`` (H, W), or
    without it all of one size."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise PndmError(f"--data {folder}: the folder holds no images ({suffixes})")
    return read_image_files(files, f"--data {folder}", hint=" (or pass --resize)", size=size)


def read_npz(path: Path) -> torch.Tensor:
    """uint8 (N, C, H, W) from the array ``images`` (or the only array) of an ``.npz`` file."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            key = "images" if "images" in keys else (keys[0] if len(keys) == 1 else None)
            if key is None:
                raise PndmError(f"--data {path}: the .npz holds {keys}; name the image array 'images'")
            array = data[key]
    except (OSError, ValueError):
        raise PndmError(f"--data {path}: not a readable .npz of arrays (a damaged file, or pickled objects, "
                        "which pndm does not load); save the images with numpy.savez") from None
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise PndmError(
            f"--data {path}: array '{key}' is {array.dtype} {array.shape}; "
            "expected uint8 (N, H, W) or (N, H, W, C)"
        )
    images = torch.from_numpy(array.copy())
    return images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
