"""Named models: their architecture, schedule, and where their weights are looked for.

Weights live in ``$PNDM_MODELS_DIR`` if set, else ``~/.cache/pndm/models``. For a named model
``<name>`` the first of these that exists there is used (see ``NamedModel.files``)::

    ema_<name>.ckpt   <name>.ckpt   <name>.safetensors   <name>/   (a diffusers folder)

pndm never downloads anything; ``NamedModel.origin`` says where the original weights are
published. ``"default"`` is the small model shipped inside the package (``pndm/assets/``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pndm.errors import PndmError
from pndm.models.architectures import build_model
from pndm.models.checkpoint import read_checkpoint_config
from pndm.models.configs import DDPM_CONFIGS, IDDPM_CONFIGS, image_shape, parse_config
from pndm.schedules import ScheduleSpec

WEIGHTS_ENV = "PNDM_MODELS_DIR"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_WEIGHTS = ASSETS / "default.safetensors"

_PNDM_DRIVE = "the PNDM repo's checkpoint folder (github.com/luping-liu/PNDM, README 'Google Drive')"


@dataclass(frozen=True)
class NamedModel:
    name: str
    architecture: str
    model: dict[str, Any]
    schedule: str
    T: int
    origin: str

    @property
    def files(self) -> tuple[str, ...]:
        """File / folder names looked for in the weights folder, in order."""
        n = self.name
        return (f"ema_{n}.ckpt", f"{n}.ckpt", f"{n}.safetensors", n)


NAMED_MODELS: dict[str, NamedModel] = {
    "cifar10": NamedModel(
        "cifar10", "ddpm", DDPM_CONFIGS["cifar10"], "linear", 1000,
        f"ema_cifar10.ckpt from {_PNDM_DRIVE} (the DDPM CIFAR-10 EMA model, as in DDIM), "
        "or the diffusers folder google/ddpm-cifar10-32 saved as cifar10/",
    ),
    "celeba": NamedModel(
        "celeba", "ddpm", DDPM_CONFIGS["celeba"], "linear", 1000,
        f"the DDIM CelebA-64 model (ermongroup/ddim README) or ema_celeba.ckpt from {_PNDM_DRIVE}",
    ),
    "lsun_church": NamedModel(
        "lsun_church", "ddpm", DDPM_CONFIGS["lsun_church"], "linear", 1000,
        f"ema_church.ckpt from {_PNDM_DRIVE} renamed lsun_church.ckpt, or the diffusers folder "
        "google/ddpm-ema-church-256 saved as lsun_church/",
    ),
    "lsun_bedroom": NamedModel(
        "lsun_bedroom", "ddpm", DDPM_CONFIGS["lsun_bedroom"], "linear", 1000,
        f"ema_bedroom.ckpt from {_PNDM_DRIVE} renamed lsun_bedroom.ckpt, or the diffusers folder "
        "google/ddpm-ema-bedroom-256 saved as lsun_bedroom/",
    ),
    "iddpm_cifar10": NamedModel(
        "iddpm_cifar10", "iddpm", IDDPM_CONFIGS["iddpm_cifar10"], "cosine", 1000,
        f"the iDDPM CIFAR-10 checkpoint from {_PNDM_DRIVE}, saved as iddpm_cifar10.ckpt",
    ),
}

# Stand-in for "default" until pndm/assets/default.safetensors is shipped: the untrained
# architecture of the model being trained for it (pndm-train's "mnist28" preset, 1x28x28).
UNTRAINED_DEFAULT = NamedModel(
    "default", "ddpm",
    dict(ch=32, out_ch=1, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,), dropout=0.1,
         in_channels=1, resolution=28, resamp_with_conv=True),
    "linear", 1000, "shipped with pndm as pndm/assets/default.safetensors",
)


def weights_dir() -> Path:
    """``$PNDM_MODELS_DIR`` if set, else ``~/.cache/pndm/models``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pndm" / "models"


def find_weights(name: str) -> Path | None:
    """The weights file or diffusers folder of a named model, or None if none is installed."""
    if name == "default":
        return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
    folder = weights_dir()
    for candidate in named_model(name).files:
        path = folder / candidate
        if path.is_file() or (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
            return path
    return None


def named_model(name: str) -> NamedModel:
    """The entry of a named model; "default" reads the shipped ``default.json`` (or is the stand-in)."""
    if name == "default":
        raw = read_checkpoint_config(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else None
        if raw is None:
            return UNTRAINED_DEFAULT
        parsed = parse_config(raw, str(DEFAULT_WEIGHTS))
        schedule = parsed.schedule or ScheduleSpec("linear")
        return NamedModel("default", parsed.architecture, parsed.model.to_dict(), schedule.name, schedule.T,
                          UNTRAINED_DEFAULT.origin)
    if name not in NAMED_MODELS:
        raise PndmError(f"unknown model {name!r}; valid names: default, {', '.join(NAMED_MODELS)}")
    return NAMED_MODELS[name]


def list_models() -> list[tuple[str, str, tuple[int, int, int], int, Path | None]]:
    """Rows (name, architecture, image shape, parameter count, weights path or None), "default" first.

    Parameter counts come from building each model on the ``meta`` device (no memory used).
    """
    rows = []
    for name in ("default", *NAMED_MODELS):
        entry = named_model(name)
        with torch.device("meta"):
            model = build_model(entry.architecture, entry.model)
        params = sum(p.numel() for p in model.parameters())
        rows.append((name, entry.architecture, image_shape(entry.architecture, model.config), params,
                     find_weights(name)))
    return rows
