"""Each real-format file made by the original projects' code reproduces its reference eps."""

import pytest
import torch
from safetensors.torch import load_file

from pndm.models import load

CASES = [
    ("original_ddpm_tiny.ckpt", "original_ddpm_tiny_reference.safetensors", "ddpm", "linear"),
    ("iddpm_tiny.ckpt", "iddpm_tiny_reference.safetensors", "iddpm", "cosine"),
    ("diffusers_ddpm_tiny", "diffusers_ddpm_tiny_reference.safetensors", "ddpm", "linear"),
]


@pytest.mark.parametrize("source,reference,architecture,schedule", CASES)
def test_reference_forward_pass(testdata, source, reference, architecture, schedule):
    model, spec = load(testdata / source)
    ref = load_file(testdata / reference)
    assert 997.5 in ref["t"].tolist()  # PRK evaluates the model at fractional timesteps
    with torch.no_grad():
        eps = model(ref["x"], ref["t"])
    assert eps.shape == ref["eps"].shape == ref["x"].shape
    assert (eps - ref["eps"]).abs().max().item() < 1e-4
    assert not model.training
    assert (spec.architecture, spec.schedule, spec.T) == (architecture, schedule, 1000)
    assert spec.image_shape == (3, 32, 32)
    assert spec.source_kind == ("diffusers" if source.startswith("diffusers") else "checkpoint")
    assert len(spec.sha256) == 64


@pytest.mark.parametrize("source", ["original_ddpm_tiny.ckpt", "iddpm_tiny.ckpt"])
def test_fractional_timestep_is_not_rounded(testdata, source):
    """t = 997.5 is used as given (not cast to an integer): its eps differs from both neighbours."""
    model, _ = load(testdata / source)
    x = load_file(testdata / source.replace(".ckpt", "_reference.safetensors"))["x"][:1].repeat(3, 1, 1, 1)
    with torch.no_grad():
        eps = model(x, torch.tensor([997.0, 997.5, 998.0]))
    assert (eps[1] - eps[0]).abs().max() > 1e-7 and (eps[1] - eps[2]).abs().max() > 1e-7
    # the embedding is smooth in t: the midpoint output lies close to the mean of its neighbours
    assert (eps[1] - (eps[0] + eps[2]) / 2).abs().max() < (eps[2] - eps[0]).abs().max()
