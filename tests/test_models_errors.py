"""Bad input gets a one-line CheckpointError/PndmError naming the file and the problem; no code runs."""

import argparse
import shutil

import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner

from pndm.cli import export_cli
from pndm.errors import CheckpointError, PndmError
from pndm.models import load

CONFIG = "original_ddpm_tiny_config.json"


def _copy_tiny(testdata, tmp_path, name="m.ckpt", with_config=True):
    dst = tmp_path / name
    shutil.copy(testdata / "original_ddpm_tiny.ckpt", dst)
    if with_config:
        shutil.copy(testdata / CONFIG, tmp_path / f"{dst.stem}_config.json")
    return dst


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


class WritesAFile:
    """A pickle payload whose unpickling would create a file (harmless stand-in for real code)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_not_run(testdata, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(testdata / "original_ddpm_tiny.ckpt", weights_only=True)
    evil = tmp_path / "evil.ckpt"
    torch.save({**state, "payload": WritesAFile(marker)}, evil)
    shutil.copy(testdata / CONFIG, tmp_path / "evil_config.json")
    with pytest.raises(CheckpointError) as exc:
        load(evil)
    message = _one_line(exc)
    assert "pickled code" in message and "pass allow_pickle=True, or convert" in message
    assert str(evil) in message
    assert not marker.exists()
    out = tmp_path / "engines"
    result = CliRunner().invoke(export_cli, ["build", "--checkpoint", str(evil), "--out", str(out)])
    assert_one_line_error(result, "pickled code", "pass --trust-pickle, or convert it to .safetensors")
    assert result.output.count("--trust-pickle") == 1 and not marker.exists()


def test_trusted_pickle_loads_with_explicit_opt_in(testdata, tmp_path):
    """A DDIM-style list holding a non-tensor Python object: refused by default, loads when trusted."""
    state = torch.load(testdata / "original_ddpm_tiny.ckpt", weights_only=True)
    path = tmp_path / "trusted.ckpt"
    torch.save([{}, {}, 3, 100, state, argparse.Namespace(lr=1e-4)], path)
    shutil.copy(testdata / CONFIG, tmp_path / "trusted_config.json")
    with pytest.raises(CheckpointError, match="pickled code"):
        load(path)
    model, spec = load(path, allow_pickle=True)
    assert spec.architecture == "ddpm"


def test_ddim_list_format_takes_ema_and_strips_module_prefix(testdata, tmp_path):
    state = torch.load(testdata / "original_ddpm_tiny.ckpt", weights_only=True)
    noisy = {f"module.{k}": v + 1.0 for k, v in state.items()}  # the non-EMA weights differ
    ema = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "ckpt.pth"
    torch.save([noisy, {"state": {}, "param_groups": []}, 10, 5000, ema], path)
    shutil.copy(testdata / CONFIG, tmp_path / "ckpt_config.json")
    model, _ = load(path)
    assert torch.equal(model.conv_in.weight, state["conv_in.weight"])


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_truncated_file(testdata, tmp_path, suffix):
    source = testdata / ("original_ddpm_tiny.ckpt" if suffix == ".ckpt" else "diffusers_ddpm_tiny"
                         "/diffusion_pytorch_model.safetensors")
    data = source.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load(path, config=testdata / CONFIG)
    message = _one_line(exc)
    assert str(path) in message and ("corrupt" in message or "truncated" in message)


@pytest.mark.parametrize("content", [b"hello, this is not a checkpoint\n", b"", bytes(range(256)) * 4])
def test_not_a_checkpoint_at_all(tmp_path, content):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load(path)
    assert str(path) in _one_line(exc)


def test_checkpoint_of_something_else(tmp_path):
    path = tmp_path / "numbers.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="not a model state dict"):
        load(path)
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="not a DDPM / iDDPM / diffusers UNet state dict"):
        load(path)


def test_missing_and_unexpected_keys_are_named(testdata, tmp_path):
    state = torch.load(testdata / "original_ddpm_tiny.ckpt", weights_only=True)
    del state["mid.attn_1.q.weight"], state["conv_out.bias"]
    state["extra.thing"] = torch.zeros(1)
    path = tmp_path / "edited.ckpt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc:
        load(path, config=testdata / CONFIG)
    message = _one_line(exc)
    assert "2 missing keys" in message and "mid.attn_1.q.weight" in message and "conv_out.bias" in message
    assert "1 unexpected keys: extra.thing" in message


def test_shape_mismatch_names_the_tensor(testdata, tmp_path):
    path = _copy_tiny(testdata, tmp_path, with_config=False)
    config = {"architecture": "ddpm", "model": {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                                 "attn_resolutions": [16], "resolution": 32, "out_ch": 1}}
    with pytest.raises(CheckpointError) as exc:
        load(path, config=config)
    message = _one_line(exc)
    assert "conv_out.weight" in message and "(3, 32, 3, 3)" in message and "(1, 32, 3, 3)" in message


def test_config_architecture_must_match_the_weights(testdata, tmp_path):
    path = _copy_tiny(testdata, tmp_path, with_config=False)
    with pytest.raises(CheckpointError, match="'iddpm' but the weights are in the 'ddpm' layout"):
        load(path, config=testdata / "iddpm_tiny_config.json")


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(PndmError) as exc:
        load("cifar100")
    message = _one_line(exc)
    assert "'cifar100'" in message and "cifar10" in message and "iddpm_cifar10" in message
    from pndm.models import build_model

    with pytest.raises(PndmError, match="valid architectures: ddpm, iddpm"):
        build_model("ncsnpp", {})


def test_missing_safetensors_file_is_not_called_corrupt(tmp_path):
    from pndm.models.checkpoint import read_safetensors

    with pytest.raises(CheckpointError) as exc:
        read_safetensors(tmp_path / "absent.safetensors")
    assert _one_line(exc) == f"{tmp_path / 'absent.safetensors'}: no such file; check the path"


def test_missing_file_and_unsupported_suffix(tmp_path):
    with pytest.raises(PndmError, match="no such file"):
        load(tmp_path / "absent.ckpt")
    (tmp_path / "weights.h5").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported file type '.h5'"):
        load(tmp_path / "weights.h5")


def test_bad_config_values(testdata, tmp_path):
    path = _copy_tiny(testdata, tmp_path, with_config=False)
    model = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16], "resolution": 32}
    diffusion = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.05}  # other ranges are fine
    assert load(path, config={"model": model, "diffusion": diffusion})[1].schedule_spec.beta_end == 0.05
    with pytest.raises(PndmError, match=r"beta range 0.0001..1.5 is invalid"):
        load(path, config={"model": model, "diffusion": {**diffusion, "beta_end": 1.5}})
    with pytest.raises(PndmError, match="unsupported beta schedule 'sigmoid'"):
        load(path, config={"model": model, "diffusion": {**diffusion, "beta_schedule": "sigmoid"}})
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(PndmError, match="cannot read config"):
        load(path, config=broken)


def test_config_of_the_other_architecture_is_refused(testdata):
    """Unknown keys are ignored, so a DDPM config must not silently become an all-defaults iDDPM."""
    with pytest.raises(PndmError, match="settings are for architecture 'ddpm', not 'iddpm'"):
        load("iddpm", config=testdata / CONFIG)
    with pytest.raises(PndmError, match="settings are for architecture 'ddpm', not 'iddpm'"):
        load(testdata / "iddpm_tiny.ckpt", config={"architecture": "iddpm", "model": {"ch": 32}})


def test_bare_weights_without_config_name_what_is_missing(testdata, tmp_path):
    ddpm = _copy_tiny(testdata, tmp_path, with_config=False)
    with pytest.raises(CheckpointError, match="resolution"):
        load(ddpm)
    iddpm = tmp_path / "iddpm.ckpt"
    shutil.copy(testdata / "iddpm_tiny.ckpt", iddpm)
    with pytest.raises(CheckpointError, match="num_heads"):
        load(iddpm)


def test_bare_full_size_weights_match_a_named_config(tmp_path):
    """Keys and shapes of the full CIFAR-10 layout identify the named config (resolution 32)."""
    from pndm.models import build_model
    from pndm.models.configs import DDPM_CONFIGS
    from pndm.models.infer import infer_config

    with torch.device("meta"):
        state = build_model("ddpm", DDPM_CONFIGS["cifar10"]).state_dict()
    parsed, note = infer_config(state, "ddpm", tmp_path / "ema_cifar10.ckpt")
    assert parsed.model.resolution == 32 and "'cifar10'" in note


def test_an_engine_or_a_run_folder_given_as_the_model_says_what_to_give(tmp_path):
    engine = tmp_path / "unet.onnx"
    engine.write_bytes(b"onnx")
    with pytest.raises(CheckpointError, match="an engine, not model weights; give the checkpoint or model"):
        load(engine)
    run = tmp_path / "run"
    run.mkdir()
    (run / "ema.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="a pndm-train run folder: give its ema.safetensors"):
        load(run)


def test_eta_for_another_method_names_the_flag_on_the_command_line(tmp_path):
    from pndm.cli import run_cli

    args = ["--method", "f-pndm", "--eta", "0.5", "--steps", "5", "-n", "1", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(run_cli, ["sample", "--engine", "default", *args])
    assert_one_line_error(result, "--eta 0.5 applies only to ddim", "for f-pndm drop it")
