"""Reading training images from a folder of image files or from an ``.npz`` array."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from pndm.errors import PndmError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_image_folder(folder: Path) -> torch.Tensor:
    """All images under ``folder`` (recursively) as uint8 (N, C, H, W); they must share one size and mode."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise PndmError(f"--data {folder}: the folder holds no images ({suffixes})")
    images = []
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("L") if im.mode in ("L", "1", "P", "I;16") else im.convert("RGB")
                images.append(_pil_array(im).permute(2, 0, 1))
        except (UnidentifiedImageError, OSError) as exc:
            raise PndmError(f"--data {folder}: cannot read image {path} ({exc})") from None
        if images[-1].shape != images[0].shape:
            raise PndmError(
                f"--data {folder}: {path.name} is {tuple(images[-1].shape)} but {files[0].name} is "
                f"{tuple(images[0].shape)}; all images must share one size and mode (or pass --resize)"
            )
    return torch.stack(images)


def _pil_array(im: Image.Image) -> torch.Tensor:
    channels = len(im.getbands())
    flat = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return flat.reshape(im.height, im.width, channels)


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
    except (OSError, ValueError) as exc:
        raise PndmError(f"--data {path}: cannot read the .npz ({exc})") from None
    if array.dtype != np.uint8 or array.ndim not in (3, 4):
        raise PndmError(
            f"--data {path}: array '{key}' is {array.dtype} {array.shape}; "
            "expected uint8 (N, H, W) or (N, H, W, C)"
        )
    images = torch.from_numpy(array.copy())
    return images[:, None] if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
