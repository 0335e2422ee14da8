"""pndm.prediction: v- and x0-prediction converted to eps, against the definitions and diffusers."""

import pytest
import torch

from pndm.errors import PndmError
from pndm.prediction import to_eps
from pndm.schedules import make_schedule


def _state(schedule, t):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(len(t), 3, 4, 4, generator=g), torch.randn(len(t), 3, 4, 4, generator=g)
    ab = schedule.alpha_bar(t).float().view(-1, 1, 1, 1)
    return x0, eps, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, ab


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_v_and_x0_targets_give_back_eps(schedule):
    s = make_schedule(schedule)
    t = torch.tensor([0.0, 10.5, 500.0, 999.0])
    x0, eps, x_t, ab = _state(s, t)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0  # Salimans & Ho 2022
    log_ab = s.log_alpha_bar(t)
    assert torch.allclose(to_eps(v, x_t, log_ab, "v_prediction"), eps, atol=2e-5)
    assert torch.allclose(to_eps(x0, x_t, log_ab, "sample"), eps, atol=2e-3)  # 1/sqrt(1-ab) = 100 at t=0
    assert to_eps(eps, x_t, log_ab, "epsilon") is eps


def test_matches_diffusers_ddim_conversion():
    from diffusers import DDIMScheduler

    s = make_schedule("quad", beta_start=0.00085, beta_end=0.012)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", set_alpha_to_one=True)
    sched.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    v = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    t = int(sched.timesteps[3])
    ab = sched.alphas_cumprod[t]
    expected = ab.sqrt() * v + (1 - ab).sqrt() * x  # diffusers' pred_epsilon for v_prediction
    assert torch.allclose(to_eps(v, x, s.log_alpha_bar(torch.tensor([float(t)])), "v_prediction"), expected,
                          atol=1e-5)


def test_unknown_prediction_type_is_one_line():
    with pytest.raises(PndmError, match="unknown prediction type 'flow'; choose one of epsilon, "
                                        "v_prediction, sample"):
        to_eps(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.zeros(1), "flow")


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_to_eps_inverts(prediction):
    """A model that outputs its training target exactly gives back the true eps."""
    from pndm.prediction import training_target

    s = make_schedule("linear")
    t = torch.tensor([0.0, 250.0, 700.0, 999.0])
    x0, eps, x_t, ab = _state(s, t)
    target = training_target(prediction, x0, eps, ab)
    assert torch.allclose(to_eps(target, x_t, s.log_alpha_bar(t), prediction), eps, atol=2e-3)
