"""The DDPM UNet of the official DDIM / PNDM code (Ho et al. 2020, as ported to PyTorch).

Module names follow the original state-dict layout exactly (``temb.dense.*``, ``conv_in``,
``down.{l}.block.{b}.*``, ``down.{l}.attn.{b}.*``, ``down.{l}.downsample.conv``, ``mid.*``,
``up.*``, ``norm_out``, ``conv_out``), so original checkpoints load with ``strict=True``.

Building blocks: sinusoidal timestep embedding, GroupNorm(32, eps=1e-6), swish,
single-head self-attention, strided 3x3 downsampling after an asymmetric (0, 1, 0, 1)
zero pad, nearest-neighbour upsampling followed by a 3x3 conv.

The forward pass is ``eps = model(x, t)`` with ``x`` (B, C, H, W) float32 and ``t`` (B,)
float timestep indices in [0, T-1]; fractional ``t`` is legal (PRK midpoints).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DDPMUNetConfig:
    """Architecture hyper-parameters, named as in the original YAML ``model:`` section."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    in_channels: int = 3
    resolution: int = 32
    resamp_with_conv: bool = True
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d["ch_mult"] = list(self.ch_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        return d


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, Sec. 3.5; DDPM Appendix B).

    emb_i = sin(t * 10000^(-i/(h-1))), emb_{h+i} = cos(t * 10000^(-i/(h-1))), h = dim // 2.
    Always computed in float32: t * freq reaches ~1000, where fp16 spacing is 0.5.
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1))
    )
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics are always computed in float32 (a no-op for fp32 models).

    In fp16/bf16 the mean and variance over 32 groups lose accuracy (DESIGN.md); the result
    is cast back to the input's dtype. Parameters and state-dict keys are GroupNorm's.
    """

    def forward(self, x):
        normed = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return normed.to(x.dtype)


def group_norm(channels: int) -> nn.GroupNorm:
    return GroupNorm32(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x):
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x, temb):
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions: softmax(q^T k / sqrt(C)) v (softmax in fp32)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1, 1, 0)
        self.k = nn.Conv2d(channels, channels, 1, 1, 0)
        self.v = nn.Conv2d(channels, channels, 1, 1, 0)
        self.proj_out = nn.Conv2d(channels, channels, 1, 1, 0)

    def forward(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w).permute(0, 2, 1)  # (B, HW, C)
        k = self.k(hn).reshape(b, c, h * w)  # (B, C, HW)
        v = self.v(hn).reshape(b, c, h * w)  # (B, C, HW)
        logits = torch.bmm(q, k) * (c**-0.5)  # (B, HW_q, HW_k)
        weights = torch.softmax(logits.float(), dim=2).to(v.dtype)  # softmax in fp32 for fp16/bf16 models
        out = torch.bmm(v, weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class DDPMUNet(nn.Module):
    """eps-prediction UNet; see the module docstring for the layout and contract."""

    def __init__(self, config: DDPMUNetConfig):
        super().__init__()
        self.config = config
        ch, ch_mult = config.ch, tuple(config.ch_mult)
        self.ch = ch
        self.temb_ch = ch * 4
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = config.num_res_blocks
        self.resolution = config.resolution

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, self.temb_ch), nn.Linear(self.temb_ch, self.temb_ch)])
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, 1, 1)

        curr_res = config.resolution
        in_ch_mult = (1,) + ch_mult
        block_in = ch
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            for _ in range(config.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, self.temb_ch, config.dropout))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            down = nn.Module()
            down.block, down.attn = blocks, attns
            if level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, config.resamp_with_conv)
                curr_res //= 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, self.temb_ch, config.dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[level]
            skip_in = ch * ch_mult[level]
            for i_block in range(config.num_res_blocks + 1):
                if i_block == config.num_res_blocks:
                    skip_in = ch * in_ch_mult[level]
                blocks.append(ResnetBlock(block_in + skip_in, block_out, self.temb_ch, config.dropout))
                block_in = block_out
                if curr_res in config.attn_resolutions:
                    attns.append(AttnBlock(block_in))
            up = nn.Module()
            up.block, up.attn = blocks, attns
            if level != 0:
                up.upsample = Upsample(block_in, config.resamp_with_conv)
                curr_res *= 2
            self.up.insert(0, up)

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, config.out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = timestep_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](swish(self.temb.dense[0](temb)))

        hs = [self.conv_in(x)]
        for level in range(self.num_resolutions):
            down = self.down[level]
            for i_block in range(self.num_res_blocks):
                h = down.block[i_block](hs[-1], temb)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
                hs.append(h)
            if level != self.num_resolutions - 1:
                hs.append(down.downsample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, temb)), temb)

        for level in reversed(range(self.num_resolutions)):
            up = self.up[level]
            for i_block in range(self.num_res_blocks + 1):
                h = up.block[i_block](torch.cat([h, hs.pop()], dim=1), temb)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if level != 0:
                h = up.upsample(h)

        return self.conv_out(swish(self.norm_out(h)))
