"""Architecture configs: the original projects' named configs and every accepted config form.

A config arrives as a plain dict or a JSON/YAML file in one of three shapes:

* pndm's own: ``{"format": "pndm-checkpoint/1", "architecture", "model", "diffusion": {"schedule", "T",
  "prediction"}}`` (``prediction``, the model's native output, defaults to epsilon);
* an original YAML file: ermongroup/ddim (``model:``, ``data: image_size``, ``diffusion:
  beta_schedule/num_diffusion_timesteps``) or luping-liu/PNDM (``Model:``, ``Dataset:``,
  ``Schedule: type/diffusion_step``);
* a bare ``model:`` section (the architecture is told apart by its keys: ``ch`` -> "ddpm",
  ``model_channels`` -> "iddpm").

Keys the architecture does not use (``type``, ``var_type``, ``ema_rate``, ``ema``,
``use_checkpoint``...) are ignored; lists become tuples.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pndm.errors import PndmError
from pndm.models.ddpm_unet import DDPMUNetConfig
from pndm.models.iddpm_unet import IDDPMUNetConfig
from pndm.prediction import check_prediction
from pndm.schedule_spec import SCHEDULE_NAMES, ScheduleSpec
from pndm.schedules import DIFFUSERS_BETA_SCHEDULES
from pndm.validate import check_dataclass_values

# The `model:` sections of ermongroup/ddim configs/{cifar10,celeba,church,bedroom}.yml (the
# PNDM repo's config/ddim_*.yml hold the same values); dropout is inert in eval mode.
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
# luping-liu/PNDM config/iddpm_cifar10.yml `Model:` (+ Dataset.image_size); cosine schedule, T=1000.
IDDPM_CONFIGS: dict[str, dict[str, Any]] = {
    "iddpm_cifar10": dict(in_channels=3, model_channels=128, out_channels=6, num_res_blocks=3,
                          attention_resolutions=(2, 4), dropout=0.3, channel_mult=(1, 2, 2, 2),
                          conv_resample=True, use_scale_shift_norm=True, num_heads=4,
                          num_heads_upsample=4, image_size=32),
}

CONFIG_CLASSES: dict[str, type] = {"ddpm": DDPMUNetConfig, "iddpm": IDDPMUNetConfig}
# The base-width key that tells a bare `model:` section's architecture.
ARCHITECTURE_MARKERS = {"ddpm": "ch", "iddpm": "model_channels"}


@dataclass(frozen=True)
class ParsedConfig:
    """An architecture, its config dataclass, and the schedule and prediction type the config
    states (None if silent)."""

    architecture: str
    model: Any
    schedule: ScheduleSpec | None = None
    prediction: str | None = None


def dataclass_from_dict(cls: type, raw: dict[str, Any], what: str):
    """Build dataclass ``cls`` from ``raw``: unknown keys ignored, lists -> tuples."""
    if not isinstance(raw, dict):
        raise PndmError(f"{what}: expected a mapping of architecture settings, got {type(raw).__name__}")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in names}
    check_dataclass_values(cls, kwargs, what)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PndmError(f"{what}: invalid config ({exc})") from None


def model_config(architecture: str, raw: dict[str, Any] | Any, what: str = "model config"):
    """The config dataclass of ``architecture`` from a ``model:`` dict (or pass a dataclass through).

    DDPM configs that give ``image_size`` (PNDM's YAMLs) instead of ``resolution`` are accepted.
    """
    cls = CONFIG_CLASSES[architecture]
    if isinstance(raw, cls):
        return raw
    if architecture == "ddpm" and isinstance(raw, dict) and "resolution" not in raw and "image_size" in raw:
        raw = {**raw, "resolution": raw["image_size"]}
    return dataclass_from_dict(cls, raw, what)


def image_shape(architecture: str, config) -> tuple[int, int, int]:
    """(C, H, W) of the images a config's model works on."""
    if architecture == "ddpm":
        return (config.in_channels, config.resolution, config.resolution)
    return (config.in_channels, config.image_size, config.image_size)


def schedule_spec(kind: str, T: int | None, beta_start: float | None, beta_end: float | None,
                  what: str) -> ScheduleSpec:
    """The schedule of a config's beta-schedule name (ours or diffusers'), range and length."""
    aliases = {**{n: n for n in SCHEDULE_NAMES}, **DIFFUSERS_BETA_SCHEDULES}
    if kind not in aliases:
        raise PndmError(f"{what}: unsupported beta schedule {kind!r}; supported: {', '.join(aliases)}")
    name = aliases[kind]
    try:
        if name == "cosine":
            return ScheduleSpec(name, T)
        return ScheduleSpec(name, T, beta_start, beta_end)
    except PndmError as exc:
        raise PndmError(f"{what}: {exc}") from None


def _schedule_from_sections(raw: dict[str, Any], what: str) -> ScheduleSpec | None:
    diffusion = raw.get("diffusion")
    if isinstance(diffusion, dict) and "schedule" in diffusion:  # pndm's own: the ScheduleSpec fields
        fields = {k: v for k, v in diffusion.items() if k not in ("schedule", "prediction")}
        return ScheduleSpec.from_dict({"name": diffusion["schedule"], **fields}, what)
    if isinstance(diffusion, dict) and "beta_schedule" in diffusion:  # ermongroup/ddim YAML
        return schedule_spec(diffusion["beta_schedule"], diffusion.get("num_diffusion_timesteps"),
                             diffusion.get("beta_start"), diffusion.get("beta_end"), what)
    sched = raw.get("Schedule")
    if isinstance(sched, dict) and "type" in sched:  # luping-liu/PNDM YAML
        return schedule_spec(sched["type"], sched.get("diffusion_step"), sched.get("beta_start"),
                             sched.get("beta_end"), what)
    return None


def _prediction_from_sections(raw: dict[str, Any], what: str) -> str | None:
    """pndm's own ``diffusion.prediction`` (what the model outputs), None when the config is silent."""
    diffusion = raw.get("diffusion")
    if not isinstance(diffusion, dict) or "prediction" not in diffusion:
        return None
    try:
        return check_prediction(diffusion["prediction"])
    except PndmError as exc:
        raise PndmError(f"{what}: {exc}") from None


def detect_architecture(section: dict[str, Any], what: str) -> str:
    for arch, key in ARCHITECTURE_MARKERS.items():
        if key in section:
            return arch
    raise PndmError(
        f"{what}: cannot tell the architecture (no 'ch' or 'model_channels' key); "
        "give a config with an 'architecture' key (\"ddpm\" or \"iddpm\")"
    )


def parse_config(raw: dict[str, Any], what: str = "config") -> ParsedConfig:
    """A ParsedConfig from any accepted config form (see the module docstring)."""
    if not isinstance(raw, dict):
        raise PndmError(f"{what}: a config must be a mapping, got {type(raw).__name__}")
    if "architecture" in raw:
        arch = raw["architecture"]
        if arch not in CONFIG_CLASSES:
            raise PndmError(f"{what}: unknown architecture {arch!r}; valid: {', '.join(CONFIG_CLASSES)}")
        section = raw.get("model", {k: v for k, v in raw.items() if k != "architecture"})
        keys = section if isinstance(section, dict) else {}
        marked = [a for a, key in ARCHITECTURE_MARKERS.items() if key in keys]
        if marked and arch not in marked:
            raise PndmError(f"{what}: the settings are for architecture {marked[0]!r}, not {arch!r}")
    else:
        section = raw.get("model", raw.get("Model", raw))
        arch = detect_architecture(section, what)
    data = raw.get("data", raw.get("Dataset", {}))
    if isinstance(data, dict) and "image_size" in data and "image_size" not in section:
        section = {**section, "image_size": data["image_size"]}
    return ParsedConfig(arch, model_config(arch, section, what), _schedule_from_sections(raw, what),
                        _prediction_from_sections(raw, what))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config dict from a JSON or YAML file (YAML read with ``safe_load``: no code runs)."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yml", ".yaml") else json.loads(text)
    except FileNotFoundError:
        raise PndmError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PndmError(f"{path}: cannot read config ({first}); fix the file (JSON, or YAML named .yml/.yaml)"
                        ) from None
    if not isinstance(data, dict):
        raise PndmError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data
