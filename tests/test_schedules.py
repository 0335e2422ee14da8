"""Schedules: betas, alpha_bar, the fractional-t interpolation and its inverse."""

import math

import pytest
import torch

from pndm.errors import PndmError
from pndm.schedules import make_schedule


@pytest.mark.parametrize("name", ["linear", "quad", "cosine"])
def test_alphas_cumprod_is_the_product_of_one_minus_betas(name):
    s = make_schedule(name, T=1000)
    assert s.T == 1000 and s.betas.dtype == torch.float64 and s.alphas_cumprod.dtype == torch.float64
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - s.betas, 0), rtol=0, atol=0)
    assert bool((s.betas > 0).all()) and bool((s.betas <= 0.999).all())


def test_linear_and_quad_endpoints():
    lin, quad = make_schedule("linear"), make_schedule("quad")
    assert float(lin.betas[0]) == pytest.approx(1e-4) and float(lin.betas[-1]) == pytest.approx(0.02)
    assert float(quad.betas[0]) == pytest.approx(1e-4) and float(quad.betas[-1]) == pytest.approx(0.02)
    assert float(quad.betas[500]) < float(lin.betas[500])  # sqrt-linear squared lies below linear


@pytest.mark.parametrize(
    "name, diffusers_name", [("linear", "linear"), ("quad", "scaled_linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_betas_match_diffusers(name, diffusers_name):
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(1000, beta_start=1e-4, beta_end=0.02, beta_schedule=diffusers_name)
    ours = make_schedule(name)
    assert torch.allclose(ours.betas.float(), ref.betas, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)


def test_cosine_follows_its_closed_form_until_the_cap():
    s = make_schedule("cosine")
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):
        assert float(s.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert float(s.betas[-1]) == pytest.approx(0.999)


def test_alpha_bar_at_integers_and_clean_end():
    s = make_schedule("linear")
    t = torch.tensor([0.0, 1.0, 499.0, 999.0])
    assert torch.allclose(s.alpha_bar(t), s.alphas_cumprod[t.long()], rtol=1e-14, atol=0)
    assert float(s.alpha_bar(torch.tensor(-1.0))) == 1.0


def test_fractional_alpha_bar_is_log_linear():
    s = make_schedule("cosine")
    for lo in (-1, 0, 17, 998):
        a = 1.0 if lo == -1 else float(s.alphas_cumprod[lo])
        b = float(s.alphas_cumprod[lo + 1])
        assert float(s.alpha_bar(lo + 0.5)) == pytest.approx(math.sqrt(a * b), rel=1e-12)
        assert float(s.alpha_bar(lo + 0.25)) == pytest.approx(a**0.75 * b**0.25, rel=1e-12)
    dense = s.alpha_bar(torch.linspace(-1, 999, 4001, dtype=torch.float64))
    assert bool((dense[1:] < dense[:-1]).all())  # strictly decreasing


def test_inverse_and_derivative():
    s = make_schedule("linear")
    t = torch.tensor([-1.0, -0.3, 0.0, 12.5, 640.25, 999.0], dtype=torch.float64)
    assert torch.allclose(s.t_of_alpha_bar(s.alpha_bar(t)), t, atol=1e-9)
    assert torch.allclose(s.t_of_sigma(s.sigma(t)), t, atol=1e-9)
    # the slope on (j-1, j] is log(1 - beta_j): finite difference inside a segment
    j, h = 300, 1e-6
    fd = (float(s.log_alpha_bar(j - 0.5 + h)) - float(s.log_alpha_bar(j - 0.5 - h))) / (2 * h)
    assert float(s.dlog_alpha_bar_dt(j)) == pytest.approx(fd, rel=1e-6)
    assert float(s.dlog_alpha_bar_dt(j)) == pytest.approx(math.log(1 - float(s.betas[j])), rel=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(PndmError, match="linear, quad, cosine"):
        make_schedule("sigmoid")
    with pytest.raises(PndmError, match="T must be an integer"):
        make_schedule("linear", T=1)
    with pytest.raises(PndmError, match=r"out of range \[-1, 999\]"):
        make_schedule("linear").alpha_bar(torch.tensor([1000.0]))


def test_schedule_spec_fills_the_default_range_and_round_trips():
    from pndm.schedules import ScheduleSpec

    spec = ScheduleSpec("quad", 500)
    assert (spec.beta_start, spec.beta_end) == (1e-4, 0.02)
    assert ScheduleSpec.from_dict(spec.to_dict()) == spec
    assert ScheduleSpec.from_dict({"name": "linear", "T": 1000}) == ScheduleSpec()  # pndm-engine/1
    custom = ScheduleSpec.from_dict({"name": "custom", "T": 3, "beta_start": None, "beta_end": None,
                                     "betas": [0.1, 0.2, 0.3]})
    assert custom.T == 3
    assert make_schedule(custom).alphas_cumprod.tolist() == pytest.approx([0.9, 0.72, 0.504])


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_other_beta_ranges_match_diffusers(kind):
    from diffusers import DDPMScheduler

    from pndm.schedules import schedule_from_diffusers

    config = {"beta_schedule": kind, "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 700}
    ours = make_schedule(schedule_from_diffusers(config))
    ref = DDPMScheduler(**config)
    assert ours.T == 700 and ours.spec.beta_start == 0.00085
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_trained_betas_are_a_custom_schedule():
    from pndm.schedules import schedule_from_diffusers

    betas = torch.linspace(1e-4, 0.03, 50).tolist()
    config = {"beta_schedule": "linear", "trained_betas": betas, "num_train_timesteps": 50}
    spec = schedule_from_diffusers(config)
    assert spec.name == "custom" and spec.T == 50
    assert torch.allclose(make_schedule(spec).betas, torch.tensor(betas, dtype=torch.float64))


@pytest.mark.parametrize("config, field", [
    ({"beta_schedule": "sigmoid"}, "beta_schedule='sigmoid'"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr=True"),
    ({"beta_schedule": "linear", "beta_start": 0.5, "beta_end": 0.1}, "beta range"),
])
def test_unsupported_scheduler_configs_name_the_field(config, field):
    from pndm.schedules import schedule_from_diffusers

    with pytest.raises(PndmError) as exc:
        schedule_from_diffusers(config, "scheduler_config.json")
    assert field in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kwargs, problem", [
    (dict(name="custom"), "needs its betas"),
    (dict(name="linear", betas=(0.1, 0.2)), "custom"),
    (dict(name="cosine", beta_start=1e-4), "no beta range"),
    (dict(name="custom", betas=(0.1, 1.5)), "(0, 1)"),
    (dict(name="sigmoid"), "unknown schedule"),
])
def test_bad_schedule_specs(kwargs, problem):
    from pndm.schedules import ScheduleSpec

    with pytest.raises(PndmError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        ScheduleSpec(**kwargs)
