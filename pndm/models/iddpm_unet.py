"""The improved-DDPM UNet (Nichol & Dhariwal 2021) as the PNDM repo uses it (``model/iDDPM/unet.py``).

Module names follow that code's state-dict layout (``time_embed.{0,2}``, ``input_blocks.{i}.{j}``,
``middle_block.{0,1,2}``, ``output_blocks.{i}.{j}``, ``out.{0,2}``), so its checkpoints load with
``strict=True``. Differences from the DDPM UNet (``ddpm_unet.py``): the timestep embedding is
[cos, sin] with frequencies 10000^(-i/h); GroupNorm(32) with eps 1e-5; residual blocks with
scale-shift norm (out = GN(h) * (1 + scale) + shift, iDDPM Sec. 2.2 / Appendix A); multi-head
attention on a fused ``qkv`` 1-D conv whose channels are ordered head by head; strided
downsampling with symmetric padding 1. The network predicts 6 channels (eps and the variance
interpolation v); ``forward`` returns eps, the first ``in_channels`` of them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pndm.errors import PndmError
from pndm.models.ddpm_unet import GroupNorm32, Upsample


@dataclass(frozen=True)
class IDDPMUNetConfig:
    """Hyper-parameters, named as in the PNDM repo's ``Model:`` section (``config/iddpm_cifar10.yml``).

    ``image_size`` is not part of the network (it is the YAML's ``Dataset.image_size``): it only
    sets the image shape the model is used at.
    """

    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 6
    num_res_blocks: int = 3
    attention_resolutions: tuple[int, ...] = (2, 4)
    dropout: float = 0.3
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    conv_resample: bool = True
    use_scale_shift_norm: bool = True
    num_heads: int = 4
    num_heads_upsample: int = field(default=4, metadata={"minimum": -1})  # -1: same as num_heads
    image_size: int = 32
    dims: int = 2

    def __post_init__(self):
        if self.dims != 2:
            raise PndmError(f"only 2-D images are supported (config dims={self.dims}); set dims to 2")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["attention_resolutions"] = list(self.attention_resolutions)
        d["channel_mult"] = list(self.channel_mult)
        return d


def iddpm_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """emb = [cos(t f_i), sin(t f_i)], f_i = 10000^(-i/h), h = dim // 2 (improved-diffusion ``nn.py``).

    Computed in float32 whatever the model dtype (t * f reaches ~1000).
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / half))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def iddpm_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32, eps=1e-5) with float32 statistics (``normalization`` in improved-diffusion)."""
    return GroupNorm32(num_groups=32, num_channels=channels, eps=1e-5)


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = GN(h) * (1 + scale) + shift (or h + emb); out = skip(x) + conv(SiLU(h))."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int,
                 use_scale_shift_norm: bool):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            iddpm_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, 1, 1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            iddpm_norm(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention: per head softmax((q/d^1/4)^T (k/d^1/4)) v, d = C / heads (softmax fp32).

    ``qkv`` is a 1-D conv whose 3C output channels are laid out head by head ([q_h, k_h, v_h] for h).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise PndmError(
                f"{channels} channels do not split into {num_heads} attention heads: change num_heads"
            )
        self.num_heads = num_heads
        self.norm = iddpm_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(flat)).reshape(b * self.num_heads, 3 * c // self.num_heads, height * width)
        q, k, v = qkv.chunk(3, dim=1)  # each (B*heads, d, HW)
        scale = (c // self.num_heads) ** -0.25
        logits = torch.bmm((q * scale).transpose(1, 2), k * scale)  # (B*heads, HW_q, HW_k)
        weights = torch.softmax(logits.float(), dim=2).to(v.dtype)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, height * width)
        return (flat + self.proj_out(out)).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Strided 3x3 conv with symmetric padding 1 (or 2x2 average pooling)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, 2, 1) if with_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class TimestepSequential(nn.Sequential):
    """Runs its layers in order, passing the timestep embedding to the residual blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class IDDPMUNet(nn.Module):
    """eps-prediction iDDPM UNet; ``forward(x, t)`` returns the eps half of the 6-channel output."""

    def __init__(self, config: IDDPMUNetConfig):
        super().__init__()
        self.config = config
        mc, emb_dim = config.model_channels, config.model_channels * 4
        heads_up = config.num_heads if config.num_heads_upsample == -1 else config.num_heads_upsample

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, emb_dim, config.dropout, cout, config.use_scale_shift_norm)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(config.in_channels, mc, 3, 1, 1))])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, config.num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch, config.conv_resample)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res(ch, ch), AttentionBlock(ch, config.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in config.attention_resolutions:
                    layers.append(AttentionBlock(ch, heads_up))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch, config.conv_resample))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(iddpm_norm(ch), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(iddpm_timestep_embedding(t, self.config.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)[:, : x.shape[1]]


