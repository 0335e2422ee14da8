"""Fault injection for pndm-export: kills, signals, a full disk, an interrupted swap and a concurrent export.

Each test starts from a complete fp32 export in DIR and asserts that afterwards DIR holds exactly
that previous state (every file and hash) or the complete new one; never a mix, never a staging
folder left behind by the next export. Faults come from ``PNDM_FAULT`` (:mod:`pndm.faults`).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pndm import faults, fileio
from pndm.cli import export_cli
from pndm.engine_format import read_manifest
from pndm.errors import PndmError
from pndm.export.batch import parse_batch
from pndm.export.build import ExportOptions, build_engines
from pndm.export.publish import clean_stale
from pndm.fileio import FolderBusyError, folder_lock, sha256_file

BIN = Path(sys.executable).parent
FAST = dict(batch=parse_batch("1:2:4"), trt="off", calibration_steps=3, calibration_count=1)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its hash."""
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(out: Path) -> list[str]:
    """Hidden pndm folders and locks beside or inside ``out``."""
    return sorted(p.name for p in [*out.parent.glob(f".{out.name}.*"), *out.glob(".pndm-*")])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from pndm.models import save_checkpoint
    from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig

    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_checkpoint(path, DDPMUNet(config).state_dict(),
                           {"architecture": "ddpm", "model": config.to_dict(),
                            "diffusion": {"schedule": "linear", "T": 1000}})


def export(checkpoint: Path, out: Path, precision: str):
    from pndm.models import load

    model, spec = load(str(checkpoint))
    return build_engines(model, spec, ExportOptions(out=out, precision=precision, **FAST), log=lambda s: None)


@pytest.fixture(scope="module")
def previous(tmp_path_factory, checkpoint) -> Path:
    """A complete fp32 export plus a file of the user's, copied per test."""
    out = tmp_path_factory.mktemp("previous") / "engines"
    export(checkpoint, out, "fp32")
    (out / "notes.txt").write_text("mine")
    return out


@pytest.fixture
def out(tmp_path, previous) -> Path:
    target = tmp_path / "engines"
    shutil.copytree(previous, target)
    return target


@pytest.fixture
def fault(monkeypatch):
    """Set PNDM_FAULT in this process, with fresh hit counts."""
    monkeypatch.setattr(faults, "_hits", Counter())
    return lambda spec: monkeypatch.setenv("PNDM_FAULT", spec)


def cli_export(checkpoint: Path, out: Path, precision: str, fault_spec: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PNDM_FAULT": fault_spec, "OMP_NUM_THREADS": "1"}
    args = [str(BIN / "pndm-export"), "build", "--checkpoint", str(checkpoint), "--out", str(out),
            "--precision", precision, "--batch", "1:2:4", "--trt", "off", "--calibration-steps", "3",
            "--calibration-count", "1"]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("point", ["write@3", "export.publish"], ids=["writing-fp16-onnx", "before-swap"])
def test_sigkill_keeps_the_previous_folder_and_the_next_export_cleans_up(checkpoint, out, point):
    before = snapshot(out)
    killed = cli_export(checkpoint, out, "fp16", f"{point}:kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert snapshot(out) == before  # the complete previous state
    assert any(".pndm-export-" in name for name in leftovers(out))  # what the kill left behind
    result = export(checkpoint, out, "fp16")
    assert leftovers(out) == []  # ... removed by the next export into DIR
    manifest = read_manifest(out)
    assert set(manifest.engines) == {"unet.onnx", "unet.fp16.onnx"}  # re-export keeps both precisions
    assert (out / "notes.txt").read_text() == "mine" and result.files[-1] == "manifest.json"
    for name, entry in manifest.engines.items():
        assert sha256_file(out / name) == entry.sha256


def test_sigterm_while_writing_keeps_the_previous_folder_and_leaves_nothing(checkpoint, out):
    """SIGTERM (timeout, systemd, Kubernetes) cleans up as Ctrl-C does, with the shell's exit code."""
    before = snapshot(out)
    stopped = cli_export(checkpoint, out, "fp16", "write@1:sigterm")  # the first file: calibration pairs
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-2000:]
    assert stopped.stderr.splitlines()[-1] == "Aborted!"
    assert snapshot(out) == before and leftovers(out) == []


def test_disk_full_while_writing_keeps_the_previous_folder(checkpoint, out, fault):
    before = snapshot(out)
    fault("write@2:enospc")  # the 2nd atomic write: unet.onnx
    with pytest.raises(OSError) as caught:
        export(checkpoint, out, "fp16")
    assert caught.value.errno == errno.ENOSPC
    assert snapshot(out) == before and leftovers(out) == []


def test_a_failed_export_into_new_nested_folders_leaves_none_of_them(checkpoint, tmp_path, fault):
    fault("write@2:enospc")
    with pytest.raises(OSError):
        export(checkpoint, tmp_path / "deep" / "a" / "engines", "fp32")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_before_the_swap_keeps_the_previous_folder(checkpoint, out, fault):
    before = snapshot(out)
    fault("export.publish:sigint")
    with pytest.raises(KeyboardInterrupt):
        export(checkpoint, out, "fp16")
    assert snapshot(out) == before and leftovers(out) == []


def test_error_between_the_two_renames_puts_the_previous_folder_back(checkpoint, out, fault, monkeypatch):
    """Where the kernel cannot swap folders in one step, DIR is renamed aside first."""
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    before = snapshot(out)
    fault("publish.between:enospc")
    with pytest.raises(OSError):
        export(checkpoint, out, "fp16")
    assert snapshot(out) == before and leftovers(out) == []


def test_kill_between_the_two_renames_is_undone_by_the_next_export(out):
    """A kill after DIR was renamed aside, before the staging folder took its place."""
    before = snapshot(out)
    aside = out.parent / f".{out.name}.pndm-old-424242"
    staging = out.parent / f".{out.name}.pndm-export-424242"
    os.replace(out, aside)
    staging.mkdir()
    clean_stale(out)  # what the next export does first, holding the lock
    assert snapshot(out) == before and leftovers(out) == []


def test_swapped_state_after_kill_keeps_the_new_folder(out, tmp_path):
    """A kill after the new folder is in place but before the old one was removed: the new one stays."""
    aside = out.parent / f".{out.name}.pndm-old-424242"
    shutil.copytree(out, aside)
    (out / "new.txt").write_text("new")
    clean_stale(out)
    assert (out / "new.txt").exists() and leftovers(out) == []


def test_concurrent_export_is_refused_with_the_owners_pid(checkpoint, out):
    before = snapshot(out)
    with folder_lock(out):
        with pytest.raises(FolderBusyError, match=rf"another pndm process \(pid {os.getpid()}\)"):
            export(checkpoint, out, "fp16")
        result = CliRunner().invoke(export_cli, ["build", "--checkpoint", str(checkpoint), "--out", str(out),
                                                 "--trt", "off"])
        assert result.exit_code == 2
        assert result.output.startswith("error: ") and result.output.count("\n") == 1
        assert f"pid {os.getpid()}" in result.output
    assert snapshot(out) == before


def test_a_dead_owners_lock_is_taken_over(checkpoint, out):
    lock = out.parent / f".{out.name}.pndm-lock"
    lock.write_text("999999999\n")  # a pid that holds no lock: its process died
    export(checkpoint, out, "fp16")
    assert set(read_manifest(out).engines) == {"unet.onnx", "unet.fp16.onnx"} and not lock.exists()


def test_staging_left_inside_dir_by_older_versions_is_removed(checkpoint, out):
    (out / ".pndm-export-abc123").mkdir()
    (out / ".pndm-export-abc123" / "unet.onnx").write_bytes(b"half")
    export(checkpoint, out, "fp32")
    assert leftovers(out) == []


def test_export_refuses_to_replace_the_current_directory(checkpoint, out, monkeypatch):
    monkeypatch.chdir(out)
    with pytest.raises(PndmError, match="holds the current directory"):
        export(checkpoint, Path("."), "fp32")


def test_another_models_export_removes_the_engines_it_drops(checkpoint, out, tmp_path):
    """Exporting model B into model A's folder leaves no engine of A that no manifest lists (a mix of two
    models); the user's own file stays, and so does an engine file changed since pndm wrote it."""
    import json

    from pndm.models import load_checkpoint, save_checkpoint

    export(checkpoint, out, "fp16")  # same model: unet.onnx re-exported, nothing dropped
    assert {"unet.onnx", "unet.fp16.onnx", "notes.txt"} <= set(snapshot(out))
    state, header = load_checkpoint(checkpoint)
    other = save_checkpoint(tmp_path / "other.safetensors", {k: v + 0.01 for k, v in state.items()}, header)
    result = export(other, out, "fp32")
    assert "unet.fp16.onnx" not in snapshot(out) and (out / "notes.txt").read_text() == "mine"
    assert list(json.loads((out / "manifest.json").read_text())["engines"]) == ["unet.onnx"]
    assert any(note.startswith(f"unet.fp16.onnx: removed from {out}") for note in result.notes)
    # an engine file changed since pndm wrote it is not pndm's to delete: dropped from the manifest, kept
    export(other, out, "fp16")
    with open(out / "unet.fp16.onnx", "ab") as edited:
        edited.write(b"\0")
    result = export(checkpoint, out, "fp32")
    assert (out / "unet.fp16.onnx").read_bytes().endswith(b"\0")
    assert list(json.loads((out / "manifest.json").read_text())["engines"]) == ["unet.onnx"]
    assert any(note.startswith("unet.fp16.onnx: dropped from the manifest") for note in result.notes)
