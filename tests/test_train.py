"""pndm-train: a short run on a tiny config, exact resume, the checkpoint loads, bad data is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pndm.errors import PndmError
from pndm.models import load_checkpoint
from pndm.train.data import fit_resolution, load_images
from pndm.train.loop import TrainConfig, Trainer


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """64 random 28x28 'digits' as an .npz (the trainer's own data path, no download)."""
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    images = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28), dtype=np.uint8)
    np.savez(path, images=images)
    return path


def _config(data, out, steps):
    return TrainConfig(data=str(data), arch="tiny28", out=str(out), steps=steps, batch=8,
                       checkpoint_every=1000, warmup=5, ema=0.999)


def test_resume_continues_to_the_same_weights(digits_npz, tmp_path):
    straight = Trainer(_config(digits_npz, tmp_path / "straight", 30))
    straight.run()

    first = Trainer(_config(digits_npz, tmp_path / "split", 12))
    first.run()
    second = Trainer(_config(digits_npz, tmp_path / "split", 30))
    second.resume()
    assert second.step == 12
    second.run()

    a, _ = load_checkpoint(tmp_path / "straight" / "ema.safetensors")
    b, config = load_checkpoint(tmp_path / "split" / "ema.safetensors")
    assert config["training"]["step"] == 30
    for key in a:
        assert torch.equal(a[key], b[key]), key
    raw_a, _ = load_checkpoint(tmp_path / "straight" / "model.safetensors")
    raw_b, _ = load_checkpoint(tmp_path / "split" / "model.safetensors")
    assert all(torch.equal(raw_a[k], raw_b[k]) for k in raw_a)


def test_training_reduces_the_loss(digits_npz, tmp_path):
    trainer = Trainer(_config(digits_npz, tmp_path / "run", 30))
    losses = [trainer.train_step() for _ in range(30)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_cli_trains_and_checkpoint_loads(digits_npz, tmp_path):
    from pndm.cli import train_cli  # noqa: F401  (entry point importable)
    from pndm.train.cli import train

    out = tmp_path / "cli"
    result = CliRunner().invoke(train, ["--data", str(digits_npz), "--arch", "tiny28", "--out", str(out),
                                        "--steps", "3", "--batch", "4"])
    assert result.exit_code == 0, result.output
    state, config = load_checkpoint(out / "ema.safetensors")
    assert config["architecture"] == "ddpm" and config["model"]["resolution"] == 28


def test_padding_and_channel_fitting():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    padded = fit_resolution(images, 32, 1)
    assert padded.shape == (2, 1, 32, 32) and padded[0, 0, 0, 0] == 0 and padded[0, 0, 2, 2] == 255
    assert fit_resolution(images, 32, 3).shape == (2, 3, 32, 32)
    with pytest.raises(PndmError, match="--resize"):
        fit_resolution(images, 16, 1)
    assert fit_resolution(images, 16, 1, resize=True).shape == (2, 1, 16, 16)


def test_bad_data_is_refused(tmp_path):
    with pytest.raises(PndmError, match="no images"):
        load_images(str(tmp_path))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(PndmError, match="cannot read image"):
        load_images(str(tmp_path))
    bad_idx = tmp_path / "train-images-idx3-ubyte"
    bad_idx.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 8)
    with pytest.raises(PndmError, match="IDX"):
        load_images(str(bad_idx))
    with pytest.raises(PndmError, match="named source"):
        load_images("no-such-dataset")


@pytest.mark.slow
def test_torchrun_two_cpu_processes(digits_npz, tmp_path):
    """Data-parallel training with 2 gloo processes writes a checkpoint that loads; resume keeps both RNGs."""
    import os
    import subprocess
    import sys

    from pndm.models.architectures import build_model

    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    args = ["-m", "pndm.train", "--data", str(digits_npz), "--arch", "tiny28", "--out", str(out),
            "--batch", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for steps, extra in ((2, []), (4, ["--resume"])):
        done = subprocess.run([*torchrun, *args, "--steps", str(steps), *extra], env=env,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    state, config = load_checkpoint(out / "ema.safetensors")
    assert config["training"]["world_size"] == 2 and config["training"]["step"] == 4
    build_model("ddpm", config["model"]).load_state_dict(state)
    train_state, _ = load_checkpoint(out / "current" / "train_state.safetensors")
    assert not torch.equal(train_state["rng.batches.0"], train_state["rng.batches.1"])
