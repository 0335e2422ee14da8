"""Faults and bad input an audit found reported late, misworded or as a traceback: each is now one line
that names the fix, given before any work, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal

import pytest
import torch
from click.testing import CliRunner

from pndm import fileio
from pndm.calibration import CalibrationSet, save_pairs
from pndm.cli import export_cli
from pndm.errors import PndmError
from pndm.export.build import ExportOptions, build_engines, check_options, check_out_dir
from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig
from pndm.train.cli import train


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes fail with EFBIG, as writes onto a full disk fail with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_calibration_write_is_a_file_error_naming_the_file(tmp_path):
    """safetensors reported a full disk as its own SafetensorError, which the CLI showed as a traceback."""
    pairs = CalibrationSet(torch.zeros(4, 3, 32, 32), torch.zeros(4), torch.zeros(4, 3, 32, 32))
    path = tmp_path / "calibration.safetensors"
    with file_size_limit(4096), pytest.raises(OSError) as caught:
        save_pairs(path, pairs)
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []


def test_an_out_on_a_read_only_file_system_says_so(tmp_path, monkeypatch):
    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(os, "statvfs", lambda path: ReadOnly())
    with pytest.raises(PndmError, match=r"not writable \(read-only file system\); choose another out=DIR"):
        check_out_dir(tmp_path / "engines")


def test_an_export_into_a_mount_point_is_refused_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "volume"
    out.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(out))
    with pytest.raises(PndmError, match=f"--out {out} is a mount point.*e.g. --out {out}/out"):
        check_options(ExportOptions(out=out, trt="off"))


def test_a_same_filesystem_bind_mount_is_a_mount_point(tmp_path, monkeypatch):
    """os.path.ismount misses a bind mount from the same file system; /proc/self/mountinfo lists it (its
    5th field, spaces octal-escaped)."""
    out = tmp_path / "my volume"
    out.mkdir()
    mountinfo = tmp_path / "mountinfo"
    escaped = str(out).replace(" ", "\\040")
    mountinfo.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n731 22 8:1 /host/data {escaped} rw - ext4 "
                         "/dev/sda1 rw\n")
    monkeypatch.setattr(fileio, "MOUNTINFO", mountinfo)
    assert not os.path.ismount(out) and fileio.is_mount_point(out)
    assert not fileio.is_mount_point(tmp_path)
    with pytest.raises(PndmError, match="is a mount point"):
        check_options(ExportOptions(out=out, trt="off"))


def test_an_out_that_is_a_file_names_the_option_and_the_fix(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(PndmError, match=r"is a file, not a directory; choose a directory as --out DIR"):
        export_cli.main(["build", "--out", str(afile), "--trt", "off"], standalone_mode=False)
    with pytest.raises(PndmError, match=r"--out .*afile is a file; choose a run folder .* as --out"):
        train.main(["--data", "mnist", "--out", str(afile)], standalone_mode=False)


def test_a_bad_calibration_method_fails_with_the_other_options():
    with pytest.raises(PndmError, match="unknown calibration method 'bogus'; choose one of ddim"):
        check_options(ExportOptions(out="engines", trt="off", calibration_method="bogus"))


def test_an_unknown_keep_float_layer_fails_before_any_work(tmp_path):
    """Checked against the model's layers before calibration and the ONNX export (which took 20 s)."""
    from pndm.models import load, save_checkpoint

    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8)
    path = save_checkpoint(tmp_path / "tiny.safetensors", DDPMUNet(config).state_dict(),
                           {"architecture": "ddpm", "model": config.to_dict(),
                            "diffusion": {"schedule": "linear", "T": 1000}})
    model, spec = load(str(path))
    out = tmp_path / "engines"
    logged: list[str] = []
    with pytest.raises(PndmError, match="--keep-float 'nosuchlayer' is no layer of this model.*conv_in"):
        build_engines(model, spec, ExportOptions(out=out, precision="int8", trt="off",
                                                 keep_float=("conv_in", "node_bmm", "nosuchlayer")),
                      log=logged.append)
    assert logged == [] and not out.exists()


@pytest.mark.parametrize(("command", "args", "options"), [
    (export_cli, ["build", "--help"], ("--keep-float", "--checkpoint")),
    (train, ["--help"], ("--init-from", "--t-focus")),
], ids=["pndm-export-build", "pndm-train"])
def test_help_states_the_none_defaults(command, args, options):
    text = " ".join(CliRunner().invoke(command, args).output.split())
    for option in options:
        assert "default: none" in text.split(f"{option} TEXT ", 1)[1].split(" --", 1)[0].lower(), option
