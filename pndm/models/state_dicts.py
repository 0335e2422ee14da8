"""Reading state dicts safely and checking them against an architecture.

``.ckpt/.pt/.pth/.bin`` files are read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never code. A file whose pickle refers to Python callables is
refused unless the caller explicitly trusts it (``allow_pickle=True``, ``--trust-pickle``).
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pndm.errors import CheckpointError

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)", re.IGNORECASE)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed torch.load: its first sentence, or what the exception type means."""
    if isinstance(exc, EOFError):
        return "the file is empty or ends early"
    if isinstance(exc, KeyError):
        return "neither a zip archive nor a pickle"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else type(exc).__name__


def torch_load(path: Path, allow_pickle: bool = False) -> Any:
    """``torch.load`` on the CPU, weights-only unless ``allow_pickle``; failures -> CheckpointError."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        code = _GLOBAL.search(str(exc))
        if code:
            raise CheckpointError(
                f"{path}: refused: the file contains pickled code ({code.group(1)}) and pndm does not "
                "execute code from files; if you trust its origin, pass allow_pickle=True, or convert it "
                "to .safetensors"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_weights_only_reason(exc)}); the file is "
            "corrupt, truncated or of another kind: re-download or re-save it"
        ) from None
    except Exception as exc:  # a corrupt pickle stream fails with anything (IndexError, struct.error...)
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_reason(exc)}); the file is corrupt, "
            "truncated or of another kind: re-download or re-save it"
        ) from None


def _weights_only_reason(exc: pickle.UnpicklingError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "unsupported" in line.lower() or "error" in line.lower()]
    return useful[-1] if useful else lines[-1] if lines else "unpickling failed"


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint object.

    Accepts a plain ``{name: tensor}`` dict, or the DDIM repo's list ``[model, optimizer,
    epoch, step, ema]`` (the EMA entry is taken when present, else the model entry).
    A ``module.`` prefix (DataParallel) is stripped.
    """
    if isinstance(obj, (list, tuple)) and obj:
        # DDIM repo: states = [model, optimizer, epoch, step] (+ [ema_helper.state_dict()])
        obj = obj[4] if len(obj) >= 5 and isinstance(obj[4], dict) else obj[0]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"{path}: not a model checkpoint (holds a {type(obj).__name__}, not a dict of tensors)"
        )
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{path}: not a model state dict (entries {', '.join(map(str, not_tensors[:3]))} are not tensors)"
        )
    return strip_module_prefix(obj)


def strip_module_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without the ``module.`` prefix that DataParallel/DDP put on every key (if all have it)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def read_torch_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    return unwrap_state_dict(torch_load(path, allow_pickle), path)


def _names(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path | str, what: str,
              mismatch: str = "the config does not match these weights") -> None:
    """``load_state_dict(strict=True)`` with one-line errors naming the first offending keys/tensor;
    ``mismatch`` says why keys or shapes differ (a model without a config words it otherwise)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
        raise CheckpointError(
            f"{path}: does not fit the {what} ({'; '.join(parts)}); {mismatch}"
        )
    for name, ref in expected.items():
        if ref.is_floating_point() and not state[name].is_floating_point():
            raise CheckpointError(
                f"{path}: tensor {name} holds {state[name].dtype} values but the {what} needs floating-point "
                "weights; this is not a weights file of this model"
            )
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor {name} has shape {tuple(state[name].shape)} but the {what} expects "
                f"{tuple(ref.shape)}; {mismatch}"
            )
    model.load_state_dict(state)  # copies into the model's float32 parameters
