"""``pndm-export build`` / ``models`` on the command line: help, listing, one-line errors (exit code 2)."""

from __future__ import annotations

import pytest
import torch
from cli_checks import assert_one_line_error
from click.testing import CliRunner

from pndm.cli import export_cli


def run(*args, env=None):
    return CliRunner().invoke(export_cli, list(args), env=env)



def test_help_documents_every_option_with_its_default():
    result = run("build", "--help")
    assert result.exit_code == 0
    for option in ("--model", "--checkpoint", "--out", "--precision", "--batch", "--opset", "--trt",
                   "--timing-cache", "--lean", "--random-init", "--trust-pickle"):
        assert option in result.output
    text = " ".join(result.output.split())  # help is wrapped to the terminal width
    assert "default: 1:4:64" in text and "default: 20" in text and "default: auto" in text


def test_models_lists_names_and_where_weights_go(tmp_path):
    result = run("models", env={"PNDM_MODELS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "cifar10" in result.output and "35.7M" in result.output and str(tmp_path) in result.output
    (tmp_path / "cifar10.safetensors").write_bytes(b"")
    present = run("models", "--json", env={"PNDM_MODELS_DIR": str(tmp_path)})
    assert f'"weights": "{tmp_path / "cifar10.safetensors"}"' in present.output


def test_named_model_without_weights_says_where_to_get_them(tmp_path):
    out = tmp_path / "out"
    result = run("build", "--model", "cifar10", "--out", str(out), env={"PNDM_MODELS_DIR": str(tmp_path)})
    assert_one_line_error(result, "no weights for named model 'cifar10'", str(tmp_path), "ema_cifar10.ckpt")
    assert not out.exists()


def test_unknown_model(tmp_path):
    assert_one_line_error(run("build", "--model", "imagenet", "--out", str(tmp_path / "o")),
                          "unknown model or architecture 'imagenet'")


def test_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00garbage")
    out = tmp_path / "o"
    assert_one_line_error(run("build", "--checkpoint", str(bad), "--out", str(out)), str(bad))
    assert not out.exists()
    assert_one_line_error(run("build", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(out)),
                          "no such file")


@pytest.mark.parametrize("batch", ["4:2:8", "0:1:2", "a:b:c", "1:2"])
def test_invalid_batch_range(tmp_path, batch):
    assert_one_line_error(run("build", "--batch", batch, "--out", str(tmp_path / "o")), "invalid batch range")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("opset", ["7", "17", "99"])
def test_unsupported_opset(tmp_path, opset):
    assert_one_line_error(run("build", "--opset", opset, "--out", str(tmp_path / "o")),
                          f"opset {opset} is not supported", "--opset between 18 and")


@pytest.mark.parametrize(("args", "fragments"), [
    (["--precision", "fp8", "--opset", "18"], ["fp8 Q/DQ graphs need opset >= 19", "--opset 20"]),
    (["--precision", "fp16", "--int8-form", "cpu"], ["--int8-form applies to --precision int8, not fp16"]),
    (["--precision", "fp8", "--calibrator", "entropy"], ["--calibrator applies to --precision int8, not fp8"]
     ),
])
def test_quantization_options_are_checked_before_any_work(tmp_path, args, fragments):
    assert_one_line_error(run("build", *args, "--out", str(tmp_path / "o")), *fragments)
    assert not (tmp_path / "o").exists()


def test_output_directory_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run("build", "--out", str(blocker / "sub")), "not writable", "choose another --out")


def test_trt_on_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = run("build", "--trt", "on", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--trt on", "no CUDA device")


def test_cuda_package_needs_a_cuda_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = run("build", "--precision", "fp16", "--pt2-device", "cuda", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--pt2-device cuda", "sees no CUDA device", "GPU machine that will run it")
    assert not (tmp_path / "o").exists()


def test_cuda_package_precisions(tmp_path):
    result = run("build", "--precision", "int8", "--pt2-device", "cuda", "--out", str(tmp_path / "o"))
    assert_one_line_error(result, "--pt2-device cuda compiles fp32, fp16, bf16 packages, not int8",
                          "choose another --precision")


def test_checkpoint_and_model_together(tmp_path):
    result = run("build", "--model", "cifar10", "--checkpoint", "x.ckpt", "--out", str(tmp_path))
    assert_one_line_error(result, "either --model NAME or --checkpoint PATH")


def test_build_from_a_checkpoint(tmp_path):
    """The whole command on a tiny pndm checkpoint: the manifest records its hash, no reference copy."""
    import json

    from pndm.fileio import sha256_file
    from pndm.models import save_checkpoint
    from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig

    config = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8)
    weights = save_checkpoint(tmp_path / "tiny.safetensors", DDPMUNet(config).state_dict(),
                              {"architecture": "ddpm", "model": config.to_dict(),
                               "diffusion": {"schedule": "linear", "T": 1000}})
    out = tmp_path / "engines"
    result = run("build", "--checkpoint", str(weights), "--out", str(out), "--batch", "1:2:8",
                 "--trt", "off", "--calibration-steps", "3", "--calibration-count", "1")
    assert result.exit_code == 0, result.output + result.stderr
    assert "unet.onnx" in result.output and "[600, 1000)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["source"]["kind"] == "checkpoint"
    assert manifest["model"]["source"]["sha256"] == sha256_file(weights)
    assert "reference" not in manifest and not (out / "reference.safetensors").exists()
    assert manifest["verification"]["unet.onnx"]["rel_l2"] <= 1e-5
    assert sorted(p.name for p in out.iterdir()) == ["calibration.safetensors", "manifest.json", "unet.onnx"]
