"""pndm's own checkpoint format: ``<name>.safetensors`` + ``<name>.json`` (docs/CONTRACTS.md).

The JSON config (``{"format": "pndm-checkpoint/1", "architecture", "model", "diffusion",
"training"?}``) is written beside the weights and also embedded in the safetensors
metadata under ``pndm_config``, so a lone ``.safetensors`` still says what it holds. Both
files are written atomically (temporary name, then rename). Loading never runs code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from pndm.errors import CheckpointError
from pndm.fileio import atomic_path, atomic_write_text

FORMAT = "pndm-checkpoint/1"
METADATA_KEY = "pndm_config"


def config_path_for(weights: str | Path) -> Path:
    """The JSON config that belongs beside a weights file: ``<stem>.json``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".json")


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``path`` (``.safetensors``) and ``<stem>.json`` atomically; return ``path``.

    ``config`` must name ``architecture`` and hold the ``model`` settings; ``format`` is filled
    in if absent. ``metadata`` (string-convertible values) is added to the safetensors header.
    Tensors are saved detached, contiguous and on the CPU (shared storage is copied apart).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        got = path.suffix or "no suffix"
        raise CheckpointError(f"{path}: a pndm checkpoint must end in .safetensors (got {got!r})")
    missing = [k for k in ("architecture", "model") if k not in config]
    if missing:
        lacks = ", ".join(missing)
        raise CheckpointError(f"{path}: checkpoint config lacks {lacks}; pass the full config dict")
    config = {"format": FORMAT, **config}
    config_json = json.dumps(config, indent=2, sort_keys=True)
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    header[METADATA_KEY] = config_json
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:  # serialized in memory, so a full disk is an OSError naming the file
        tmp.write_bytes(save(tensors, metadata=header))
    atomic_write_text(config_path_for(path), config_json + "\n")
    return path


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CheckpointError(
        f"{path}: not a readable safetensors file ({reason}); the file may be truncated or corrupt, "
        "re-download or re-save it"
    )


def refuse_engine_file(path: Path) -> None:
    """An engine (.onnx, .pt2, .plan) given where model weights are wanted: say what to give instead."""
    from pndm.engine_format import SUFFIX_KINDS

    if path.suffix in SUFFIX_KINDS:
        raise CheckpointError(
            f"{path}: an engine, not model weights; give the checkpoint or model it was exported from "
            "(its manifest.json names it: model.source.path)"
        )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a safetensors file; a missing or corrupt file raises CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; check the path")
    refuse_engine_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    return tensors, header


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read {what} ({exc}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object, got {type(data).__name__}")
    return data


def read_checkpoint_config(path: str | Path) -> dict[str, Any] | None:
    """A weights file's pndm config: ``<stem>.json`` beside it, else its embedded ``pndm_config``.

    Reads only the safetensors header, not the tensors. None if neither exists.
    """
    path = Path(path)
    beside = config_path_for(path)
    if beside.is_file():
        return read_json(beside, "checkpoint config")
    if path.suffix != ".safetensors":
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    if METADATA_KEY not in header:
        return None
    try:
        return json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: embedded {METADATA_KEY} is not valid JSON ({exc})") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, config) of a pndm checkpoint.

    The config is ``<stem>.json`` beside the file if present, else the ``pndm_config``
    embedded in the safetensors header; neither -> CheckpointError saying what to supply.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state, _ = read_safetensors(path)
    config = read_checkpoint_config(path)
    if config is None:
        raise CheckpointError(
            f"{path}: no config found (neither {config_path_for(path).name} beside it nor "
            f"'{METADATA_KEY}' in its header); put the architecture config JSON beside it"
        )
    return state, config
