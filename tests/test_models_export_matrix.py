"""Issue 9's matrix end to end: every kind of model is exported (fp32 ONNX verified within relative L2
1e-5 of the PyTorch module on real solver states, or the export fails; fp16 by the ONNX-level rewrite),
both engines pass `pndm-run check` with the reference found through the manifest alone, and it
samples with `pndm-run sample`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from diffusers_fixtures import diffusers_unet, save_pipeline, save_unet, scheduler_kwargs
from user_nets import NETS

from pndm.cli import run_cli

BIN = Path(sys.executable).parent
TESTS = Path(__file__).parent


def run(*args, timeout=900):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def _source(kind, tmp_path):
    """pndm-export arguments for one entry of the matrix."""
    if kind in ("default", "cifar10_layout", "class_conditional", "scale_shift_groups"):
        return ["--checkpoint", str(save_unet(tmp_path / "unet", kind)[1])]
    if kind == "fourier_skip":
        return ["--checkpoint", str(save_unet(tmp_path / "unet", kind)[1]), "--schedule", "cosine"]
    if kind in ("v_prediction", "sample"):
        folder = save_pipeline(tmp_path / "pipe", diffusers_unet("default"), "DDIMPipeline", "DDIMScheduler",
                               **scheduler_kwargs(prediction_type=kind))
        return ["--checkpoint", str(folder)]
    if kind == "module":
        (tmp_path / "nets.py").write_text(NETS)
        return ["--module", f"{tmp_path / 'nets.py'}:make", "--image-shape", "3,16,16",
                "--schedule", "quad", "--beta-start", "0.00085", "--beta-end", "0.012"]
    if kind == "edm_module":
        return ["--module", f"{TESTS / 'edm_fixtures.py'}:make", "--image-shape", "3,8,8",
                "--denoiser", "sigma"]
    raise AssertionError(kind)


MATRIX = ["default", "cifar10_layout", "fourier_skip", "class_conditional", "scale_shift_groups",
          "v_prediction", "sample", "module", "edm_module"]


@pytest.mark.slow  # an ONNX export of a tiny diffusers UNet takes ~30 s on a loaded 2-core machine
@pytest.mark.parametrize("kind", MATRIX)
def test_export_check_and_sample(tmp_path, kind):
    out = tmp_path / "engines"
    built = run("pndm-export", "build", *_source(kind, tmp_path), "--out", str(out), "--trt", "off",
                "--precision", "fp16",
                "--batch", "1:2:4", "--calibration-steps", "5")
    assert built.returncode == 0, built.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["unet.onnx"]["rel_l2"] <= 1e-5
    native = {"v_prediction": "v_prediction", "sample": "sample", "edm_module": "sample"}
    assert manifest["model"]["prediction"] == native.get(kind, "epsilon")
    if kind in ("v_prediction", "sample"):  # DDIMScheduler's default clip_sample=True: a note, said and kept
        (note,) = [n for n in manifest["model"]["notes"] if "clip_sample=true" in n]
        assert note in built.stdout
    labels = ["--class-label", "3"] if kind == "class_conditional" else []
    # The fp32 graph is verified above (1e-5 of PyTorch); the checker runs on the fp16 one, the harder case.
    # pndm-run in this process (the export above ran the real command line): ~3 s of imports less each
    checked = CliRunner().invoke(run_cli, ["check", "--engine", str(out / "unet.fp16.onnx"), "--method",
                                           "ddim", "--steps", "5", "-n", "2", "--batch", "2", "--no-progress",
                                           *labels])
    assert checked.exit_code == 0 and "PASS" in checked.output, checked.output[-3000:]
    sampled = CliRunner().invoke(run_cli, ["sample", "--engine", str(out), "--method", "ddim", "--steps", "5",
                                           "-n", "2", "--batch", "2", "--out", str(tmp_path / "samples"),
                                           "--no-progress", *labels])
    assert sampled.exit_code == 0, sampled.output[-2000:]
    assert len(list((tmp_path / "samples").glob("seed*.png"))) == 2
