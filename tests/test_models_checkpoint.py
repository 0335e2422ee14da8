"""pndm's own checkpoint format: safetensors + JSON beside it, written atomically."""

import json

import pytest
import torch
from safetensors import safe_open

from pndm.errors import CheckpointError
from pndm.models import build_model, load, load_checkpoint, save_checkpoint
from pndm.models.configs import parse_config, read_config_file

TINY = dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[16], resolution=32, dropout=0.0)


def _config(**extra):
    return {"architecture": "ddpm", "model": TINY, "diffusion": {"schedule": "quad", "T": 500}, **extra}


def test_roundtrip_and_json_beside(tmp_path):
    torch.manual_seed(1)
    model = build_model("ddpm", TINY).eval()
    path = save_checkpoint(tmp_path / "run" / "ema.safetensors", model.state_dict(), _config(),
                           metadata={"step": 7})
    assert sorted(p.name for p in path.parent.iterdir()) == ["ema.json", "ema.safetensors"]  # no temp files
    beside = json.loads((tmp_path / "run" / "ema.json").read_text())
    assert beside["format"] == "pndm-checkpoint/1" and beside["architecture"] == "ddpm"
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert json.loads(header["pndm_config"]) == beside and header["step"] == "7"

    state, config = load_checkpoint(path)
    assert config == beside
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    loaded, spec = load(path)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10.0, 997.5])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    assert (spec.schedule, spec.T, spec.source_kind, spec.path) == ("quad", 500, "checkpoint", str(path))


def test_a_relative_checkpoint_path_is_recorded_absolute(tmp_path, monkeypatch):
    """The manifest's source path must find the checkpoint from any working directory (pndm-run check)."""
    save_checkpoint(tmp_path / "run" / "ema.safetensors", build_model("ddpm", TINY).state_dict(), _config())
    monkeypatch.chdir(tmp_path)
    _, spec = load("run/ema.safetensors")
    assert spec.path == str(tmp_path.resolve() / "run" / "ema.safetensors")


def test_embedded_config_used_when_json_is_missing(tmp_path):
    model = build_model("ddpm", TINY)
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), _config())
    (tmp_path / "m.json").unlink()
    _, config = load_checkpoint(path)
    assert config["model"]["ch"] == 32
    assert load(path)[1].T == 500


def test_failed_write_leaves_nothing(tmp_path):
    bad = {"w": torch.zeros(2), "not_a_tensor": "x"}
    with pytest.raises(AttributeError):  # "x".detach(): fails after the temporary file was created
        save_checkpoint(tmp_path / "m.safetensors", bad, _config())
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_wrong_suffix_and_incomplete_config(tmp_path):
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        save_checkpoint(tmp_path / "m.ckpt", {}, _config())
    with pytest.raises(CheckpointError, match="lacks architecture"):
        save_checkpoint(tmp_path / "m.safetensors", {}, {"model": TINY})


def test_load_checkpoint_without_any_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="no config found"):
        load_checkpoint(tmp_path / "bare.safetensors")


def test_original_yaml_files_parse(tmp_path):
    """Both original YAML styles give the architecture, image size and schedule."""
    ddim = tmp_path / "cifar10.yml"
    ddim.write_text(
        "data: {dataset: CIFAR10, image_size: 32, channels: 3}\n"
        "model: {type: simple, in_channels: 3, out_ch: 3, ch: 128, ch_mult: [1, 2, 2, 2],\n"
        "        num_res_blocks: 2,\n"
        "        attn_resolutions: [16], dropout: 0.1, var_type: fixedlarge, ema_rate: 0.9999, ema: true,\n"
        "        resamp_with_conv: true}\n"
        "diffusion: {beta_schedule: linear, beta_start: 0.0001, beta_end: 0.02,\n"
        "            num_diffusion_timesteps: 1000}\n"
    )
    parsed = parse_config(read_config_file(ddim))
    summary = (parsed.architecture, parsed.model.resolution, parsed.schedule.name, parsed.schedule.T)
    assert summary == ("ddpm", 32, "linear", 1000)

    pndm = tmp_path / "iddpm_cifar10.yml"
    pndm.write_text(
        "Schedule: {type: cosine, diffusion_step: 1000}\nDataset: {image_size: 32, channels: 3}\n"
        "Model: {struc: iDDPM, in_channels: 3, model_channels: 128, out_channels: 6, num_res_blocks: 3,\n"
        "        attention_resolutions: [2, 4], dropout: 0.3, channel_mult: [1, 2, 2, 2], dims: 2,\n"
        "        conv_resample: true, use_scale_shift_norm: true, use_checkpoint: false, num_heads: 4,\n"
        "        num_heads_upsample: 4}\n"
    )
    parsed = parse_config(read_config_file(pndm))
    assert (parsed.architecture, parsed.model.num_heads, parsed.schedule.name) == ("iddpm", 4, "cosine")
