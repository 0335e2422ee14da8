"""Architecture presets for ``pndm-train --arch`` beyond the original named configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pndm.errors import PndmError
from pndm.models.configs import DDPM_CONFIGS, model_config, read_config_file

TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default model: MNIST digits at their native 28x28 (1.6M parameters).
    "mnist28": dict(ch=32, out_ch=1, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,),
                    dropout=0.1, in_channels=1, resolution=28, resamp_with_conv=True),
    # A few-second model for tests and smoke runs.
    "tiny28": dict(ch=32, out_ch=1, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                   dropout=0.0, in_channels=1, resolution=28, resamp_with_conv=True),
}

# Settings a resumed run must share with the run it continues, by option name (``--allow-change`` lifts
# the check for all but arch, data and prediction); "arch" is compared as the resolved model config,
# "data" as a hash of the training images.
RUN_FIELDS = {"arch": "arch", "data": "data", "schedule": "schedule", "timesteps": "T", "lr": "lr",
              "batch": "batch", "warmup": "warmup", "ema": "ema", "loss": "loss", "grad-clip": "grad_clip",
              "seed": "seed", "bf16": "bf16", "t-focus": "t_focus",
              "prediction": "prediction"}
CHANGEABLE_FIELDS = tuple(name for name in RUN_FIELDS if name not in ("arch", "data", "prediction"))
# What ``--resume`` takes from the saved run where the command line does not give it: those settings
# (--data is required) and --resize, which decides the training images too.
RESUMED_FIELDS = (*RUN_FIELDS.values(), "resize")


def resolve_arch(arch: str) -> dict[str, Any]:
    """The DDPM model config for ``--arch``: a preset, an original named config, or a JSON/YAML file."""
    if arch in TRAIN_PRESETS:
        return dict(TRAIN_PRESETS[arch])
    if arch in DDPM_CONFIGS:
        return dict(DDPM_CONFIGS[arch])
    path = Path(arch)
    if path.suffix in (".json", ".yml", ".yaml") and path.is_file():
        raw = read_config_file(path)
        section = raw.get("model", raw)
        model_config("ddpm", section, f"--arch {arch}")  # refuses bad values here, in one line
        return dict(section)
    valid = ", ".join([*TRAIN_PRESETS, *DDPM_CONFIGS])
    raise PndmError(f"--arch {arch}: not a known config ({valid}) nor a JSON/YAML config file")
