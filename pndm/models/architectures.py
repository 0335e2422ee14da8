"""Architecture names -> module classes; ``build_model`` builds one from a config dict."""

from __future__ import annotations

from typing import Any

from torch import nn

from pndm.errors import PndmError
from pndm.models.configs import model_config
from pndm.models.ddpm_unet import DDPMUNet
from pndm.models.iddpm_unet import IDDPMUNet

MODULES: dict[str, type[nn.Module]] = {"ddpm": DDPMUNet, "iddpm": IDDPMUNet}


def build_model(architecture: str, model_config_dict: dict[str, Any] | Any) -> nn.Module:
    """A freshly initialised module of ``architecture`` ("ddpm" | "iddpm") from its ``model`` config.

    ``model_config_dict`` is a plain dict (unknown keys such as the original YAML's ``type``,
    ``var_type``, ``ema_rate`` are ignored; lists become tuples) or the config dataclass.
    The module is returned in training mode, as ``nn.Module`` constructors do.
    """
    if architecture not in MODULES:
        valid = ", ".join(sorted(MODULES))
        raise PndmError(f"unknown architecture {architecture!r}; valid architectures: {valid}")
    return MODULES[architecture](model_config(architecture, model_config_dict, f"{architecture} config"))
