"""Tiny diffusers models and pipeline folders written by diffusers itself (random weights).

The configuration matrix of issue 9: diffusers' default UNet2DModel (multi-head attention), the
google/ddpm-cifar10-32 layout, a fourier-embedding / skip-block layout, a class-conditional one,
scale-shift resnets with another norm_num_groups; and pipeline folders (DDPM/DDIM/PNDMPipeline).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SIZE = 16
LEVELS = dict(block_out_channels=(32, 64), layers_per_block=1,
              down_block_types=("DownBlock2D", "AttnDownBlock2D"),
              up_block_types=("AttnUpBlock2D", "UpBlock2D"))
CONFIGS = {
    # diffusers' own defaults (what its unconditional training example writes), tiny channels
    "default": dict(sample_size=SIZE, **LEVELS),
    # google/ddpm-cifar10-32's option values: maps exactly onto pndm's DDPM UNet
    "cifar10_layout": dict(sample_size=SIZE, **LEVELS, downsample_padding=0, flip_sin_to_cos=False,
                           freq_shift=1, norm_eps=1e-6, attention_head_dim=None),
    "fourier_skip": dict(sample_size=SIZE, block_out_channels=(32, 64), layers_per_block=1,
                         time_embedding_type="fourier", norm_num_groups=8,
                         down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                         up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D")),
    "class_conditional": dict(sample_size=SIZE, **LEVELS, num_class_embeds=5),
    "scale_shift_groups": dict(sample_size=SIZE, **LEVELS, resnet_time_scale_shift="scale_shift",
                               norm_num_groups=8, attention_head_dim=16),
}


def diffusers_unet(name: str, seed: int = 0):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**CONFIGS[name]).eval()
    with torch.no_grad():  # zero-initialised layers (skip convs...) would hide mistakes: perturb all
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return unet


def scheduler_kwargs(**extra):
    """A scaled_linear schedule that is not DDPM's range (SD's 0.00085..0.012)."""
    return dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **extra)


def save_pipeline(folder: Path, unet, pipeline: str = "DDPMPipeline", scheduler: str = "DDPMScheduler",
                  **scheduler_options) -> Path:
    diffusers = pytest.importorskip("diffusers")
    sched = getattr(diffusers, scheduler)(**scheduler_options)
    getattr(diffusers, pipeline)(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder


def save_unet(folder: Path, name: str, seed: int = 0):
    unet = diffusers_unet(name, seed)
    unet.save_pretrained(folder)
    return unet, folder
