"""What the benchmarks share: the CIFAR-10 DDPM UNet they time, its cost, and timing one whole command."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

GFLOP_PER_IMAGE_NFE = 12.44  # CIFAR-10 DDPM UNet, one model call on one 32x32 image

# diffusers' google/ddpm-cifar10-32 configuration (the original DDPM CIFAR-10 UNet).
CIFAR10_CONFIG = {
    "sample_size": 32, "in_channels": 3, "out_channels": 3, "layers_per_block": 2,
    "block_out_channels": [128, 256, 256, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_eps": 1e-6, "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "attention_head_dim": None, "resnet_time_scale_shift": "default", "time_embedding_type": "positional",
}


def save_cifar10_unet(folder: Path) -> Path:
    """A diffusers UNet2DModel folder of the CIFAR-10 architecture (random weights, seed 0)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(**CIFAR10_CONFIG).save_pretrained(folder)
    return folder


def run_once(argv: list[str], out: Path, env: dict) -> dict:
    """Wall seconds of one command, and its own phase record (run.json or the script's JSON line)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        how = (f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0
               else f"exit {done.returncode}")
        raise RuntimeError(f"{argv[:3]} failed ({how}): {done.stderr.strip()[-2000:]}")
    if (out / "run.json").is_file():
        record = json.loads((out / "run.json").read_text())
        phases, cache = record["phases"], [e["status"] for e in record.get("cache", [])]
    else:
        phases, cache = json.loads(done.stdout.strip().splitlines()[-1]), []
    return {"wall": wall, "phases": phases, "cache": cache}
