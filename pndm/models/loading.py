"""``load(source) -> (model, spec)``: every supported kind of source, one architecture per family.

Sources (docs/CONTRACTS.md): ``"default"``; a named model (``cifar10``, ``celeba``,
``lsun_church``, ``lsun_bedroom``, ``iddpm_cifar10``; weights from ``registry.weights_dir()``);
an architecture name (``"ddpm"``/``"iddpm"`` with ``config=``, random init); a ``.ckpt/.pt/.pth``
state dict; a ``.safetensors`` file with a JSON config; a diffusers ``UNet2DModel`` folder.

Nothing is executed while loading: torch files are read with ``weights_only=True`` unless the
caller passes ``allow_pickle=True``; configs are JSON or ``yaml.safe_load``.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pndm.errors import CheckpointError, PndmError
from pndm.fileio import sha256_file
from pndm.models import registry
from pndm.models.architectures import MODULES, build_model
from pndm.models.checkpoint import read_checkpoint_config, read_safetensors, refuse_engine_file
from pndm.models.configs import ParsedConfig, image_shape, model_config, parse_config, read_config_file
from pndm.models.diffusers_folder import load_folder
from pndm.models.infer import detect_layout, infer_config
from pndm.models.registry import NAMED_MODELS, find_weights, named_model, weights_dir
from pndm.models.spec import ModelSpec
from pndm.models.state_dicts import TORCH_SUFFIXES, load_into, read_torch_state_dict
from pndm.schedules import ScheduleSpec

# Each architecture's schedule when its config does not say (DDIM: linear; PNDM iDDPM: cosine).
DEFAULT_SCHEDULES = {"ddpm": ScheduleSpec("linear"), "iddpm": ScheduleSpec("cosine")}
RANDOM_INIT_SEED = 0

ConfigArg = dict[str, Any] | str | Path | None


class UntrainedModelWarning(UserWarning):
    """A model was built with random weights: its samples are noise."""


def valid_names() -> list[str]:
    return ["default", *NAMED_MODELS, *MODULES]


def _unknown_name(name: str) -> PndmError:
    return PndmError(f"unknown model or architecture {name!r}; valid names: {', '.join(valid_names())}")


def _spec(parsed: ParsedConfig, source: str, kind: str, *, path: Path | None = None,
          sha256: str | None = None, notes: tuple[str, ...] = ()) -> ModelSpec:
    schedule = parsed.schedule or DEFAULT_SCHEDULES[parsed.architecture]
    return ModelSpec(
        architecture=parsed.architecture,
        config=parsed.model.to_dict(),
        image_shape=image_shape(parsed.architecture, parsed.model),
        schedule=schedule.name,
        T=schedule.T,
        schedule_spec=schedule,
        prediction=parsed.prediction or "epsilon",
        source=source,
        source_kind=kind,
        sha256=sha256,
        path=str(Path(path).resolve()) if path is not None else None,
        notes=notes,
    )


def _config_arg(config: dict[str, Any] | str | Path, what: str) -> ParsedConfig:
    if isinstance(config, dict):
        return parse_config(config, what)
    return parse_config(read_config_file(config), str(config))


def _find_config(path: Path, config: ConfigArg) -> ParsedConfig | None:
    """The config for a weights file: explicit, else a JSON beside it, else the embedded one, else None."""
    if config is not None:
        return _config_arg(config, f"config for {path}")
    for candidate in (path.with_name(f"{path.stem}_config.json"), path.with_name(f"{path.stem}.json"),
                      path.with_name("config.json")):
        if candidate.is_file():
            return parse_config(read_config_file(candidate), str(candidate))
    found = read_checkpoint_config(path)  # a safetensors header's pndm_config
    return parse_config(found, f"config of {path}") if found is not None else None


def _load_edm(path: Path, allow_pickle: bool) -> tuple[nn.Module, ModelSpec]:
    """An EDM network pickle (``--trust-pickle`` only): pndm.models.sigma_denoiser."""
    from pndm.models.sigma_denoiser import load_edm_pickle, wrap_sigma_network

    net = load_edm_pickle(path, allow_pickle)
    model, schedule, config = wrap_sigma_network(net, int(getattr(net, "label_dim", 0) or 0) or None)
    channels, size = int(net.img_channels), int(net.img_resolution)
    config = {**config, "network": type(net).__name__}
    spec = ModelSpec(
        architecture="edm", config=config, image_shape=(channels, size, size),
        schedule=schedule.name, T=schedule.T, schedule_spec=schedule, source=str(path),
        source_kind="checkpoint", sha256=sha256_file(path), path=str(path.resolve()), prediction="sample",
        num_classes=model.num_classes,
        notes=("EDM sigma denoiser D(x; sigma) as an x0 prediction over its sigma schedule",),
    )
    return model, spec


def _load_file(path: Path, config: ConfigArg, allow_pickle: bool) -> tuple[nn.Module, ModelSpec]:
    if path.suffix == ".pkl":
        return _load_edm(path, allow_pickle)
    if path.suffix == ".safetensors":
        state = read_safetensors(path)[0]
    elif path.suffix in TORCH_SUFFIXES:
        state = read_torch_state_dict(path, allow_pickle)
    else:
        refuse_engine_file(path)
        raise CheckpointError(
            f"{path}: unsupported file type {path.suffix!r}; expected .ckpt/.pt/.pth/.bin, .safetensors, "
            "an EDM .pkl or a diffusers folder"
        )
    if not state:
        raise CheckpointError(f"{path}: the file holds no tensors")
    layout = detect_layout(state, path)
    if layout == "diffusers":
        raise CheckpointError(
            f"{path}: diffusers-layout weights; load the diffusers model folder (with its config.json) "
            "instead"
        )
    parsed = _find_config(path, config)
    notes: tuple[str, ...] = ()
    if parsed is None:
        parsed, note = infer_config(state, layout, path)
        notes = (note,)
        warnings.warn(f"{path}: {note}", stacklevel=4)
    if parsed.architecture != layout:
        raise CheckpointError(
            f"{path}: the config says architecture {parsed.architecture!r} but the weights are in the "
            f"{layout!r} layout; pass the matching config"
        )
    model = build_model(parsed.architecture, parsed.model)
    load_into(model, state, path, f"{parsed.architecture} model of this config")
    spec = _spec(parsed, str(path), "checkpoint", path=path, sha256=sha256_file(path), notes=notes)
    return model.eval(), spec


def _load_diffusers(path: Path, allow_pickle: bool, schedule: ScheduleSpec | None
                    ) -> tuple[nn.Module, ModelSpec]:
    from pndm.models.diffusers_folder import image_shape_of

    model, architecture, config, folder, notes = load_folder(path, allow_pickle, schedule)
    schedule = folder.schedule
    num_classes = getattr(model, "num_classes", None)
    spec = ModelSpec(
        architecture=architecture, config=config,
        image_shape=image_shape_of(folder.config, folder.unet / "config.json"),
        schedule=schedule.name, T=schedule.T, schedule_spec=schedule, source=str(path),
        source_kind="diffusers",
        sha256=folder.files[str(folder.weights.relative_to(path))], path=str(path.resolve()), notes=notes,
        prediction=folder.prediction, num_classes=num_classes, files=folder.files,
    )
    return model.eval(), spec


def load_path(path: str | Path, config: ConfigArg = None, *, allow_pickle: bool = False,
              schedule: ScheduleSpec | None = None) -> tuple[nn.Module, ModelSpec]:
    """Load a weights file or a diffusers folder (see ``load``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_diffusers(path, allow_pickle, schedule)
    if not path.is_file():
        raise PndmError(
            f"{path}: no such file or folder, and not a named model (valid names: {', '.join(valid_names())})"
        )
    return _load_file(path, config, allow_pickle)


def load_architecture(name: str, config: ConfigArg = None) -> tuple[nn.Module, ModelSpec]:
    """A random-init (seed 0) model of a named model, or of architecture ``name`` with ``config``.

    Warns with UntrainedModelWarning: the weights are random, so samples are noise.
    """
    if name in MODULES:
        if config is None:
            raise PndmError(f"architecture {name!r} needs config= (a dict or JSON/YAML file of its settings)")
        raw = config if isinstance(config, dict) else read_config_file(config)
        if not any(key in raw for key in ("architecture", "model", "Model")):  # a bare model section
            raw = {"architecture": name, "model": raw}
        parsed = parse_config(raw, f"config for {name}")
        if parsed.architecture != name:
            raise PndmError(f"the config given is for architecture {parsed.architecture!r}, not {name!r}")
        arch, model_cfg, schedule = parsed.architecture, parsed.model, parsed.schedule
        how = "load a checkpoint for trained weights"
    else:
        if name not in valid_names():
            raise _unknown_name(name)
        entry = named_model(name)
        arch, model_cfg, schedule = entry.architecture, entry.model, ScheduleSpec(entry.schedule, entry.T)
        if name == "default":
            shipped = "" if registry.DEFAULT_WEIGHTS.is_file() else " (not shipped in this installation)"
            how = f"trained weights: {registry.DEFAULT_WEIGHTS}{shipped}"
        else:
            how = f"for trained weights put {entry.origin} in {weights_dir()}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        model = build_model(arch, model_cfg).eval()
    message = f"{name}: random init (untrained, seed {RANDOM_INIT_SEED}); {how}"
    warnings.warn(message, UntrainedModelWarning, stacklevel=2)
    spec = _spec(ParsedConfig(arch, model.config, schedule), message, "random")
    return model, dataclasses.replace(spec, name=name)


def _load_named(name: str, config: ConfigArg, allow_pickle: bool) -> tuple[nn.Module, ModelSpec]:
    """A named model's installed weights ("default": the shipped file, else its untrained stand-in)."""
    weights = find_weights(name)
    if weights is None and name == "default":
        return load_architecture("default")
    entry = named_model(name)
    if weights is None:
        raise PndmError(
            f"no weights for named model {name!r} in {weights_dir()} (looked for {', '.join(entry.files)}); "
            f"get {entry.origin}, put it there (or set $PNDM_MODELS_DIR), or build the untrained "
            f"architecture with random_init=True (pndm-export build --model {name} --random-init)"
        )
    if config is None and weights.suffix in TORCH_SUFFIXES:
        config = {"architecture": entry.architecture, "model": entry.model,
                  "diffusion": {"schedule": entry.schedule, "T": entry.T}}
    model, spec = load_path(weights, config, allow_pickle=allow_pickle)
    if name != "default" and _architecture_differs(spec, entry):
        raise CheckpointError(
            f"{weights}: installed as named model {name!r} but holds a different {spec.architecture} "
            f"architecture ({spec.config}); remove it or load it by path"
        )
    kind = "default" if name == "default" else "named"
    return model, dataclasses.replace(spec, name=name, source=f"{name} ({weights})", source_kind=kind)


def _architecture_differs(spec: ModelSpec, entry: registry.NamedModel) -> bool:
    """Whether loaded weights are not the named model's architecture (dropout, inert at eval, aside)."""
    if spec.architecture != entry.architecture:
        return True
    named = model_config(entry.architecture, entry.model).to_dict()
    return {k: v for k, v in named.items() if k != "dropout"} != {
        k: v for k, v in spec.config.items() if k != "dropout"}


def load(source: str | Path, config: ConfigArg = None, *, allow_pickle: bool = False,
         random_init: bool = False, schedule: ScheduleSpec | None = None,
         prediction: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """(model in eval mode, ModelSpec) for ``source``; see the module docstring for the kinds.

    ``config``: a dict or JSON/YAML path; overrides the config found beside a weights file.
    ``allow_pickle``: trust a torch file whose pickle carries code (pndm refuses it otherwise).
    ``random_init``: for a named model or architecture, build it untrained instead of loading weights.
    ``schedule`` / ``prediction``: how the model was trained, overriding what its config (or a
    diffusers scheduler config) says.
    """
    model, spec = _load(source, config, allow_pickle, random_init, schedule)
    if schedule is not None and spec.schedule_spec != schedule:
        spec = spec.replace_schedule(schedule)
    if prediction is not None:
        spec = dataclasses.replace(spec, prediction=prediction)
    return model, spec


def _load(source: str | Path, config: ConfigArg, allow_pickle: bool, random_init: bool,
          schedule: ScheduleSpec | None) -> tuple[nn.Module, ModelSpec]:
    is_name = isinstance(source, str) and not Path(source).exists() and Path(source).suffix == ""
    if is_name and (random_init or source in MODULES):
        return load_architecture(source, config)
    if is_name and source in valid_names():
        return _load_named(source, config, allow_pickle)
    if is_name and "/" not in source:
        raise _unknown_name(source)
    return load_path(source, config, allow_pickle=allow_pickle, schedule=schedule)
