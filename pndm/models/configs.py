"""Architecture configs: the original projects' named configs, and dict -> dataclass parsing.

A config arrives as a name (``cifar10``), a plain dict (our JSON, the original YAML's
``model:`` section) or a dataclass. Keys the architecture does not use (``type``,
``var_type``, ``ema_rate``, ``ema`` in the DDIM YAMLs; ``dims``, ``use_checkpoint`` in the
iDDPM YAML) are ignored; lists become tuples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pndm.errors import PndmError
from pndm.models.ddpm_unet import DDPMUNetConfig

# The `model:` sections of ermongroup/ddim configs/{cifar10,celeba,church,bedroom}.yml
# (the PNDM repo ships the same values); dropout is the training value, inert in eval mode.
DDPM_CONFIGS: dict[str, dict[str, Any]] = {
    "cifar10": dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                    dropout=0.1, in_channels=3, resolution=32, resamp_with_conv=True),
    "celeba": dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                   dropout=0.1, in_channels=3, resolution=64, resamp_with_conv=True),
    "lsun_church": dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                        attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=256,
                        resamp_with_conv=True),
    "lsun_bedroom": dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                         attn_resolutions=(16,), dropout=0.0, in_channels=3, resolution=256,
                         resamp_with_conv=True),
}


def dataclass_from_dict(cls: type, raw: dict[str, Any], what: str):
    """Build dataclass ``cls`` from ``raw``: unknown keys ignored, lists -> tuples.

    Raises PndmError naming ``what`` if ``raw`` is not a mapping or a value has the wrong kind.
    """
    if not isinstance(raw, dict):
        raise PndmError(f"{what}: expected a mapping of architecture settings, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise PndmError(f"{what}: invalid config ({exc})") from None


def ddpm_config(raw: dict[str, Any] | DDPMUNetConfig, what: str = "ddpm config") -> DDPMUNetConfig:
    """DDPMUNetConfig from a dict (original YAML ``model:`` keys) or an existing config."""
    if isinstance(raw, DDPMUNetConfig):
        return raw
    return dataclass_from_dict(DDPMUNetConfig, raw, what)
