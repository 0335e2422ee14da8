"""Diffusers ``UNet2DModel`` directories mapped exactly onto the original-layout DDPM UNet.

For the google/ddpm-cifar10-32 family the two networks compute the same function:

* timestep embedding: diffusers' ``Timesteps(dim, flip_sin_to_cos, freq_shift)`` uses
  frequencies 10000^(-i/(h - freq_shift)); with ``freq_shift=1`` that is DDPM's
  10000^(-i/(h-1)). ``flip_sin_to_cos=True`` only swaps the [sin | cos] halves, which is
  absorbed exactly by swapping the input columns of the first time-embedding linear layer.
* attention: with ``attention_head_dim=None`` every block is single-head with scale C^-1/2,
  like the original; the (C, C) q/k/v/out linears become 1x1 convs.
* downsampling: ``downsample_padding=0`` pads (0, 1, 0, 1) then a stride-2 conv, like the
  original; GroupNorm(32, eps=``norm_eps``) must have eps 1e-6.

Any config outside this (other activation, eps, padding, multi-head attention, class
conditioning, Fourier/learned time embedding...) raises :class:`NotMappable` naming the option,
rather than being loaded approximately; :mod:`pndm.models.diffusers_folder` then runs diffusers'
own module instead.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from pndm.errors import CheckpointError
from pndm.models.checkpoint import read_safetensors
from pndm.models.ddpm_unet import DDPMUNetConfig
from pndm.models.state_dicts import read_torch_state_dict

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# option -> the value the original DDPM UNet corresponds to (None: absent or null in config.json).
REQUIRED = {
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "freq_shift": 1,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2D",
    "add_attention": True,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "num_class_embeds": None,
}
# UNet2DModel's constructor defaults (diffusers 0.42): what an option absent from config.json means.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "act_fn": "silu", "time_embedding_type": "positional", "freq_shift": 0, "flip_sin_to_cos": True,
    "norm_eps": 1e-5, "norm_num_groups": 32, "downsample_padding": 1, "downsample_type": "conv",
    "upsample_type": "conv", "center_input_sample": False, "mid_block_type": "UNetMidBlock2D",
    "add_attention": True, "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default",
    "class_embed_type": None, "num_class_embeds": None, "num_train_timesteps": None, "attention_head_dim": 8,
    "attn_norm_num_groups": None, "time_embedding_dim": None, "layers_per_block": 2, "in_channels": 3,
    "out_channels": 3, "dropout": 0.0, "sample_size": None,
    "block_out_channels": (224, 448, 672, 896),
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
}
DOWN_TYPES = {"DownBlock2D": False, "AttnDownBlock2D": True}  # type -> has attention
UP_TYPES = {"UpBlock2D": False, "AttnUpBlock2D": True}

_LEAF_NAMES = {
    "time_emb_proj": "temb_proj", "conv_shortcut": "nin_shortcut", "group_norm": "norm",
    "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
    "to_out.0": "proj_out", "proj_attn": "proj_out",
}


class NotMappable(CheckpointError):
    """A UNet2DModel config that the DDPM UNet does not compute exactly; ``option`` names why."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


def _refuse(path: Path, option: str, value: Any, wanted: Any) -> NotMappable:
    return NotMappable(
        f"{path}: diffusers option {option}={value!r} cannot be mapped exactly onto the original DDPM "
        f"UNet (needs {wanted!r})", f"{option}={value!r}"
    )


def ddpm_config_from_diffusers(cfg: dict[str, Any], path: Path) -> DDPMUNetConfig:
    """The DDPMUNetConfig computing what a UNet2DModel config computes; refuses the rest.

    ``cfg`` is config.json over DIFFUSERS_DEFAULTS (an absent option means diffusers' default).
    """
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise _refuse(path, "_class_name", cfg["_class_name"], "UNet2DModel")
    for option, wanted in REQUIRED.items():
        value = cfg[option]
        close = isinstance(value, float) and isinstance(wanted, float) and abs(value - wanted) < 1e-12
        if value != wanted and not close:
            raise _refuse(path, option, value, wanted)
    if cfg["out_channels"] != cfg["in_channels"]:  # learned variance: diffusers module
        raise _refuse(path, "out_channels", cfg["out_channels"], cfg["in_channels"])
    channels = list(cfg["block_out_channels"])
    ch = channels[0]
    if any(c % ch for c in channels):
        raise _refuse(path, "block_out_channels", channels, "multiples of the first entry")
    if cfg["attn_norm_num_groups"] not in (None, 32):
        raise _refuse(path, "attn_norm_num_groups", cfg["attn_norm_num_groups"], 32)
    if cfg["time_embedding_dim"] not in (None, 4 * ch):
        raise _refuse(path, "time_embedding_dim", cfg["time_embedding_dim"], 4 * ch)
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    for option, types, known in (("down_block_types", down, DOWN_TYPES), ("up_block_types", up, UP_TYPES)):
        unknown = [t for t in types if t not in known]
        if unknown:
            raise _refuse(path, option, unknown[0], " or ".join(known))
    attn_levels = [lv for lv, t in enumerate(down) if DOWN_TYPES[t]]
    up_attn_levels = sorted(len(up) - 1 - i for i, t in enumerate(up) if UP_TYPES[t])
    if attn_levels != up_attn_levels:
        raise _refuse(path, "up_block_types", up, "attention at the same levels as down_block_types")
    head_dim = cfg["attention_head_dim"]
    if head_dim is not None and any(head_dim != channels[lv] for lv in attn_levels + [len(channels) - 1]):
        raise _refuse(path, "attention_head_dim", head_dim, None)  # multi-head attention
    size = cfg["sample_size"]
    if size is None:
        raise CheckpointError(f"{path}: config.json has no sample_size; the image size is needed, add it")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise _refuse(path, "sample_size", size, "a square size")
        size = size[0]
    return DDPMUNetConfig(
        ch=ch, out_ch=cfg["out_channels"], ch_mult=tuple(c // ch for c in channels),
        num_res_blocks=cfg["layers_per_block"],
        attn_resolutions=tuple(size >> lv for lv in attn_levels),
        dropout=cfg["dropout"], in_channels=cfg["in_channels"], resolution=size,
        resamp_with_conv=True,
    )


def _rename(key: str, num_levels: int) -> str | None:
    """The original-layout name of a diffusers UNet2DModel key (None if it has no counterpart)."""
    rules = (
        (r"time_embedding\.linear_1\.(.+)", lambda m: f"temb.dense.0.{m[1]}"),
        (r"time_embedding\.linear_2\.(.+)", lambda m: f"temb.dense.1.{m[1]}"),
        (r"(conv_in|conv_out)\.(.+)", lambda m: f"{m[1]}.{m[2]}"),
        (r"conv_norm_out\.(.+)", lambda m: f"norm_out.{m[1]}"),
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m: f"down.{m[1]}.block.{m[2]}.{m[3]}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m: f"down.{m[1]}.attn.{m[2]}.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.(.+)", lambda m: f"down.{m[1]}.downsample.{m[2]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda m: f"up.{num_levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)",
         lambda m: f"up.{num_levels - 1 - int(m[1])}.attn.{m[2]}.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
         lambda m: f"up.{num_levels - 1 - int(m[1])}.upsample.{m[2]}"),
        (r"mid_block\.resnets\.0\.(.+)", lambda m: f"mid.block_1.{m[1]}"),
        (r"mid_block\.resnets\.1\.(.+)", lambda m: f"mid.block_2.{m[1]}"),
        (r"mid_block\.attentions\.0\.(.+)", lambda m: f"mid.attn_1.{m[1]}"),
    )
    for pattern, target in rules:
        m = re.fullmatch(pattern, key)
        if m:
            name = target(m)
            for old, new in _LEAF_NAMES.items():
                name = re.sub(rf"\.{re.escape(old)}\.(weight|bias)$", rf".{new}.\1", name)
            return name
    return None


def map_state_dict(
    state: dict[str, torch.Tensor], cfg: dict[str, Any], num_levels: int, path: Path
) -> dict[str, torch.Tensor]:
    """Diffusers UNet2DModel weights renamed (and reshaped) into the original DDPM layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = _rename(key, num_levels)
        if name is None:
            raise CheckpointError(
                f"{path}: diffusers weight {key} has no counterpart in the DDPM UNet; "
                "this UNet2DModel variant is not supported"
            )
        is_attn_linear = ".attn" in name and name.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out")
        out[name] = value[:, :, None, None] if is_attn_linear and value.ndim == 2 else value
    if cfg["flip_sin_to_cos"] and "temb.dense.0.weight" in out:
        # [cos | sin] input == [sin | cos] input with the two column halves of the weight swapped.
        w = out["temb.dense.0.weight"]
        half = w.shape[1] // 2
        out["temb.dense.0.weight"] = torch.cat([w[:, half:], w[:, :half]], dim=1)
    return out


def read_weights(folder: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], Path]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return read_safetensors(path)[0], path
            return read_torch_state_dict(path, allow_pickle), path
    index = next((folder / f"{name}.index.json" for name in WEIGHT_FILES
                  if (folder / f"{name}.index.json").is_file()), None)
    if index is not None:
        raise CheckpointError(
            f"{folder}: the weights are sharded ({index.name}); pndm reads one {WEIGHT_FILES[0]}: save the "
            "UNet again in one file (save_pretrained(..., max_shard_size=\"100GB\"))")
    variants = sorted(f.name for f in folder.glob("diffusion_pytorch_model.*.*")
                      if f.suffix in (".safetensors", ".bin"))
    if variants:
        raise CheckpointError(
            f"{folder}: only variant weights ({', '.join(variants)}); pndm reads {WEIGHT_FILES[0]}: save "
            "the UNet without variant= (or copy the variant file to that name)")
    raise CheckpointError(f"{folder}: no weights found (expected {' or '.join(WEIGHT_FILES)})")
