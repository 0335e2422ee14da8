"""Engines convert native v / x0 outputs to eps with their schedule; the reference of a diffusers or module
export is found from the manifest alone and refused when a recorded file changed."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers_fixtures import diffusers_unet, save_pipeline, scheduler_kwargs

from pndm.engine_format import BatchSpec, Manifest, ModelInfo, Source
from pndm.errors import EngineError, PndmError
from pndm.models import load
from pndm.prediction import to_eps
from pndm.runtime.loader import torch_engine
from pndm.runtime.reference import find_reference

BIN = Path(sys.executable).parent


@pytest.fixture
def v_pipeline(tmp_path):
    return save_pipeline(tmp_path / "pipe", diffusers_unet("default"), "DDIMPipeline", "DDIMScheduler",
                         **scheduler_kwargs(prediction_type="v_prediction"))


def test_engine_call_is_eps_and_native_is_the_network(v_pipeline):
    model, spec = load(v_pipeline)
    engine = torch_engine(model, spec, v_pipeline, "cpu")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0.0, 640.5])
    with torch.no_grad():
        v = model(x, t)
    assert torch.equal(engine.native(x, t), v)
    expected = to_eps(v, x, engine.schedule.log_alpha_bar(t), "v_prediction")
    assert torch.allclose(engine(x, t), expected, atol=1e-6)
    assert engine.schedule.spec == spec.schedule_spec and engine.schedule.spec.beta_end == 0.012


class _Candidate:
    """What find_reference reads from an engine: its manifest and path."""

    def __init__(self, manifest, path):
        self.manifest, self.path = manifest, str(path)


def _manifest(spec):
    model = ModelInfo(spec.architecture, spec.config, Source.from_dict(spec.manifest_source(), "spec"),
                      spec.prediction, spec.num_classes)
    return Manifest.new(model=model, image_shape=spec.image_shape,
                        schedule=spec.schedule_spec,
                        batch=BatchSpec(1, 2, 4))


def test_reference_of_a_pipeline_folder_and_a_changed_file(v_pipeline, tmp_path):
    _, spec = load(v_pipeline)
    reference = find_reference(_Candidate(_manifest(spec), tmp_path / "unet.onnx"), device="cpu")
    assert reference.prediction == "v_prediction" and reference.schedule.spec == spec.schedule_spec
    config = v_pipeline / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace("0.012", "0.013"))
    with pytest.raises(EngineError, match="scheduler_config.json changed since this engine was exported"):
        find_reference(_Candidate(_manifest(spec), tmp_path / "unet.onnx"), device="cpu")


def test_bad_module_on_the_command_line_is_one_line(tmp_path):
    (tmp_path / "nets.py").write_text("import torch\n\ndef make():\n    return torch.nn.Identity()\n")
    result = subprocess.run([str(BIN / "pndm-export"), "build", "--module", f"{tmp_path / 'nets.py'}:make",
                             "--image-shape", "3,8,8", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --module '{tmp_path / 'nets.py'}:make': forward(input) does not take (x, t); define "
        "forward(x, t) (x (B,C,H,W) float32, t (B,) float32 timesteps)"]
    assert not (tmp_path / "out").exists()


def test_options_that_need_a_module(tmp_path):
    from pndm.models.cli_options import load_with_options

    opts = {"module": None, "weights": None, "image_shape": "3,8,8", "num_classes": None, "denoiser": "eps",
            "sigma_min": None, "sigma_max": None, "schedule": None, "T": None, "beta_start": None,
            "beta_end": None, "betas": None, "prediction": None}
    with pytest.raises(PndmError, match="--image-shape goes with --module"):
        load_with_options(opts, lambda **_: None)
    (tmp_path / "betas.txt").write_text("0.1\n0.2\nnot-a-number\n")
    with pytest.raises(PndmError, match="not a list of numbers"):
        load_with_options({**opts, "image_shape": None, "betas": tmp_path / "betas.txt"}, lambda **_: None)


def test_reference_of_the_default_model_must_be_the_exported_weights(tmp_path):
    """The default (or a named) model found through the manifest is refused when its weights are not the
    ones the engine was exported from: an engine FAIL would blame the wrong thing."""
    _, spec = load("default")
    manifest = _manifest(spec)
    assert manifest.model.source.kind == "default" and manifest.model.source.sha256 == spec.sha256
    assert find_reference(_Candidate(manifest, tmp_path / "unet.onnx"), device="cpu").precision == "fp32"
    manifest.model.source.sha256 = "0" * 64
    with pytest.raises(EngineError, match="weights .* are not the ones this engine was exported"):
        find_reference(_Candidate(manifest, tmp_path / "unet.onnx"), device="cpu")
