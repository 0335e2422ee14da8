"""EDM-style sigma denoisers D(x; sigma): the wrapper is an x0 model on pndm's time, over EDM's sigma grid;
pickles load only when trusted."""

import pickle

import pytest
import torch
from edm_fixtures import TinyEDMPrecond

from pndm.errors import CheckpointError
from pndm.models import load, load_module
from pndm.models.sigma_denoiser import sigma_schedule
from pndm.prediction import to_eps
from pndm.schedules import make_schedule


def test_sigma_schedule_walks_edm_sigmas():
    schedule = make_schedule(sigma_schedule(0.002, 80.0, T=1000))
    sigmas = schedule.sigma(torch.tensor([0.0, 999.0]))
    assert torch.allclose(sigmas, torch.tensor([0.002, 80.0], dtype=torch.float64), rtol=1e-9)
    # EDM eq. 5 with rho = 7 at the middle node
    mid = (0.002 ** (1 / 7) + 0.5 * (80 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    assert float(schedule.sigma(torch.tensor(999 / 2))) == pytest.approx(mid, rel=1e-3)


def test_wrapped_denoiser_gives_eps_of_the_ve_state():
    model, spec = load_module("edm_fixtures:make", image_shape=(3, 8, 8), denoiser="sigma")
    net = model.net
    schedule = make_schedule(spec.schedule_spec)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.0, 700.25])
    ab, sigma = schedule.alpha_bar(t).float().view(-1, 1, 1, 1), schedule.sigma(t).float()
    with torch.no_grad():
        d = net(x / ab.sqrt(), sigma)
        assert torch.allclose(model(x, t), d, atol=1e-5)
        eps = to_eps(model(x, t), x, schedule.log_alpha_bar(t), spec.prediction)
    assert torch.allclose(eps, (x / ab.sqrt() - d) / sigma.view(-1, 1, 1, 1), rtol=1e-3, atol=1e-3)
    assert spec.prediction == "sample" and spec.config["denoiser"] == "sigma"


def test_edm_pickles_need_trust(tmp_path):
    path = tmp_path / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ema": TinyEDMPrecond(label_dim=3, sigma_min=0.02, sigma_max=100.0)}, f)
    with pytest.raises(CheckpointError, match="carry code .* pass allow_pickle=True only"):
        load(path)
    model, spec = load(path, allow_pickle=True)
    assert spec.architecture == "edm" and spec.num_classes == 3 and spec.image_shape == (3, 8, 8)
    assert (spec.config["sigma_min"], spec.config["sigma_max"]) == (0.02, 80.0)  # clamped as EDM does
    out = model(torch.randn(2, 3, 8, 8), torch.tensor([1.0, 2.0]), torch.tensor([0, 2]))
    assert out.shape == (2, 3, 8, 8)
