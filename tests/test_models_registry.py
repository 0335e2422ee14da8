"""Named models, the weights folder, the shipped default model, and random init."""

import shutil
import warnings

import pytest
import torch

from pndm.errors import CheckpointError, PndmError
from pndm.models import (
    UntrainedModelWarning,
    build_model,
    find_weights,
    list_models,
    load,
    registry,
    save_checkpoint,
    weights_dir,
)
from pndm.models.configs import DDPM_CONFIGS


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("PNDM_MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def no_default(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "DEFAULT_WEIGHTS", tmp_path / "assets" / "default.safetensors")


def test_weights_dir_env_and_fallback(models_dir, monkeypatch):
    assert weights_dir() == models_dir
    monkeypatch.delenv("PNDM_MODELS_DIR")
    assert weights_dir() == registry.Path.home() / ".cache" / "pndm" / "models"


def test_find_weights_order(models_dir):
    assert find_weights("cifar10") is None
    (models_dir / "cifar10").mkdir()
    (models_dir / "cifar10" / "config.json").write_text("{}")
    assert find_weights("cifar10") == models_dir / "cifar10"
    (models_dir / "cifar10.safetensors").write_bytes(b"")
    assert find_weights("cifar10") == models_dir / "cifar10.safetensors"
    (models_dir / "ema_cifar10.ckpt").write_bytes(b"")
    assert find_weights("cifar10") == models_dir / "ema_cifar10.ckpt"


def test_list_models(models_dir, no_default):
    (models_dir / "iddpm_cifar10.ckpt").write_bytes(b"")
    rows = {row[0]: row for row in list_models()}
    assert list(rows) == ["default", "cifar10", "celeba", "lsun_church", "lsun_bedroom", "iddpm_cifar10"]
    assert rows["cifar10"][1:] == ("ddpm", (3, 32, 32), 35_746_307, None)
    assert rows["iddpm_cifar10"][1:] == ("iddpm", (3, 32, 32), 52_546_438, models_dir / "iddpm_cifar10.ckpt")
    assert rows["lsun_bedroom"][2] == (3, 256, 256)
    assert rows["default"][1:3] == ("ddpm", (1, 28, 28)) and rows["default"][4] is None


def test_named_model_without_weights_says_where_to_get_and_put_them(models_dir):
    with pytest.raises(PndmError) as exc:
        load("celeba")
    message = str(exc.value)
    assert str(models_dir) in message and "ema_celeba.ckpt" in message and "random_init=True" in message


def test_named_weights_of_another_architecture_are_refused(testdata, models_dir):
    shutil.copytree(testdata / "diffusers_ddpm_tiny", models_dir / "cifar10")
    with pytest.raises(CheckpointError, match="installed as named model 'cifar10' but holds a different"):
        load("cifar10")


def test_default_stand_in_until_shipped(no_default):
    with pytest.warns(UntrainedModelWarning, match="not shipped"):
        model, spec = load("default")
    summary = (spec.source_kind, spec.sha256, spec.image_shape, spec.schedule)
    assert summary == ("random", None, (1, 28, 28), "linear")
    assert "untrained" in spec.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, _ = load("default")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(),
                                                 strict=True))  # random init is reproducible (seed 0)


def test_default_loads_the_shipped_file(tmp_path, monkeypatch):
    weights = tmp_path / "assets" / "default.safetensors"
    monkeypatch.setattr(registry, "DEFAULT_WEIGHTS", weights)
    config = dict(ch=32, out_ch=1, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[], in_channels=1,
                  resolution=28, dropout=0.0)
    trained = build_model("ddpm", config)
    save_checkpoint(weights, trained.state_dict(),
                    {"architecture": "ddpm", "model": config, "diffusion": {"schedule": "linear", "T": 1000}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a shipped model is not untrained: no warning
        model, spec = load("default")
    assert (spec.source_kind, spec.name, spec.image_shape) == ("default", "default", (1, 28, 28))
    assert spec.manifest_source()["sha256"] == spec.sha256 and len(spec.sha256) == 64
    assert torch.equal(model.conv_in.weight, trained.conv_in.weight)
    assert list_models()[0][4] == weights


def test_random_init_of_an_architecture():
    tiny = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2]}
    with pytest.warns(UntrainedModelWarning):
        model, spec = load("iddpm", config=tiny)
    assert (spec.architecture, spec.schedule) == ("iddpm", "cosine")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x, torch.tensor([1.0, 997.5])).shape == x.shape
    with pytest.raises(PndmError, match="needs config="):
        load("ddpm")


@pytest.mark.slow
def test_named_model_from_original_ckpt_and_random_init(models_dir):
    """A full-size DDIM-repo-style list checkpoint installed as ema_cifar10.ckpt loads by name."""
    torch.manual_seed(0)
    original = build_model("ddpm", DDPM_CONFIGS["cifar10"])
    state = {f"module.{k}": v for k, v in original.state_dict().items()}
    torch.save([state, {}, 1, 2, state], models_dir / "ema_cifar10.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, spec = load("cifar10")
    assert (spec.source_kind, spec.name, spec.image_shape) == ("named", "cifar10", (3, 32, 32))
    assert torch.equal(model.conv_out.weight, original.conv_out.weight)
    with pytest.warns(UntrainedModelWarning, match="ema_cifar10.ckpt"):
        _, spec = load("cifar10", random_init=True)
    assert (spec.source_kind, spec.name, spec.config["ch_mult"]) == ("random", "cifar10", [1, 2, 2, 2])
