"""What a bare state dict's keys and shapes say about its architecture and config.

Keys and shapes fix most settings (channels, multipliers, blocks per level, where attention
sits, resampling convs, scale-shift norm). They do not fix the DDPM image ``resolution``
(attention is placed by resolution) or the iDDPM ``num_heads``. Those are taken from a named
config whose inferred settings agree exactly; with no such config, loading fails naming them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pndm.errors import CheckpointError
from pndm.models.configs import DDPM_CONFIGS, IDDPM_CONFIGS, ParsedConfig, model_config

# The key that only each layout has.
LAYOUT_KEYS = {
    "temb.dense.0.weight": "ddpm",
    "time_embed.0.weight": "iddpm",
    "time_embedding.linear_1.weight": "diffusers",
}


def detect_layout(state: dict[str, torch.Tensor], path: Path | str) -> str:
    """"ddpm" | "iddpm" | "diffusers", from which layout's marker key the state dict holds."""
    for key, layout in LAYOUT_KEYS.items():
        if key in state:
            return layout
    raise CheckpointError(
        f"{path}: not a DDPM / iDDPM / diffusers UNet state dict (none of {', '.join(LAYOUT_KEYS)} "
        f"present; first keys: {', '.join(list(state)[:3])}); for your own network, use --module "
        "file.py:factory --weights FILE"
    )


def _indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := rx.match(k))})


def _ddpm_settings(state: dict[str, torch.Tensor]) -> tuple[dict, list[int]]:
    """DDPM settings the keys fix, and the down levels that carry attention."""
    ch, in_channels = state["conv_in.weight"].shape[:2]
    levels = _indices(state, r"down\.(\d+)\.block\.0\.conv1\.weight")
    settings = dict(
        ch=ch, in_channels=in_channels, out_ch=state["conv_out.weight"].shape[0],
        ch_mult=tuple(state[f"down.{lv}.block.0.conv1.weight"].shape[0] // ch for lv in levels),
        num_res_blocks=len(_indices(state, r"down\.0\.block\.(\d+)\.conv1\.weight")),
        resamp_with_conv=len(levels) == 1 or "down.0.downsample.conv.weight" in state,
    )
    attn_levels = [lv for lv in levels if f"down.{lv}.attn.0.norm.weight" in state]
    return settings, attn_levels


def _iddpm_settings(state: dict[str, torch.Tensor]) -> dict:
    """iDDPM settings the keys fix (everything but num_heads / image_size)."""
    mc, in_channels = state["input_blocks.0.0.weight"].shape[:2]
    n_blocks = max(_indices(state, r"input_blocks\.(\d+)\.")) + 1
    level, per_level, mults, attn = 0, {}, {}, set()
    for i in range(1, n_blocks):
        if f"input_blocks.{i}.0.in_layers.2.weight" not in state:  # a conv or avg-pool downsample
            level += 1
            continue
        out = state[f"input_blocks.{i}.0.in_layers.2.weight"].shape[0]
        per_level[level] = per_level.get(level, 0) + 1
        mults[level] = out // mc
        if f"input_blocks.{i}.1.qkv.weight" in state:
            attn.add(2**level)
    first_emb = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    first_out = state["input_blocks.1.0.in_layers.2.weight"].shape[0]
    return dict(
        model_channels=mc, in_channels=in_channels, out_channels=state["out.2.weight"].shape[0],
        num_res_blocks=per_level[0], channel_mult=tuple(mults[lv] for lv in sorted(mults)),
        attention_resolutions=tuple(sorted(attn)), use_scale_shift_norm=first_emb == 2 * first_out,
        conv_resample=any(k.endswith(".op.weight") for k in state),
    )


def infer_config(state: dict[str, torch.Tensor], layout: str, path: Path | str) -> tuple[ParsedConfig, str]:
    """(config, note) for a state dict of ``layout`` with no config given; CheckpointError if undetermined."""
    if layout == "ddpm":
        settings, attn_levels = _ddpm_settings(state)
        for name, named in DDPM_CONFIGS.items():
            named_attn = [lv for lv in range(len(named["ch_mult"]))
                          if named["resolution"] >> lv in named["attn_resolutions"]]
            if all(named[k] == v for k, v in settings.items()) and named_attn == attn_levels:
                return (ParsedConfig("ddpm", model_config("ddpm", named)),
                        f"config inferred from the weights' shapes: they match the named config {name!r}")
        missing = "resolution (the image size; attention placement depends on it)"
    else:
        settings = _iddpm_settings(state)
        for name, named in IDDPM_CONFIGS.items():
            if all(named[k] == v for k, v in settings.items()):
                return (ParsedConfig("iddpm", model_config("iddpm", named)),
                        f"config inferred from the weights' shapes: they match the named config {name!r}"
                        f" (num_heads={named['num_heads']} taken from it)")
        missing = "num_heads (attention heads) and image_size"
    raise CheckpointError(
        f"{path}: the weights do not say the {layout} model's {missing}; pass config= (a dict or "
        f"JSON/YAML file) or put {Path(path).stem}_config.json beside the file"
    )
