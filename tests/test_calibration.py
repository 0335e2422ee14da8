"""Calibration pairs: collected from real solver trajectories, covering t, saved and loaded safely."""

from __future__ import annotations

import pytest
import torch

from pndm.calibration import collect_pairs, load_pairs, save_pairs
from pndm.errors import PndmError
from pndm.models.ddpm_unet import DDPMUNet, DDPMUNetConfig
from pndm.schedules import make_schedule
from pndm.solvers import time_grid

TINY = DDPMUNetConfig(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), resolution=8, dropout=0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DDPMUNet(TINY).eval()


@pytest.fixture(scope="module")
def pairs(model):
    return collect_pairs(model, (3, 8, 8), make_schedule("linear", 1000), method="ddim", steps=5, count=2,
                         batch=1, progress=False)


def test_one_pair_per_model_evaluation(pairs):
    assert len(pairs) == 2 * 5  # DDIM: NFE = steps, for each of 2 trajectories
    assert pairs.x.shape == (10, 3, 8, 8) and pairs.eps.shape == (10, 3, 8, 8)
    assert pairs.x.dtype == pairs.t.dtype == torch.float32


def test_t_covers_the_ddim_grid_across_0_to_T(pairs):
    grid = time_grid(5, 1000).float()
    grid = grid[grid >= 0]  # the grid ends at -1 (alpha_bar = 1), where the model is not evaluated
    assert set(pairs.t.tolist()) == set(grid.tolist())
    assert pairs.t.min() == 0 and pairs.t.max() == 800
    assert pairs.info["t_min"] == 0 and pairs.info["t_max"] == 800
    counts = torch.stack([(pairs.t == v).sum() for v in grid.unique()])
    assert (counts == 2).all()


def test_pairs_are_the_real_model_inputs(model, pairs):
    """x_T is N(0, I) at the top of the grid; eps is the model's output at each stored (x, t)."""
    first = pairs.t == 800
    assert abs(pairs.x[first].std().item() - 1.0) < 0.2
    with torch.no_grad():
        assert torch.allclose(model(pairs.x, pairs.t), pairs.eps, rtol=1e-4, atol=1e-5)
    late = pairs.t == 0
    assert not torch.allclose(pairs.x[late], pairs.x[first])


def test_same_seed_same_pairs(model, pairs):
    again = collect_pairs(model, (3, 8, 8), make_schedule("linear", 1000), steps=5, count=2, batch=2,
                          progress=False)
    order = lambda p: p.t.argsort(stable=True)  # noqa: E731  (batching changes the order, not the pairs)
    assert torch.allclose(again.x[order(again)], pairs.x[order(pairs)], atol=1e-5)


def test_save_and_load_round_trip(pairs, tmp_path):
    path = save_pairs(tmp_path / "calibration.safetensors", pairs)
    loaded = load_pairs(path)
    assert all(torch.equal(getattr(loaded, k), getattr(pairs, k)) for k in ("x", "t", "eps"))
    assert loaded.info == pairs.info
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.safetensors"]  # no temporary left


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(PndmError, match="not a readable calibration file"):
        load_pairs(bad)
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(PndmError, match="holds 'x', 't' and 'eps'"):
        load_pairs(tmp_path / "other.safetensors")


def test_bad_settings(model):
    with pytest.raises(PndmError, match="unknown calibration method 'euler'"):
        collect_pairs(model, (3, 8, 8), make_schedule("linear"), method="euler")
    with pytest.raises(PndmError, match="count >= 1"):
        collect_pairs(model, (3, 8, 8), make_schedule("linear"), count=0)
