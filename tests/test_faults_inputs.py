"""Bad inputs and faults of issue 10's class 4: each one is one line on stderr and exit code 2, no traceback.

The table runs every case through the console entry points' error handling
(:func:`pndm.cli._run_guarded`), as a user at a terminal would see it.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
import torch

from pndm import faults
from pndm.cli import _run_guarded, export_cli, run_cli
from pndm.models import build_model, save_checkpoint
from pndm.train.cli import train
from pndm.train.presets import TRAIN_PRESETS

TINY = TRAIN_PRESETS["tiny28"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad files of the table (and a small training set)."""
    d = tmp_path_factory.mktemp("bad")
    (d / "opcode.ckpt").write_bytes(b"\x80garbage")  # 0x80 is pickle's PROTO opcode
    (d / "truncated.pt").write_bytes(b"\x80\x04\x95\x10\x00\x00")
    state = build_model("ddpm", TINY).state_dict()
    base = {"architecture": "ddpm", "model": TINY}
    for name, diffusion in [
        ("t0", {"schedule": "linear", "T": 0}),
        ("t25", {"schedule": "linear", "T": 2.5}),
        ("tabc", {"schedule": "linear", "T": "abc"}),
        ("ttrue", {"schedule": "linear", "T": True}),
    ]:
        save_checkpoint(d / f"{name}.safetensors", state, {**base, "diffusion": diffusion})
    save_checkpoint(d / "chabc.safetensors", state, {**base, "model": {**TINY, "ch": "abc"}})
    save_checkpoint(d / "dropout.safetensors", state, {**base, "model": {**TINY, "dropout": "x"}})
    save_checkpoint(d / "intweights.safetensors", {k: v.to(torch.int64) for k, v in state.items()}, base)
    (d / "arch_abc.json").write_text(json.dumps({**TINY, "ch": "abc"}))
    (d / "arch_float.yaml").write_text("ch: 32.5\nout_ch: 1\nin_channels: 1\nresolution: 28\n")
    (d / "arch_list.yaml").write_text("- 1\n- 2\n")
    np.savez(d / "data.npz", images=np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8))
    foreign = d / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    return d


def _sample(f, *extra):
    return ["sample", "--engine", "default", "--method", "ddim", "--steps", "4", "-n", "1",
            "--device", "cpu", "--no-progress", "--out", str(f / "out"), *extra]


def _train(f, *extra):
    return ["--data", str(f / "data.npz"), "--arch", "tiny28", "--out", str(f / "run"), "--steps", "1",
            "--batch", "2", *extra]


def _engine(name):
    return lambda f: _sample(f, "--engine", str(f / name))


ENOSPC = "no space left on device: .*; free space or choose another --out"
EROFS = "read-only file system: .*; choose a writable --out"
OOM = r"out of memory \(.*\); use a smaller --batch"


def case(name, command, make_args, expected, fault=None):
    """One row: the command, its arguments (from the files folder), the message (regex), a fault to inject."""
    return pytest.param(command, make_args, expected, fault, id=name)


CASES = [
    # corrupt files whose first byte looks like a pickle opcode
    case("pickle-opcode", run_cli, _engine("opcode.ckpt"), "opcode.ckpt: not a readable PyTorch checkpoint"),
    case(
        "pickle-truncated",
        run_cli,
        _engine("truncated.pt"),
        "truncated.pt: not a readable PyTorch checkpoint",
    ),
    # config values: non-numeric, silently replaced before (T: 0 -> 1000, T: 2.5 -> 2), integer weights
    case("config-T-0", run_cli, _engine("t0.safetensors"), "T must be an integer >= 2, got 0"),
    case("config-T-2.5", run_cli, _engine("t25.safetensors"), "T must be an integer >= 2, got 2.5"),
    case("config-T-abc", run_cli, _engine("tabc.safetensors"), "T must be an integer >= 2, got 'abc'"),
    case("config-T-true", run_cli, _engine("ttrue.safetensors"), "T must be an integer >= 2, got True"),
    case("config-ch-abc", run_cli, _engine("chabc.safetensors"), "ch must be a positive integer, got 'abc'"),
    case(
        "config-dropout", run_cli, _engine("dropout.safetensors"), "dropout must be a finite number, got 'x'"
    ),
    case(
        "integer-weights",
        run_cli,
        _engine("intweights.safetensors"),
        "holds torch.int64 values .* floating-point",
    ),
    case(
        "train-arch-abc",
        train,
        lambda f: _train(f, "--arch", str(f / "arch_abc.json")),
        "ch must be a positive integer, got 'abc'",
    ),
    case(
        "train-arch-float",
        train,
        lambda f: _train(f, "--arch", str(f / "arch_float.yaml")),
        "ch must be a positive integer, got 32.5",
    ),
    case(
        "train-arch-list",
        train,
        lambda f: _train(f, "--arch", str(f / "arch_list.yaml")),
        "a config file must hold a mapping",
    ),
    # --device values that are no device
    case("sample-device", run_cli, lambda f: _sample(f, "--device", "foo"), "'foo' is not a device"),
    case(
        "sample-device-index", run_cli, lambda f: _sample(f, "--device", "cuda:x"), "'cuda:x' is not a device"
    ),
    case(
        "check-device",
        run_cli,
        lambda f: ["check", "--engine", "default", "--device", "gpu"],
        "'gpu' is not a device",
    ),
    case("train-device", train, lambda f: _train(f, "--device", "cpu:0:1"), "'cpu:0:1' is not a device"),
    case("train-device-auto", train, lambda f: _train(f, "--device", "auto"), "'auto' is not a device"),
    # out of memory
    case("sample-oom", run_cli, lambda f: _sample(f), OOM, "oom-sample"),
    case("train-oom", train, lambda f: _train(f), OOM, "oom-train"),
    # disk full and read-only file systems (during sample and train)
    case("sample-enospc", run_cli, lambda f: _sample(f), ENOSPC, "write@2:enospc"),
    case(
        "train-enospc", train, lambda f: _train(f, "--out", str(f / "run-enospc")), ENOSPC, "write@1:enospc"
    ),
    case("sample-erofs", run_cli, lambda f: _sample(f), EROFS, "write:erofs"),
    case("train-erofs", train, lambda f: _train(f, "--out", str(f / "run-erofs")), EROFS, "write@3:erofs"),
    # training options that were accepted and failed later (or reported a file never written)
    case(
        "train-checkpoint-every-0",
        train,
        lambda f: _train(f, "--checkpoint-every", "0"),
        "'--checkpoint-every': 0 is not in the range x>=1",
    ),
    case(
        "train-steps-0", train, lambda f: _train(f, "--steps", "0"), "'--steps': 0 is not in the range x>=1"
    ),
    case(
        "train-batch-0", train, lambda f: _train(f, "--batch", "0"), "'--batch': 0 is not in the range x>=1"
    ),
    case("train-lr-nan", train, lambda f: _train(f, "--lr", "nan"), "'--lr': 'nan' is not a finite number"),
    case("train-lr-0", train, lambda f: _train(f, "--lr", "0"), "'--lr': 0.0 is not in the range x>0"),
    case("train-ema-2", train, lambda f: _train(f, "--ema", "2"), "'--ema': 2.0 is not in the range 0<=x<=1"),
    case(
        "train-timesteps-1",
        train,
        lambda f: _train(f, "--timesteps", "1"),
        "'--timesteps': 1 is not in the range",
    ),
    case("train-steps-abc", train, lambda f: _train(f, "--steps", "abc"), "'abc' is not a valid integer"),
    case(
        "train-allow-change",
        train,
        lambda f: _train(f, "--allow-change", "lr"),
        "--allow-change needs --resume",
    ),
    case(
        "train-resume-nothing",
        train,
        lambda f: _train(f, "--out", str(f / "empty"), "--resume"),
        "holds no checkpoint yet",
    ),
    # seeds beyond 64 bits
    case("sample-seed-2^64", run_cli, lambda f: _sample(f, "--seed", str(2**64)), "must fit in 64 bits"),
    case(
        "sample-seed-sum",
        run_cli,
        lambda f: _sample(f, "--seed", str(2**64 - 1), "-n", "2"),
        "must fit in 64 bits",
    ),
    case(
        "train-seed-2^64",
        train,
        lambda f: _train(f, "--seed", str(2**64)),
        "'--seed': 18446744073709551616 is not",
    ),
    case(
        "export-seed-2^64",
        export_cli,
        lambda f: ["build", "--out", str(f / "engine"), "--seed", str(2**64)],
        "'--seed': 18446744073709551616 is not",
    ),
    # other sample option values
    case(
        "sample-eta-nan",
        run_cli,
        lambda f: _sample(f, "--eta", "nan"),
        "'--eta': 'nan' is not a finite number",
    ),
    case("sample-num-0", run_cli, lambda f: _sample(f, "-n", "0"), "0 is not in the range x>=1"),
    case(
        "sample-foreign-out",
        run_cli,
        lambda f: _sample(f, "--out", str(f / "foreign")),
        r"holds files pndm-run does not write \(notes.txt\); choose an empty or new --out",
    ),
]


def _oom_sample(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _oom_train(self):
    raise MemoryError()


@pytest.mark.parametrize(("command", "make_args", "expected", "fault"), CASES)
def test_bad_input_is_one_line_and_exit_2(command, make_args, expected, fault, files, capsys, monkeypatch):
    monkeypatch.setattr(faults, "_hits", Counter())
    monkeypatch.delenv("PNDM_DEBUG", raising=False)
    if fault == "oom-sample":
        monkeypatch.setattr("pndm.runtime.sampling.sample_seeds", _oom_sample)
    elif fault == "oom-train":
        monkeypatch.setattr("pndm.train.loop.Trainer.train_step", _oom_train)
    elif fault:
        monkeypatch.setenv("PNDM_FAULT", fault)
    with pytest.raises(SystemExit) as exit_info:
        _run_guarded(command.main, make_args(files), command=command)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("sampling", "train"))]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(expected, lines[0]), lines[0]
    assert not (files / "out").exists()  # nothing half-written
