"""What ``pndm-train`` may delete in a run folder: only its own leftovers, only once the run is accepted.

A refused command leaves the folder byte for byte as it was (a ``current`` that is missing, dangling,
a file or a copied folder; a new run into a ``checkpoints/`` that holds someone else's files); pruning
at each save removes only pndm's ``step_<k>`` units; a kill between ``current`` and the first published
links is repaired by the next run, which also takes the saved settings; the messages for a bad
``--init-from``, an unreadable ``unit.json`` and a full disk say what is wrong and what to do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner
from train_fixtures import fresh_fault_counts, tiny_inputs  # noqa: F401  (fixtures)

from pndm.cli import LazyGroup
from pndm.models import load
from pndm.train.checkpoints import clean, read_unit, saved_settings
from pndm.train.cli import train

group = LazyGroup(name="pndm-train", lazy_commands={"train": "pndm.train.cli:train"})



def _args(inputs, out, *extra, steps=2):
    return ["--data", str(inputs / "data.npz"), "--arch", str(inputs / "arch.json"), "--out", str(out),
            "--steps", str(steps), "--batch", "2", "--warmup", "1", "--checkpoint-every", "2",
            "--no-progress", *extra]


def _train(inputs, out, *extra, steps=2):
    train.main(_args(inputs, out, *extra, steps=steps), standalone_mode=False)


def _invoke(inputs, out, *extra, steps=2):
    return CliRunner().invoke(group, ["train", *_args(inputs, out, *extra, steps=steps)])


def _snapshot(folder):
    """Every entry under ``folder``: links by target, files by content hash, folders by name."""
    entries = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                entries[key] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                entries[key] = ("dir",)
            else:
                with open(path, "rb") as f:
                    entries[key] = ("file", hashlib.sha256(f.read()).hexdigest())
    return entries


@pytest.fixture
def run(inputs, tmp_path):
    """A finished 2-step run with one unit (step_0000002)."""
    out = tmp_path / "run"
    _train(inputs, out)
    return out


# ---- F1a: a new run never deletes what it did not write ---------------------------------------------
@pytest.mark.parametrize("foreign", ["folder", "file"])
def test_a_new_run_into_a_checkpoints_folder_with_other_files_is_refused_and_deletes_nothing(
        foreign, inputs, tmp_path):
    out = tmp_path / "run"
    if foreign == "folder":
        (out / "checkpoints" / "my_old_run").mkdir(parents=True)
        (out / "checkpoints" / "my_old_run" / "weights.ckpt").write_text("precious")
        name = "my_old_run"
    else:
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "readme.txt").write_text("notes")
        name = "readme.txt"
    (out / "checkpoints" / ".step_0000002.tmp-999").mkdir()  # a killed run's temporary unit
    before = _snapshot(out)
    assert_one_line_error(_invoke(inputs, out), f"checkpoints already holds {name}",
                          "move them elsewhere or choose another --out")
    assert _snapshot(out) == before


@pytest.mark.parametrize("name", ["model.json", "ema.json", "train_state.json", "ema.safetensors"])
def test_a_new_run_over_files_at_the_names_it_publishes_is_refused(name, inputs, tmp_path):
    """(A regular ema.safetensors is the layout of older runs: refused as "already holds a training run".)"""
    out = tmp_path / "run"
    out.mkdir()
    if name == "ema.safetensors":
        (out / "mine.safetensors").write_text("mine")
        (out / name).symlink_to("mine.safetensors")
    else:
        (out / name).write_text("mine")
    before = _snapshot(out)
    assert_one_line_error(_invoke(inputs, out), f"holds {name}, names pndm-train writes itself",
                          "move them elsewhere or choose another --out")
    assert _snapshot(out) == before


# ---- F1b/F1c: a refused --resume deletes nothing, and says what is wrong with `current` ---------------
@pytest.mark.parametrize(("how", "fragments"), [
    ("dangling", ["current points at checkpoints/step_0000099, which is not a folder",
                  "ln -sfn checkpoints/step_0000002"]),
    ("file", ["current is a file, not a link to a checkpoint unit", "ln -sfn checkpoints/step_0000002"]),
])
def test_resume_with_a_broken_current_is_refused_and_deletes_nothing(how, fragments, run, inputs):
    (run / "current").unlink()
    if how == "dangling":
        os.symlink("checkpoints/step_0000099", run / "current")
    else:
        (run / "current").write_text("checkpoints/step_0000002\n")
    (run / "checkpoints" / ".step_0000004.tmp-999").mkdir()  # even pndm's own leftovers stay
    before = _snapshot(run)
    assert_one_line_error(_invoke(inputs, run, "--resume", steps=4), *fragments)
    assert _snapshot(run) == before
    # a new run is refused too: the folder holds a run
    assert_one_line_error(_invoke(inputs, run), "already holds a training run")
    assert _snapshot(run) == before


def test_resume_of_a_copy_made_with_links_followed_is_refused_with_how_to_fix_it(run, inputs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, symlinks=False)  # cp -rL: current/ a folder, ema.safetensors a file
    assert (copy / "current").is_dir() and not (copy / "current").is_symlink()
    before = _snapshot(copy)
    assert_one_line_error(_invoke(inputs, copy, "--resume", steps=4),
                          "current is a folder, not a link to a checkpoint unit",
                          "copied with links followed", "cp -a",
                          f"rm -r {copy}/current && ln -sfn checkpoints/step_0000002 {copy}/current")
    assert _snapshot(copy) == before
    shutil.rmtree(copy / "current")  # the fix the message gives
    os.symlink("checkpoints/step_0000002", copy / "current")
    _train(inputs, copy, "--resume", steps=4)
    assert read_unit(copy)[0] == 4 and (copy / "ema.safetensors").is_symlink()
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["step_0000004"]


def test_resume_without_current_takes_up_the_newest_complete_unit(run, inputs, tmp_path):
    """A lost `current` (a copy tool, a kill before the first link): the unit is resumed, not deleted."""
    (run / "current").unlink()
    result = _invoke(inputs, run, "--resume", steps=4)
    assert result.exit_code == 0, result.output
    assert "has no 'current' link" in result.stderr and "resuming from" in result.stderr
    assert read_unit(run)[0] == 4
    straight = tmp_path / "straight"
    _train(inputs, straight, steps=4)
    for name in ("model", "ema"):
        a, b = load(str(run / f"{name}.safetensors"))[0], load(str(straight / f"{name}.safetensors"))[0]
        for (_, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y)


def test_a_refused_resume_leaves_even_pndms_own_leftovers(run, inputs):
    (run / "checkpoints" / ".step_0000004.tmp-999").mkdir()
    os.symlink("checkpoints/step_0000004", run / ".current.tmp-999")
    before = _snapshot(run)
    assert_one_line_error(_invoke(inputs, run, "--resume", "--lr", "1e-3", steps=4), "--lr differs")
    assert _snapshot(run) == before
    _train(inputs, run, "--resume", steps=4)  # accepted: now they go
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000004"]
    assert not (run / ".current.tmp-999").is_symlink()


# ---- pruning at each save ------------------------------------------------------------------------------
def test_saving_prunes_older_units_but_not_a_users_copy(run, inputs):
    shutil.copytree(run / "checkpoints" / "step_0000002", run / "checkpoints" / "best")
    (run / "checkpoints" / "notes.txt").write_text("keep me")
    best = _snapshot(run / "checkpoints" / "best")
    _train(inputs, run, "--resume", steps=4)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "notes.txt", "step_0000004"]
    assert _snapshot(run / "checkpoints" / "best") == best


# ---- F4: a kill between `current` and the first published links -----------------------------------------
def _killed_run(args, fault) -> int:
    """``pndm-train args`` in a new process with the fault point ``fault``; its return code. (A forked
    child of this process can hang in a lock another thread held at the fork, e.g. an OpenMP pool's.)"""
    command = [str(Path(sys.executable).parent / "pndm-train"), *args]
    return subprocess.run(command, env={**os.environ, "PNDM_FAULT": fault}, capture_output=True,
                          timeout=600).returncode


def test_a_kill_before_the_first_links_keeps_the_settings_and_the_next_run_restores_them(inputs, tmp_path):
    out = tmp_path / "run"
    returncode = _killed_run(_args(inputs, out, "--lr", "1e-4"), "train.link.ema.safetensors:kill")
    assert returncode == -signal.SIGKILL
    assert (out / "current").is_symlink() and not (out / "ema.safetensors").exists()
    assert saved_settings(out)["lr"] == 1e-4  # read through the unit, not the missing published link
    clean(out)  # what an accepted run does first
    for name in ("ema.safetensors", "ema.json", "model.safetensors", "model.json"):
        assert os.readlink(out / name) == f"current/{name}"
    assert not list(out.glob(".*.tmp-*"))
    load(str(out / "ema.safetensors"))
    _train(inputs, out, "--resume", steps=4)  # without --lr: the saved 1e-4, not a refused "change"
    assert saved_settings(out)["lr"] == 1e-4 and read_unit(out)[0] == 4


# ---- F6: messages ------------------------------------------------------------------------------------
def test_init_from_a_torch_file_or_a_folder_says_what_it_takes(inputs, tmp_path):
    weights = {"w": torch.zeros(2)}
    torch.save(weights, tmp_path / "default.pt")
    torch.save(weights, tmp_path / "renamed.safetensors")
    (tmp_path / "dir.safetensors").mkdir()
    for source, what in (("default.pt", "is a torch file, not a pndm checkpoint"),
                         ("renamed.safetensors", "is a torch file, not a pndm checkpoint"),
                         ("dir.safetensors", "is a folder")):
        out = tmp_path / f"out-{source}"
        assert_one_line_error(_invoke(inputs, out, "--init-from", str(tmp_path / source)), what,
                              "--init-from takes a pndm .safetensors checkpoint")
        assert not out.exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "remove"])
def test_an_unreadable_or_missing_unit_json_gives_one_consistent_advice(damage, run, inputs):
    manifest = run / "checkpoints" / "step_0000002" / "unit.json"
    if damage == "remove":
        manifest.unlink()
    else:
        manifest.write_text(manifest.read_text()[:20] if damage == "truncate" else "")
    before = _snapshot(run)
    result = _invoke(inputs, run, "--resume", steps=4)
    assert_one_line_error(result, "cannot be resumed exactly, start a new run with another --out",
                          f"--init-from {run}/checkpoints/step_0000002/model.safetensors")
    assert "remove the file" not in result.output
    assert _snapshot(run) == before


def test_a_full_disk_at_the_first_save_leaves_nothing_new_and_says_two_checkpoints_are_needed(
        inputs, tmp_path, monkeypatch):
    out = tmp_path / "new" / "run"
    monkeypatch.setenv("PNDM_FAULT", "write@1:enospc")
    result = _invoke(inputs, out)
    assert_one_line_error(result, f"no space left on device: {out}/checkpoints",
                          "saving needs room for two checkpoints of this run, about ", " MB each",
                          "free space or choose another --out")
    assert not out.exists()
