"""A training run's checkpoint as one unit: model, EMA and training state always from the same step.

Layout of a run folder (``pndm-train --out``)::

    checkpoints/step_0000500/   model, ema, train_state (.safetensors + .json each) and unit.json
    current -> checkpoints/step_0000500        the one pointer that says which unit is the run
    ema.safetensors -> current/ema.safetensors  stable published paths (also ema.json,
    ...                                          model.safetensors, model.json)

A checkpoint is written into a temporary folder, renamed to ``checkpoints/step_<k>`` when complete
(``unit.json``, written last, holds every file's SHA-256), and becomes the run's checkpoint when
the ``current`` symlink is replaced by one rename. The published paths are symlinks through
``current``, so ``ema.safetensors`` and ``ema.json`` switch together with it and stay loadable by
``pndm.models.load`` wherever a checkpoint is accepted. A crash at any moment leaves ``current``
naming a complete unit (the previous or the new one); what is left over is removed by the next save
or run. Reading a unit checks that its files are all there, agree on the step and match their
hashes, and refuses with one line otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from pndm.errors import CheckpointError
from pndm.faults import fault_point
from pndm.fileio import atomic_write_text, sha256_file
from pndm.models import load_checkpoint, save_checkpoint
from pndm.models.checkpoint import config_path_for, read_checkpoint_config, read_json

UNIT_PARTS = ("model", "ema", "train_state")
PUBLISHED = ("ema.safetensors", "ema.json", "model.safetensors", "model.json")
POINTER = "current"
CHECKPOINTS = "checkpoints"

Unit = dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]]


def unit_name(step: int) -> str:
    return f"step_{step:07d}"


def _replace_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` in one rename (a new symlink under a temporary name first)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    fault_point(f"train.link.{link.name}", link)
    os.replace(tmp, link)


def current_unit(out: Path) -> Path | None:
    """The unit folder ``current`` points at (None when the run has no committed checkpoint)."""
    link = out / POINTER
    return out / os.readlink(link) if link.is_symlink() else None


def _legacy_files(out: Path) -> list[Path]:
    """Checkpoint files of the layout before units (regular files at the top of the run folder)."""
    return [out / f"{part}.safetensors" for part in UNIT_PARTS
            if (out / f"{part}.safetensors").is_file() and not (out / f"{part}.safetensors").is_symlink()]


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a training run's checkpoint (either layout)."""
    return current_unit(out) is not None or bool(_legacy_files(out))


def write_unit(out: Path, step: int, parts: dict[str, dict[str, torch.Tensor]], config: dict) -> Path:
    """Write the unit for ``step`` (one state dict per name in UNIT_PARTS) and make it current."""
    folder = out / CHECKPOINTS
    final = folder / unit_name(step)
    if final == current_unit(out):
        raise CheckpointError(f"{final}: step {step} is already the run's checkpoint")
    tmp = folder / f".{unit_name(step)}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        hashes = {}
        for part in UNIT_PARTS:
            path = save_checkpoint(tmp / f"{part}.safetensors", parts[part], config)
            hashes[path.name] = sha256_file(path)
            hashes[config_path_for(path).name] = sha256_file(config_path_for(path))
        atomic_write_text(tmp / "unit.json", json.dumps({"step": step, "sha256": hashes}, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp)
        raise
    if final.exists():  # a complete unit a killed run renamed but never made current
        shutil.rmtree(final)
    fault_point("train.rename", final)
    os.replace(tmp, final)
    fault_point("train.pointer", final)
    _replace_symlink(out / POINTER, f"{CHECKPOINTS}/{final.name}")
    fault_point("train.publish", final)
    for name in PUBLISHED:
        target = f"{POINTER}/{name}"
        link = out / name
        if not (link.is_symlink() and os.readlink(link) == target):
            _replace_symlink(link, target)
    clean(out)
    return final


def clean(out: Path) -> None:
    """Remove every unit but the current one, temporary units and links, and (once units exist) the
    files of the layout before them. Call it holding the run folder's lock."""
    current = current_unit(out)
    folder = out / CHECKPOINTS
    for name in (POINTER, *PUBLISHED):  # symlinks a killed run made but never renamed into place
        for stale in out.glob(f".{name}.tmp-*"):
            stale.unlink()
    if current is not None:
        for path in _legacy_files(out) + [out / "train_state.json"]:
            if path.is_file() and not path.is_symlink():
                path.unlink()
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry != current:
            fault_point("train.prune", entry)
            shutil.rmtree(entry)


def saved_settings(out: Path) -> dict[str, Any]:
    """The training settings recorded with the run's current checkpoint, {} where none can be read
    (:func:`read_unit` then says what is wrong)."""
    weights = out / "model.safetensors"  # a published link, or the file of a run from before units
    try:
        config = read_checkpoint_config(weights) if weights.is_file() else None
    except CheckpointError:
        return {}
    return (config or {}).get("training", {})


def _inconsistent(where: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"--resume: the checkpoint in {where} is inconsistent ({why}); it cannot be resumed exactly, "
        "start a new run with another --out"
    )


def read_unit(out: Path) -> tuple[int, Unit]:
    """(step, {part: (state_dict, config)}) of the run's current checkpoint, checked to be one unit."""
    unit = current_unit(out)
    if unit is None:
        if _legacy_files(out):
            return _read_legacy(out)
        raise CheckpointError(
            f"--resume: {out} holds no checkpoint yet; start without --resume (or point --out at a run)"
        )
    manifest_path = unit / "unit.json"
    if not manifest_path.is_file():
        raise _inconsistent(unit, f"{POINTER} names a folder without unit.json")
    manifest = read_json(manifest_path, "checkpoint unit")
    for name, digest in manifest.get("sha256", {}).items():
        path = unit / name
        if not path.is_file():
            raise _inconsistent(unit, f"{name} is missing")
        if sha256_file(path) != digest:
            raise _inconsistent(unit, f"{name} changed after it was written")
    missing = [p for p in UNIT_PARTS if f"{p}.safetensors" not in manifest.get("sha256", {})]
    if missing:
        raise _inconsistent(unit, f"unit.json lists no {missing[0]}.safetensors")
    parts = {part: load_checkpoint(unit / f"{part}.safetensors") for part in UNIT_PARTS}
    return _checked_step(unit, parts, int(manifest.get("step", -1))), parts


def _read_legacy(out: Path) -> tuple[int, Unit]:
    """The three top-level files of a run written before units, if they agree on the step."""
    missing = [p for p in UNIT_PARTS if not (out / f"{p}.safetensors").is_file()]
    if missing:
        raise _inconsistent(out, f"{missing[0]}.safetensors is missing")
    parts = {part: load_checkpoint(out / f"{part}.safetensors") for part in UNIT_PARTS}
    return _checked_step(out, parts, int(parts["train_state"][0]["step"])), parts


def _checked_step(where: Path, parts: Unit, step: int) -> int:
    steps = {part: config.get("training", {}).get("step") for part, (_, config) in parts.items()}
    steps["train_state tensor"] = int(parts["train_state"][0]["step"])
    if any(s != step for s in steps.values()):
        found = ", ".join(f"{part} at step {s}" for part, s in steps.items())
        raise _inconsistent(where, found)
    return step
