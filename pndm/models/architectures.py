"""Architecture names -> (config parser, module class); ``build_model`` builds one from a dict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pndm.errors import PndmError
from pndm.models.configs import ddpm_config
from pndm.models.ddpm_unet import DDPMUNet


@dataclass(frozen=True)
class Architecture:
    name: str
    parse_config: Callable[[Any, str], Any]  # (dict | dataclass, what) -> config dataclass
    module: type[nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "ddpm": Architecture("ddpm", ddpm_config, DDPMUNet),
}


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise PndmError(f"unknown architecture {name!r}; valid architectures: {valid}")
    return ARCHITECTURES[name]


def build_model(architecture: str, model_config: dict[str, Any]) -> nn.Module:
    """A freshly initialised module of ``architecture`` ("ddpm" | "iddpm") from a plain config dict.

    Unknown keys (the original YAML's ``type``, ``var_type``, ``ema_rate``...) are ignored and
    lists become tuples. The module is returned in training mode, as ``nn.Module`` constructors do.
    """
    arch = get_architecture(architecture)
    return arch.module(arch.parse_config(model_config, f"{architecture} config"))
