"""Diffusers UNet2DModel folders map exactly onto the DDPM UNet, or run diffusers' module naming why."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from pndm.errors import CheckpointError
from pndm.models import load

TINY = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, attention_head_dim=None,
    dropout=0.0,
)


def _diffusers_unet(tmp_path, **overrides):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but make every weight matter
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = tmp_path / "unet"
    unet.save_pretrained(folder)
    return unet, folder


def _max_diff(unet, model):
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 997.5])
    with torch.no_grad():
        return (unet(x, t).sample - model(x, t)).abs().max().item()


@pytest.mark.slow  # imports diffusers (~5 s on a loaded 2-core machine)
def test_flip_sin_to_cos_is_mapped_exactly(tmp_path):
    unet, folder = _diffusers_unet(tmp_path, flip_sin_to_cos=True)
    model, spec = load(folder)
    assert _max_diff(unet, model) < 1e-4
    assert spec.config["attn_resolutions"] == [8] and spec.image_shape == (3, 16, 16)


@pytest.mark.slow
def test_legacy_attention_names_and_bin_weights(tmp_path):
    """Older hub folders (google/ddpm-cifar10-32) store query/key/value/proj_attn in a .bin."""
    unet, folder = _diffusers_unet(tmp_path)
    legacy = {}
    for key, value in load_file(folder / "diffusion_pytorch_model.safetensors").items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(legacy, folder / "diffusion_pytorch_model.bin")
    model, spec = load(folder)
    assert _max_diff(unet, model) < 1e-4
    assert "diffusion_pytorch_model.bin" in spec.files and spec.path == str(folder.resolve())


@pytest.mark.parametrize("beta_schedule,expected",
                         [("scaled_linear", "quad"), ("squaredcos_cap_v2", "cosine")])
def test_pipeline_folder_with_scheduler(testdata, tmp_path, beta_schedule, expected):
    pipeline = tmp_path / "pipe"
    shutil.copytree(testdata / "diffusers_ddpm_tiny", pipeline / "unet")
    (pipeline / "scheduler").mkdir()
    (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "beta_schedule": beta_schedule, "beta_start": 0.0001,
         "beta_end": 0.02, "num_train_timesteps": 4000}))
    _, spec = load(pipeline)
    assert (spec.schedule, spec.T) == (expected, 4000) and spec.architecture == "ddpm"


@pytest.mark.parametrize("option,value", [
    ("freq_shift", 0), ("norm_eps", 1e-5), ("downsample_padding", 1), ("attention_head_dim", 8),
    ("act_fn", "gelu"), ("center_input_sample", True),
])  # scale-shift resnets change the weights' shapes: covered with their own weights in the matrix tests
def test_unmappable_options_run_diffusers_module_naming_the_option(testdata, tmp_path, option, value):
    pytest.importorskip("diffusers")
    folder = tmp_path / "unet"
    shutil.copytree(testdata / "diffusers_ddpm_tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, option: value}))
    _, spec = load(folder)
    assert spec.architecture == "diffusers" and f"{option}={value!r}" in spec.notes[0]


@pytest.mark.slow  # imports diffusers
def test_learned_variance_in_the_ddpm_layout_runs_diffusers_module_on_the_mean_half(tmp_path):
    """out_channels = 2C in the otherwise exactly mappable layout: diffusers' module, its first C channels
    (the DDPM UNet has no variance half); out_channels 1 with 3 input channels is refused at load."""
    unet, folder = _diffusers_unet(tmp_path, out_channels=6)
    model, spec = load(folder)
    assert spec.architecture == "diffusers" and "out_channels=6" in spec.notes[0]
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 997.5])
    with torch.no_grad():
        assert (unet(x, t).sample[:, :3] - model(x, t)).abs().max().item() < 1e-5
    _, folder = _diffusers_unet(tmp_path / "grey", out_channels=1)
    with pytest.raises(CheckpointError, match="out_channels=1 with in_channels=3; pndm needs"):
        load(folder)


def test_unknown_weight_is_refused(testdata, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(testdata / "diffusers_ddpm_tiny", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["class_embedding.weight"] = torch.zeros(10, 128)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match="class_embedding.weight has no counterpart"):
        load(folder)


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers model folder"):
        load(tmp_path / "empty")


def test_absent_options_mean_diffusers_defaults(testdata, tmp_path):
    """An old config.json without freq_shift means diffusers' default 0, which is not mappable."""
    pytest.importorskip("diffusers")
    folder = tmp_path / "unet"
    shutil.copytree(testdata / "diffusers_ddpm_tiny", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["freq_shift"]
    (folder / "config.json").write_text(json.dumps(config))
    assert "freq_shift=0" in load(folder)[1].notes[0]


def test_google_ddpm_cifar10_layout_maps_onto_the_original(testdata):
    """Every key/shape of google/ddpm-cifar10-32 renames onto exactly the CIFAR-10 DDPM state dict."""
    from pndm.models import build_model
    from pndm.models.configs import DDPM_CONFIGS
    from pndm.models.diffusers_mapping import DIFFUSERS_DEFAULTS, ddpm_config_from_diffusers, map_state_dict

    reference = json.loads((testdata / "diffusers_ddpm_cifar10_state_dict_shapes.json").read_text())
    cfg = {**DIFFUSERS_DEFAULTS, **reference["config"]}
    config = ddpm_config_from_diffusers(cfg, testdata)
    assert config.to_dict() == {**DDPM_CONFIGS["cifar10"], "ch_mult": [1, 2, 2, 2], "attn_resolutions": [16],
                                "dropout": 0.0}  # dropout: diffusers' default; inert at inference
    fake = {k: torch.empty(shape, device="meta") for k, shape in reference["state_dict"].items()}
    mapped = map_state_dict(fake, cfg, len(config.ch_mult), testdata)
    with torch.device("meta"):
        expected = build_model("ddpm", DDPM_CONFIGS["cifar10"]).state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_engine_folder_without_manifest_says_so(tmp_path):
    """An engine folder whose manifest.json is gone is named as such, not as a bad diffusers folder; an
    engine path that is a folder is named too."""
    from pndm.errors import EngineError
    from pndm.runtime import load_engine

    folder = tmp_path / "engines"
    (folder / "unet.onnx").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="engines: an engine folder without a readable manifest.json, "
                                              "which its engines need; export the model again"):
        load_engine(folder)
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(EngineError, match="unet.onnx is a folder, not an engine file"):
        load_engine(folder / "unet.onnx")
