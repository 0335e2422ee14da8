"""Training checkpoints under faults: a kill at any rename leaves a run that resumes exactly or refuses.

Each fault runs ``pndm-train`` in a forked child (a subprocess without the import cost) that
SIGKILLs itself at a named point (``PNDM_FAULT``, :mod:`pndm.faults`); the test then resumes in
this process and compares the final weights with an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
from train_fixtures import ARCH, fresh_fault_counts, tiny_inputs  # noqa: F401  (fixtures)

from pndm.cli import train_cli
from pndm.errors import PndmError
from pndm.fileio import folder_lock
from pndm.models import load, load_checkpoint
from pndm.train.checkpoints import read_unit
from pndm.train.cli import train

# 4 steps, a checkpoint every 2: two units, each written as 7 files (3 parts x 2 + unit.json).
STEPS, EVERY, WRITES_PER_UNIT = 4, 2, 7



def _args(inputs, out, *extra):
    return ["--data", str(inputs / "data.npz"), "--arch", str(inputs / "arch.json"), "--out", str(out),
            "--steps", str(STEPS), "--batch", "2", "--warmup", "1", "--checkpoint-every", str(EVERY), *extra]


def _weights(out):
    return {name: load_checkpoint(out / f"{name}.safetensors")[0] for name in ("model", "ema")}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    train.main(_args(inputs, out), standalone_mode=False)
    return _weights(out)


def _forked(args, fault, console=False):
    """Run ``pndm-train args`` in a forked child with PNDM_FAULT=fault; its wait status. ``console``: through
    the console entry point (its error and signal handling) instead of the bare click command."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.environ["PNDM_FAULT"] = fault
            if console:
                sys.argv = ["pndm-train", *args]
                train_cli()
            else:
                train.main(args, standalone_mode=False)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 3
        os._exit(code)
    return os.waitpid(pid, 0)[1]


def _assert_equal(a, b):
    for part in a:
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


# Every rename of both units: file renames (write@k), the unit folder, the pointer, the published links
# (created by the first unit only) and the removal of the older unit.
W = WRITES_PER_UNIT
KILL_POINTS = (
    [f"write@{k}" for k in (1, 4, W, W + 1, W + 5, 2 * W)]
    + [f"{point}@{n}" for n in (1, 2) for point in ("train.rename", "train.pointer", "train.link.current",
                                                     "train.publish")]
    + ["train.link.ema.safetensors@1", "train.link.model.json@1", "train.prune@1"]
)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_at_every_rename_then_resume_is_exact_or_refused(point, inputs, reference, tmp_path):
    out = tmp_path / "run"
    status = _forked(_args(inputs, out), f"{point}:kill")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point} was never reached"
    units = ["step_0000004"]
    try:
        train.main(_args(inputs, out, "--resume"), standalone_mode=False)
    except PndmError as e:
        message = str(e)
        assert "\n" not in message
        if "no checkpoint yet" in message:  # killed before the first unit became current: start again
            train.main(_args(inputs, out), standalone_mode=False)
        else:  # killed after the last unit became current: nothing left to do
            assert "already at step 4" in message, message
            # A refused command changes nothing: the older unit whose removal was cut short stays (complete,
            # not half-written) until the next run that continues this one.
            left = {p.name for p in (out / "checkpoints").iterdir()}
            units = sorted({"step_0000002", "step_0000004"} & left)
    _assert_equal(_weights(out), reference)
    assert os.readlink(out / "current") == "checkpoints/step_0000004"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == units  # nothing half-written left
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not list(out.parent.glob(".*pndm-lock"))


def test_published_ema_switches_with_the_unit_and_loads(inputs, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    model, spec = load(str(out / "ema.safetensors"))
    assert spec.architecture == "ddpm" and json.loads((out / "ema.json").read_text())["training"]["step"] == 2
    assert (out / "ema.safetensors").resolve().parent.name == "step_0000002"


def test_a_unit_whose_files_changed_is_refused(inputs, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    other = tmp_path / "other"
    train.main(_args(inputs, other, "--steps", "2", "--seed", "1"), standalone_mode=False)
    unit = (out / "current").resolve()
    shutil.copy(other / "current" / "ema.safetensors", unit / "ema.safetensors")
    with pytest.raises(PndmError, match="inconsistent .*ema.safetensors changed"):
        read_unit(out)


def test_legacy_layout_with_files_from_two_steps_is_refused(inputs, tmp_path):
    """Runs written before units (three top-level files) resume only if all three are from one step."""
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("model", "ema", "train_state"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(out / "current" / f"{name}{suffix}", legacy / f"{name}{suffix}")
    step, _ = read_unit(legacy)
    assert step == 2
    config = json.loads((legacy / "ema.json").read_text())
    config["training"]["step"] = 1
    (legacy / "ema.json").write_text(json.dumps(config))
    with pytest.raises(PndmError, match="inconsistent .*ema at step 1"):
        read_unit(legacy)


def test_resume_of_a_legacy_run_moves_it_to_units(inputs, reference, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("model", "ema", "train_state"):
        for suffix in (".safetensors", ".json"):
            shutil.copy(out / "current" / f"{name}{suffix}", legacy / f"{name}{suffix}")
    train.main(_args(inputs, legacy, "--resume"), standalone_mode=False)
    _assert_equal(_weights(legacy), reference)
    assert not (legacy / "train_state.safetensors").exists() and (legacy / "ema.safetensors").is_symlink()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lr", "1e-3", "--lr differs .*saved 0.0002, now 0.001.*--allow-change lr"),
    ("--batch", "4", "--batch differs"),
    ("--schedule", "cosine", "--schedule differs"),
    ("--timesteps", "500", "--timesteps differs"),
    ("--seed", "3", "--seed differs"),
])
def test_resume_with_another_setting_is_refused_unless_allowed(option, value, message, inputs, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    with pytest.raises(PndmError, match=message):
        train.main(_args(inputs, out, "--resume", option, value), standalone_mode=False)
    train.main(_args(inputs, out, "--resume", option, value, "--allow-change", option[2:]),
               standalone_mode=False)
    assert read_unit(out)[1]["ema"][1]["training"]["step"] == STEPS


def test_resume_with_other_data_or_architecture_is_refused(inputs, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    other_data = tmp_path / "other.npz"
    np.savez(other_data, images=np.zeros((16, 8, 8), dtype=np.uint8))
    args = _args(inputs, out, "--resume")
    with pytest.raises(PndmError, match="--data differs .*training images differ"):
        train.main([*args, "--data", str(other_data)], standalone_mode=False)
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**ARCH, "ch": 64}))
    with pytest.raises(PndmError, match="--arch differs .*model config differs"):
        train.main([*args, "--arch", str(wider)], standalone_mode=False)


def test_a_new_run_into_a_run_folder_is_refused(inputs, tmp_path):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    before = (out / "ema.safetensors").read_bytes()
    with pytest.raises(PndmError, match="already holds a training run; continue it with --resume"):
        train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    assert (out / "ema.safetensors").read_bytes() == before


def test_enospc_while_saving_keeps_the_previous_unit(inputs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.main(_args(inputs, out, "--steps", "2"), standalone_mode=False)
    monkeypatch.setenv("PNDM_FAULT", "write@3:enospc")
    with pytest.raises(PndmError, match="no space left on device.*saving needs room for two checkpoints"):
        train.main(_args(inputs, out, "--resume"), standalone_mode=False)
    assert read_unit(out)[0] == 2
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000002"]
    monkeypatch.delenv("PNDM_FAULT")
    train.main(_args(inputs, out, "--resume"), standalone_mode=False)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000004"]


def test_a_second_run_into_a_busy_run_folder_is_refused(inputs, tmp_path):
    out = tmp_path / "run"
    with folder_lock(out):
        with pytest.raises(PndmError, match=f"another pndm process \\(pid {os.getpid()}\\) is writing there"):
            train.main(_args(inputs, out), standalone_mode=False)
    assert not out.exists()


@pytest.mark.parametrize(("signal_name", "console", "code"), [
    ("sigint", False, 3),  # KeyboardInterrupt, raised in the child
    ("sigterm", True, 128 + signal.SIGTERM),  # pndm-train turns SIGTERM into the same interrupt
])
def test_a_signal_while_saving_leaves_the_previous_unit_and_no_temporary_files(inputs, tmp_path, signal_name,
                                                                                console, code):
    out = tmp_path / "run"
    status = _forked(_args(inputs, out), f"write@{WRITES_PER_UNIT + 2}:{signal_name}", console)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == code
    assert read_unit(out)[0] == EVERY
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step_{EVERY:07d}"]
    assert not list(out.parent.glob(".*pndm-lock"))
