"""Diffusers folders: a ``UNet2DModel`` folder or a whole pipeline folder, as an eps-contract model.

A pipeline folder (what ``DDPMPipeline/DDIMPipeline/PNDMPipeline.save_pretrained`` write) holds
``model_index.json``, ``unet/`` (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
``.bin``) and ``scheduler/scheduler_config.json``. The noise schedule and ``prediction_type``
come from the scheduler config (:func:`pndm.schedules.schedule_from_diffusers`); a bare UNet
folder looks for ``scheduler_config.json`` in it, in ``scheduler/`` inside it, or in
``../scheduler/`` (none: linear 1e-4..0.02, T=1000, epsilon).

The network: where the config maps exactly onto pndm's own DDPM UNet
(:mod:`pndm.models.diffusers_mapping`) that is used; any other ``UNet2DModel`` configuration is
diffusers' own module (needs ``pip install 'pndm[diffusers]'``) wrapped by :class:`DiffusersUNet`
to the eps contract. The module is built from ``config.json`` with ``from_config`` and the weights
are read by pndm (safetensors, or a torch file with ``weights_only``): nothing in the folder runs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pndm.errors import CheckpointError, PndmError
from pndm.fileio import sha256_file
from pndm.models.checkpoint import read_json
from pndm.models.diffusers_mapping import (
    DIFFUSERS_DEFAULTS,
    NotMappable,
    ddpm_config_from_diffusers,
    map_state_dict,
    read_weights,
)
from pndm.prediction import PREDICTIONS
from pndm.schedules import ScheduleSpec, schedule_from_diffusers

INSTALL_HINT = "pip install 'pndm[diffusers]'"
# Old attention weight names (google/ddpm-* on the hub) -> the names UNet2DModel has today.
_LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
# Pipeline components that decode latents: such a pipeline's UNet does not make images (refused).
LATENT_DECODERS = frozenset({"vae", "vqvae"})


@dataclass(frozen=True)
class DiffusersFolder:
    """What a diffusers folder holds: the UNet config (over diffusers' defaults), weights, schedule."""

    root: Path  # the folder the user named (pipeline or UNet folder)
    unet: Path  # the UNet folder
    config: dict[str, Any]  # config.json as written
    weights: Path
    scheduler_config: Path | None
    schedule: ScheduleSpec
    prediction: str
    files: dict[str, str]  # every file read, relative to root -> SHA-256
    notes: tuple[str, ...] = ()  # what the user should know about how it is read (scheduler_notes)


def _unet_folder(path: Path) -> Path:
    if (path / "model_index.json").is_file():
        latent = sorted(set(read_json(path / "model_index.json", "pipeline index")) & LATENT_DECODERS)
        if latent:
            raise CheckpointError(
                f"{path}: a latent diffusion pipeline (it has a {latent[0]}): its UNet denoises latents, and "
                "pndm samples pixel-space UNets only, with no decoder; use a pixel-space pipeline")
        folder = path / "unet"
        if not (folder / "config.json").is_file():
            raise CheckpointError(
                f"{path}: a diffusers pipeline folder (model_index.json) without a unet/ folder holding "
                "config.json; save the pipeline with its UNet (pipeline.save_pretrained) or pass the UNet "
                "folder"
            )
        return folder
    if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
        return path / "unet"
    if not (path / "config.json").is_file():
        from pndm.engine_format import kind_of

        if any(kind_of(entry) for entry in path.iterdir()):
            raise CheckpointError(f"{path}: an engine folder without a readable manifest.json, which its "
                                  "engines need; export the model again with pndm-export build")
        run = " (a pndm-train run folder: give its ema.safetensors)" * (path / "ema.safetensors").is_file()
        raise CheckpointError(f"{path}: not a diffusers model folder (no config.json inside){run}")
    return path


def _scheduler_config(root: Path, unet: Path) -> Path | None:
    for candidate in (unet / "scheduler_config.json", unet / "scheduler" / "scheduler_config.json",
                      root / "scheduler" / "scheduler_config.json",
                      unet.parent / "scheduler" / "scheduler_config.json"):
        if candidate.is_file():
            return candidate
    return None


def _prediction(sched: dict[str, Any], where: Path) -> str:
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise CheckpointError(
            f"{where}: prediction_type={prediction!r} is not supported; supported: {', '.join(PREDICTIONS)}"
        )
    return prediction


def scheduler_notes(sched: dict[str, Any], where: Path) -> tuple[str, ...]:
    """What the scheduler config asks of sampling that ``pndm-run`` does not do by default: one note
    per setting, with the option that does it where there is one (the schedule and prediction_type
    are read, everything else is a choice made when sampling)."""
    notes = []
    name = f"{where.parent.name}/{where.name}"
    if sched.get("clip_sample"):
        limit = sched.get("clip_sample_range", 1.0)
        notes.append(f"{name}: clip_sample=true (diffusers clips x0 to +-{limit} every step); pndm-run "
                     "does not clip unless given --clip-x0, which also re-derives eps from the clipped x0 "
                     "(diffusers' use_clipped_model_output=True)")
    if sched.get("thresholding"):
        notes.append(f"{name}: thresholding=true (dynamic thresholding) is not done by pndm; the nearest is "
                     "--clip-x0")
    spacing = sched.get("timestep_spacing", "leading")
    if spacing != "leading":
        notes.append(f"{name}: timestep_spacing={spacing!r}; pndm-run's methods default to the leading grid: "
                     f"pass --grid {spacing} for this spacing")
    if sched.get("steps_offset", 0):
        notes.append(f"{name}: steps_offset={sched['steps_offset']} shifts diffusers' leading grid up by "
                     f"{sched['steps_offset']}; pndm's leading grid starts at t=0")
    if sched.get("set_alpha_to_one") is False:
        notes.append(f"{name}: set_alpha_to_one=false (diffusers' last step ends at alpha_bar(0)); pndm's "
                     "last step ends at the clean image (alpha_bar = 1)")
    variance = sched.get("variance_type") or "fixed_small"
    if variance != "fixed_small":
        notes.append(f"{name}: variance_type={variance!r} is not used: pndm-run --method ddpm adds the "
                     "posterior variance (fixed_small), and the other methods add none")
    if sched.get("use_karras_sigmas"):
        notes.append(f"{name}: use_karras_sigmas=true; pndm-run's methods default to their own grid: pass "
                     "--grid karras for Karras sigmas")
    algorithm = sched.get("algorithm_type", "dpmsolver++")
    if algorithm.startswith("sde-"):
        notes.append(f"{name}: algorithm_type={algorithm!r} (a stochastic DPM-Solver); pndm's dpm-solver++ "
                     "methods are the deterministic ones, and --method sde2 or edm-sde sample the SDE")
    return tuple(notes)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:  # ../scheduler beside a UNet folder
        return str(Path("..") / path.relative_to(root.parent))


def read_folder(path: Path, allow_pickle: bool = False, schedule: ScheduleSpec | None = None
                ) -> tuple[DiffusersFolder, dict[str, torch.Tensor]]:
    """The folder's description and its UNet weights (diffusers names); ``schedule`` overrides the
    scheduler config's."""
    unet = _unet_folder(path)
    config = read_json(unet / "config.json", "diffusers config")
    state, weights = read_weights(unet, allow_pickle)
    sched_path = _scheduler_config(path, unet)
    if sched_path is not None:
        sched = read_json(sched_path, "scheduler config")
        if schedule is None:
            try:
                schedule = schedule_from_diffusers(sched, str(sched_path))
            except PndmError as exc:
                raise CheckpointError(str(exc)) from None
        prediction = _prediction(sched, sched_path)
        notes = scheduler_notes(sched, sched_path)
    else:
        notes = () if schedule else (
            f"{unet.name}: no scheduler config beside it: DDPM's linear schedule (1e-4..0.02, T=1000) "
            "and epsilon prediction assumed; --schedule/--T/--beta-start/--beta-end and --prediction say "
            "otherwise",)
        schedule, prediction = schedule or ScheduleSpec("linear"), "epsilon"
    read = [unet / "config.json", weights] + ([sched_path] if sched_path else [])
    if (path / "model_index.json").is_file():
        read.append(path / "model_index.json")
    files = {_relative(f, path): sha256_file(f) for f in read}
    return DiffusersFolder(path, unet, config, weights, sched_path, schedule, prediction, files, notes), state


def diffusers_available() -> bool:
    return importlib.util.find_spec("diffusers") is not None


class InterpolatedEmbedding(nn.Module):
    """An ``nn.Embedding`` table ``E`` of N rows read at fractional indices by linear interpolation:

        e(t) = E[floor(t)] + w (E[ceil(t)] - E[floor(t)]),   w = t - floor(t),   t clamped to [0, N - 1]

    which is the row ``E[t]`` itself at integer t (what the embedding gives there). It holds the
    table's own ``weight`` parameter, so the state-dict key (``time_proj.weight``) is unchanged."""

    def __init__(self, table: nn.Embedding):
        super().__init__()
        self.weight = table.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float().clamp(0, self.weight.shape[0] - 1)
        low = t.floor()
        below, above = self.weight[low.long()], self.weight[t.ceil().long()]
        return below + (t - low).unsqueeze(-1) * (above - below)


class DiffusersUNet(nn.Module):
    """diffusers' ``UNet2DModel`` under the eps contract: ``forward(x, t[, class_labels])``.

    ``x`` (B, C, H, W) float32 and ``t`` (B,) float32 (fractional allowed) go straight to the
    UNet as ``sample`` and ``timestep``; a class-conditional UNet takes int64 ``class_labels`` (B,)
    in ``[0, num_classes)`` (:func:`class_count`). Returns the UNet's native output; a UNet with
    twice the image channels (a learned variance) returns the first half, the mean prediction.

    The positional embedding takes float timesteps as they are. A learned one
    (``time_embedding_type="learned"``: ``nn.Embedding(num_train_timesteps, C)``, integer timesteps
    only) is read at fractional t by linear interpolation between the rows of floor(t) and ceil(t):
    the UNet's ``time_proj`` becomes an :class:`InterpolatedEmbedding` of the same table, exact at
    integer t. With ``class_embed_type="timestep"`` the labels go through the same ``time_proj``.

    ``time_embedding_type="fourier"`` UNets are score-SDE VE networks (Song et al. 2021): they take
    the noise level sigma, embed log(sigma), and return ``F / sigma``, the score of
    ``x_ve = x0 + sigma eps``, whose training target makes ``F = -eps``. Given ``ve_schedule`` (the
    VP schedule to sample with), the wrapper maps the VP state onto the VE one (Karras et al. 2022,
    eq. 4: ``x_ve = x_t / sqrt(ab)``, ``sigma = sqrt((1 - ab) / ab)``, ``ab = alpha_bar(t)``
    interpolated in the graph) and returns ``eps = -sigma * unet(x_ve, sigma)``.
    """

    def __init__(self, unet: nn.Module, ve_schedule: ScheduleSpec | None = None,
                 num_classes: int | None = None):
        super().__init__()
        if unet.config.time_embedding_type == "learned":
            unet.time_proj = InterpolatedEmbedding(unet.time_proj)
        self.unet = unet
        self.channels = int(unet.config.in_channels)
        self.num_classes = num_classes
        self.ve_schedule = ve_schedule
        if ve_schedule is not None:
            from pndm.schedules import make_schedule

            self.register_buffer("log_nodes", make_schedule(ve_schedule).log_nodes.float(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor,
                class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.ve_schedule is None:
            return self.unet(x, t, class_labels=class_labels, return_dict=False)[0][:, : self.channels]
        from pndm.schedules import interpolate_log_alpha_bar, sigma_of_log_alpha_bar

        log_ab = interpolate_log_alpha_bar(self.log_nodes, t)
        sigma = sigma_of_log_alpha_bar(log_ab)  # sqrt((1 - ab) / ab)
        x_ve = x * torch.exp(-0.5 * log_ab).view(-1, 1, 1, 1)
        score = self.unet(x_ve, sigma, class_labels=class_labels, return_dict=False)[0][:, : self.channels]
        return -sigma.view(-1, 1, 1, 1) * score


def class_count(cfg: dict[str, Any], T: int) -> int | None:
    """How many integer class labels the UNet takes, ``[0, count)`` (None: unconditional); ``cfg``
    passed :func:`_check_wrappable`, ``T`` is the schedule's number of steps.

    ``num_class_embeds=K`` (a table of K label embeddings): K. ``class_embed_type="timestep"`` has no
    label table: a label is embedded like a timestep (``time_proj``, then its own
    ``TimestepEmbedding``), and the config does not say how many classes were trained. The count is
    then ``num_class_embeds`` where config.json gives one (diffusers does not read it for this type:
    write it there to state the count), else every label the time projection embeds as a timestep:
    the ``num_train_timesteps`` rows of a learned embedding, the schedule's T steps of the positional one.
    """
    if cfg["class_embed_type"] is None:
        return cfg["num_class_embeds"]
    learned = cfg["time_embedding_type"] == "learned"
    return cfg["num_class_embeds"] or (cfg["num_train_timesteps"] if learned else T)


def _check_wrappable(cfg: dict[str, Any], where: Path, T: int) -> None:
    """Refuse in one line what :class:`DiffusersUNet` cannot run (``T``: the schedule's steps)."""
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(
            f"{where}: {cfg['_class_name']} is not supported; pndm loads UNet2DModel (unconditional or "
            "class-conditional) folders"
        )
    time, kind, rows = cfg["time_embedding_type"], cfg["class_embed_type"], cfg["num_train_timesteps"]
    if time not in ("positional", "fourier", "learned"):
        raise CheckpointError(
            f"{where}: time_embedding_type={time!r} is not supported; supported: positional, fourier, learned"
        )
    if time == "learned" and not rows:
        raise CheckpointError(f"{where}: time_embedding_type='learned' needs num_train_timesteps (the rows "
                              "of its timestep table); add it to config.json")
    if time == "learned" and T > rows:
        raise CheckpointError(
            f"{where}: the learned time embedding has {rows} timesteps (num_train_timesteps) but the "
            f"schedule has T={T}; sample with a schedule of at most {rows} steps (--T {rows})")
    if kind == "identity":
        raise CheckpointError(
            f"{where}: class_embed_type='identity' is not supported: its class input is an embedding vector "
            "added to the time embedding, not an integer label, and pndm's engines take int64 class labels")
    if kind == "timestep" and time == "fourier":
        raise CheckpointError(
            f"{where}: class_embed_type='timestep' with time_embedding_type='fourier' is not supported: a "
            "label goes through the Fourier projection of log(label), -inf at label 0; use num_class_embeds")
    if kind not in (None, "timestep"):
        raise CheckpointError(f"{where}: class_embed_type={kind!r} is not supported; supported: none "
                              "(num_class_embeds), timestep")
    count = cfg["num_class_embeds"]
    if kind == "timestep" and time == "learned" and count and count > rows:
        raise CheckpointError(
            f"{where}: num_class_embeds={count} with class_embed_type='timestep': labels index the learned "
            f"time embedding's {rows} rows (num_train_timesteps); give at most {rows}")
    out, channels = cfg["out_channels"], cfg["in_channels"]
    if out not in (channels, 2 * channels):
        raise CheckpointError(
            f"{where}: out_channels={out} with in_channels={channels}; pndm needs out_channels equal to "
            "in_channels (or twice it: a learned variance)"
        )


def build_diffusers_unet(folder: DiffusersFolder, state: dict[str, torch.Tensor]) -> DiffusersUNet:
    """diffusers' own UNet2DModel from the folder's config and weights, wrapped (see class doc)."""
    where = folder.unet / "config.json"
    cfg = {**DIFFUSERS_DEFAULTS, **folder.config}
    _check_wrappable(cfg, where, folder.schedule.T)
    if not diffusers_available():
        raise PndmError(f"{folder.root}: this UNet2DModel configuration runs diffusers' own module; "
                        f"install it: {INSTALL_HINT}")
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_config(folder.config)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = f"{where}: diffusers cannot build this UNet2DModel ({first}); fix config.json"
        raise CheckpointError(message) from None
    state = {_legacy_renamed(k): v for k, v in state.items()}
    from pndm.models.state_dicts import load_into

    load_into(unet, state, folder.weights, "diffusers UNet2DModel of this config.json")
    ve_schedule = folder.schedule if cfg["time_embedding_type"] == "fourier" else None
    return DiffusersUNet(unet.float().eval(), ve_schedule, class_count(cfg, folder.schedule.T)).eval()


def _legacy_renamed(key: str) -> str:
    for old, new in _LEGACY_ATTENTION.items():
        if key.endswith(f"{old}weight") or key.endswith(f"{old}bias"):
            return key.replace(old, new)
    return key


def image_shape_of(cfg: dict[str, Any], where: Path) -> tuple[int, int, int]:
    size = cfg.get("sample_size")
    if size is None:
        raise CheckpointError(f"{where}: config.json has no sample_size; the image size is needed, add it")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    # Every down block but the last halves the image, and the up path must meet the same sizes.
    multiple = 2 ** (len(cfg.get("down_block_types", DIFFUSERS_DEFAULTS["down_block_types"])) - 1)
    if int(height) % multiple or int(width) % multiple:
        raise CheckpointError(
            f"{where}: sample_size {height}x{width} is not a multiple of {multiple}, which this UNet's "
            f"{multiple.bit_length() - 1} downsamplings need; use an image size that is")
    return int(cfg.get("in_channels", DIFFUSERS_DEFAULTS["in_channels"])), int(height), int(width)


def load_folder(path: Path, allow_pickle: bool = False, schedule: ScheduleSpec | None = None
                ) -> tuple[nn.Module, str, dict[str, Any], DiffusersFolder, tuple[str, ...]]:
    """(model, architecture, config, folder, notes): the exact DDPM mapping if one exists, else diffusers'.

    ``schedule``: the schedule to use instead of the scheduler config's (module doc)."""
    folder, state = read_folder(path, allow_pickle, schedule)
    cfg = {**DIFFUSERS_DEFAULTS, **folder.config}
    try:
        ddpm_config = ddpm_config_from_diffusers(cfg, folder.unet)
    except NotMappable as exc:
        model = build_diffusers_unet(folder, state)
        notes = (f"diffusers' own UNet2DModel (not the DDPM layout: {exc.option})",)
        if cfg["class_embed_type"] == "timestep" and not cfg["num_class_embeds"]:
            notes += (f"class_embed_type='timestep': config.json does not say how many classes the model "
                      f"has; labels 0..{model.num_classes - 1} are taken (every label the time projection "
                      "embeds); add num_class_embeds=K to config.json to take 0..K-1",)
        return model, "diffusers", dict(folder.config), folder, (*notes, *folder.notes)
    from pndm.models.architectures import build_model
    from pndm.models.state_dicts import load_into

    model = build_model("ddpm", ddpm_config)
    load_into(model, map_state_dict(state, cfg, len(ddpm_config.ch_mult), folder.weights), folder.weights,
              "DDPM UNet mapped from this diffusers config")
    note = "diffusers UNet2DModel mapped onto the original DDPM layout"
    return model.eval(), "ddpm", ddpm_config.to_dict(), folder, (note, *folder.notes)
