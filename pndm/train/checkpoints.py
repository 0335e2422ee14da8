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
naming a complete unit (the previous or the new one), or, killed just before the first ``current``
was made, no ``current`` and a complete unit that ``--resume`` takes up (:func:`run_unit`). Reading a
unit checks that its files are all there, agree on the step and match their hashes, and refuses with
one line otherwise.

What ``checkpoints/`` may hold is pndm's: ``step_<7 digits>`` units and ``.step_<7 digits>.tmp-<pid>``
units being written. :func:`clean` removes only those (temporary units always, older ``step_*`` units
only while ``current`` names a complete unit) and leaves any other entry alone; it runs once a run has
been accepted and after each save, never for a refused command. A new run refuses a ``checkpoints/``
that holds anything else (:func:`foreign_entries`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pndm.errors import CheckpointError, PndmError
from pndm.faults import fault_point
from pndm.fileio import atomic_write_text, sha256_file
from pndm.models import load_checkpoint, save_checkpoint
from pndm.models.checkpoint import config_path_for, read_checkpoint_config

UNIT_PARTS = ("model", "ema", "train_state")
PUBLISHED = ("ema.safetensors", "ema.json", "model.safetensors", "model.json")
POINTER = "current"
CHECKPOINTS = "checkpoints"
UNIT_NAME = re.compile(r"step_\d{7}")
TEMP_UNIT_NAME = re.compile(r"\.step_\d{7}\.tmp-\d+")

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
    """The folder the ``current`` link points at (None when ``current`` is not a link)."""
    link = out / POINTER
    return out / os.readlink(link) if link.is_symlink() else None


def _is_unit(entry: Path) -> bool:
    return bool(UNIT_NAME.fullmatch(entry.name)) and entry.is_dir() and not entry.is_symlink()


def _is_temp_unit(entry: Path) -> bool:
    return bool(TEMP_UNIT_NAME.fullmatch(entry.name)) and entry.is_dir() and not entry.is_symlink()


def _complete_units(out: Path) -> list[Path]:
    """pndm's complete units in ``checkpoints/`` (``step_<k>`` folders with their unit.json), oldest first."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(entry for entry in folder.iterdir() if _is_unit(entry) and (entry / "unit.json").is_file())


def _valid_current(out: Path) -> Path | None:
    """The unit ``current`` names where it is a link to a complete unit inside ``checkpoints/``, else None."""
    unit = current_unit(out)
    if unit is None or not _is_unit(unit) or not (unit / "unit.json").is_file():
        return None
    return unit if unit.resolve().parent == (out / CHECKPOINTS).resolve() else None


def run_unit(out: Path) -> tuple[Path | None, bool]:
    """(the unit that is the run, whether it was taken up without a ``current`` link); (None, False): none.

    ``current`` is the run where it is a link to a folder. Anything else at that name raises
    :class:`CheckpointError` saying what it is and the fix; nothing is changed. Without any ``current``
    the newest complete unit in ``checkpoints/`` is the run's: a run killed after its first unit was
    renamed into place but before ``current`` was made, or a run whose link was lost.
    """
    link = out / POINTER
    if link.is_symlink():
        if (out / os.readlink(link)).is_dir():
            return out / os.readlink(link), False
        raise _broken_pointer(out, f"{link} points at {os.readlink(link)}, which is not a folder")
    if link.is_dir():
        raise _broken_pointer(out, f"{link} is a folder, not a link to a checkpoint unit: the run was copied "
                                   "with links followed (cp -rL, rsync -L)", copied=True)
    if os.path.lexists(link):
        raise _broken_pointer(out, f"{link} is a file, not a link to a checkpoint unit")
    units = _complete_units(out)
    return (units[-1], True) if units else (None, False)


def _broken_pointer(out: Path, what: str, copied: bool = False) -> CheckpointError:
    link, units = out / POINTER, _complete_units(out)
    fixes = ["copy the run again keeping links (cp -a, rsync -a)"] if copied else []
    if units:
        remove = f"rm -r {link} && " if copied else ""
        newest = f"{CHECKPOINTS}/{units[-1].name}"
        fixes.append(f"make it the link to the newest unit ({remove}ln -sfn {newest} {link})")
    else:
        fixes.append(f"start a new run with another --out ({out / CHECKPOINTS} holds no complete unit)")
    return CheckpointError(f"--resume: {what}; {', or '.join(fixes)}")


def _legacy_files(out: Path) -> list[Path]:
    """Checkpoint files of the layout before units (regular files at the top of the run folder)."""
    return [out / f"{part}.safetensors" for part in UNIT_PARTS
            if (out / f"{part}.safetensors").is_file() and not (out / f"{part}.safetensors").is_symlink()]


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a training run: a ``current`` of any kind, a complete unit, or the old layout."""
    return os.path.lexists(out / POINTER) or bool(_complete_units(out)) or bool(_legacy_files(out))


def foreign_entries(out: Path) -> list[str]:
    """What a new run finds in ``out/checkpoints`` besides the temporary units of a killed run of its own
    (``[CHECKPOINTS]`` where that is not a folder)."""
    folder = out / CHECKPOINTS
    if not os.path.lexists(folder):
        return []
    if not folder.is_dir():
        return [CHECKPOINTS]
    return sorted(entry.name for entry in folder.iterdir() if not _is_temp_unit(entry))


def _size_text(size: int) -> str:
    """``size`` bytes in bytes, KB, MB or GB (powers of 1000)."""
    if size < 1000:
        return f"{size} bytes"
    for unit in ("KB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


def write_unit(out: Path, step: int, parts: dict[str, dict[str, torch.Tensor]], config: dict) -> Path:
    """Write the unit for ``step`` (one state dict per name in UNIT_PARTS) and make it current."""
    folder = out / CHECKPOINTS
    final = folder / unit_name(step)
    if final == current_unit(out):
        raise CheckpointError(f"{final}: step {step} is already the run's checkpoint")
    tmp = folder / f".{unit_name(step)}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir(parents=True)
        hashes = {}
        for part in UNIT_PARTS:
            path = save_checkpoint(tmp / f"{part}.safetensors", parts[part], config)
            hashes[path.name] = sha256_file(path)
            hashes[config_path_for(path).name] = sha256_file(config_path_for(path))
        atomic_write_text(tmp / "unit.json", json.dumps({"step": step, "sha256": hashes}, indent=2) + "\n")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            size = sum(t.numel() * t.element_size() for state in parts.values() for t in state.values())
            raise PndmError(
                f"no space left on device: {folder} (saving needs room for two checkpoints of this run, "
                f"about {_size_text(size)} each: the new one is written before the previous one is "
                "removed); free space or choose another --out"
            ) from exc
        raise
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():  # a complete unit a killed run renamed but never made current
        shutil.rmtree(final)
    fault_point("train.rename", final)
    os.replace(tmp, final)
    fault_point("train.pointer", final)
    _replace_symlink(out / POINTER, f"{CHECKPOINTS}/{final.name}")
    fault_point("train.publish", final)
    _publish(out)
    clean(out)
    return final


def _publish(out: Path) -> None:
    """Make each published path (``ema.safetensors``, ...) the link through ``current``."""
    for name in PUBLISHED:
        target = f"{POINTER}/{name}"
        link = out / name
        if not (link.is_symlink() and os.readlink(link) == target):
            _replace_symlink(link, target)


def clean(out: Path) -> None:
    """Remove pndm's own leftovers and restore what a killed save left unpublished; nothing else.

    Removed: the temporary links and unit folders of a killed save (``.current.tmp-<pid>``,
    ``checkpoints/.step_<k>.tmp-<pid>``, ...) and, only while ``current`` names a complete unit in
    ``checkpoints/``, every other ``step_<k>`` unit and the files of the layout before units; the
    published links are then restored where missing. Other entries of ``checkpoints/`` (a user's
    copy such as ``checkpoints/best``) stay. Call it holding the run folder's lock, once the run is
    accepted (a refused command changes nothing) and after each save.
    """
    current = _valid_current(out)
    for name in (POINTER, *PUBLISHED):  # symlinks a killed run made but never renamed into place
        stale_name = re.compile(rf"\.{re.escape(name)}\.tmp-\d+")
        for stale in out.glob(f".{name}.tmp-*"):
            if stale.is_symlink() and stale_name.fullmatch(stale.name):
                stale.unlink()
    if current is not None:
        for path in _legacy_files(out) + [out / "train_state.json"]:
            if path.is_file() and not path.is_symlink():
                path.unlink()
        _publish(out)  # a kill between ``current`` and the links of the first unit left them missing
    folder = out / CHECKPOINTS
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        superseded = current is not None and entry.name != current.name and _is_unit(entry)
        if superseded or _is_temp_unit(entry):
            fault_point("train.prune", entry)
            shutil.rmtree(entry)


def remove_if_empty(out: Path) -> None:
    """Remove ``out/checkpoints`` and then ``out`` where they are empty (a new run that saved nothing)."""
    for folder in (out / CHECKPOINTS, out):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            folder.rmdir()
        except OSError:  # not empty
            return


def saved_settings(out: Path) -> dict[str, Any]:
    """The training settings recorded with the run's checkpoint (read through its unit, not the published
    links, which a killed first save may have left missing); {} where none can be read
    (:func:`read_unit` then says what is wrong)."""
    try:
        unit, _ = run_unit(out)
        # the unit's own file, or the top-level file of a run from before units
        weights = (unit if unit is not None else out) / "model.safetensors"
        config = read_checkpoint_config(weights) if weights.is_file() else None
    except (CheckpointError, OSError):
        return {}
    training = (config or {}).get("training", {})
    return training if isinstance(training, dict) else {}


def _inconsistent(where: Path, why: str, init_from: Path | None = None) -> CheckpointError:
    usable = init_from is not None and init_from.is_file()
    keep = f" (--init-from {init_from} starts it from these weights)" if usable else ""
    return CheckpointError(
        f"--resume: the checkpoint in {where} is inconsistent ({why}); it cannot be resumed exactly, "
        f"start a new run with another --out{keep}"
    )


def _read_manifest(unit: Path) -> tuple[int, dict[str, str]]:
    """(step, {file: sha256}) from a unit's unit.json; an unreadable or malformed one is refused like a
    missing one (the hashes it held cannot be rebuilt)."""
    path, weights = unit / "unit.json", unit / "model.safetensors"
    if not path.is_file():
        raise _inconsistent(unit, f"{POINTER} names a folder without unit.json", weights)
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _inconsistent(unit, f"its unit.json cannot be read: {exc}", weights) from None
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    step = manifest.get("step") if isinstance(manifest, dict) else None
    if not (isinstance(hashes, dict) and all(isinstance(v, str) for v in hashes.values())
            and isinstance(step, int) and not isinstance(step, bool)):
        raise _inconsistent(unit, "its unit.json does not hold the step and the files' sha256", weights)
    return step, hashes


def resumable_unit(out: Path) -> Path | None:
    """The unit ``--resume`` reads (:func:`run_unit`), None for a run from before units; a folder with
    neither raises :class:`CheckpointError`. Reads no tensors: a cheap check before the data are read."""
    unit, _ = run_unit(out)
    if unit is None and not _legacy_files(out):
        raise CheckpointError(
            f"--resume: {out} holds no checkpoint yet; start without --resume (or point --out at a run)"
        )
    return unit


def read_unit(out: Path) -> tuple[int, Unit]:
    """(step, {part: (state_dict, config)}) of the run's checkpoint (:func:`run_unit`), checked to be
    one unit."""
    unit = resumable_unit(out)
    if unit is None:
        return _read_legacy(out)
    step, hashes = _read_manifest(unit)
    for name, digest in hashes.items():
        path = unit / name
        if not path.is_file():
            raise _inconsistent(unit, f"{name} is missing")
        if sha256_file(path) != digest:
            raise _inconsistent(unit, f"{name} changed after it was written")
    missing = [p for p in UNIT_PARTS if f"{p}.safetensors" not in hashes]
    if missing:
        raise _inconsistent(unit, f"unit.json lists no {missing[0]}.safetensors")
    parts = {part: load_checkpoint(unit / f"{part}.safetensors") for part in UNIT_PARTS}
    return _checked_step(unit, parts, step), parts


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
