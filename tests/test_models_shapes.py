"""Full-size models built from the named configs have exactly the originals' keys and shapes.

Built on the ``meta`` device: no memory, no time.
"""

import json

import pytest
import torch

from pndm.models import build_model
from pndm.models.configs import DDPM_CONFIGS, IDDPM_CONFIGS


def _shapes(model) -> dict:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["cifar10", "celeba", "lsun_church"])
def test_original_ddpm_layout(testdata, name):
    expected = json.loads((testdata / "original_ddpm_state_dict_shapes.json").read_text())[name]
    with torch.device("meta"):
        model = build_model("ddpm", DDPM_CONFIGS[name])
    assert list(_shapes(model)) == list(expected["state_dict"])  # same keys, same order
    assert _shapes(model) == expected["state_dict"]
    assert _params(model) == expected["num_parameters"]


def test_cifar10_counts(testdata):
    with torch.device("meta"):
        model = build_model("ddpm", DDPM_CONFIGS["cifar10"])
    assert _params(model) == 35_746_307
    assert len(model.state_dict()) == 328


def test_lsun_bedroom_is_the_church_architecture():
    assert DDPM_CONFIGS["lsun_bedroom"] == DDPM_CONFIGS["lsun_church"]


def test_original_yaml_dict_builds_the_same_model(testdata):
    """The JSON's config is the DDIM YAML `model:` section, with keys the UNet ignores."""
    expected = json.loads((testdata / "original_ddpm_state_dict_shapes.json").read_text())["cifar10"]
    assert "var_type" in expected["config"] and "ema_rate" in expected["config"]
    with torch.device("meta"):
        model = build_model("ddpm", expected["config"])
    assert _shapes(model) == expected["state_dict"]


def test_iddpm_cifar10_layout(testdata):
    expected = json.loads((testdata / "iddpm_state_dict_shapes.json").read_text())["cifar10"]
    with torch.device("meta"):
        model = build_model("iddpm", IDDPM_CONFIGS["iddpm_cifar10"])
    assert list(_shapes(model)) == list(expected["state_dict"])
    assert _shapes(model) == expected["state_dict"]
    assert _params(model) == expected["num_parameters"] == 52_546_438
    with torch.device("meta"):
        from_repo_config = build_model("iddpm", expected["config"])
    assert _shapes(from_repo_config) == expected["state_dict"]
