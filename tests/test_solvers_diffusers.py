"""Equivalence with an independent implementation: diffusers' schedulers driving the same small
random UNet2DModel (float64) must produce the same sample as our samplers."""

import pytest
import torch

from pndm.schedules import make_schedule
from pndm.solvers import sample, time_grid

STEPS = (10, 20, 50)
TOL = 1e-5


@pytest.fixture(scope="module")
def unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).double().eval()

    @torch.no_grad()
    def eps(x, t):
        return model(x, t).sample

    return eps


@pytest.fixture(scope="module")
def schedule():
    return make_schedule("linear", 1000)


def _x_T(seed=0):
    return torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _rel_max_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _use_float64_schedule(scheduler, schedule):
    """diffusers keeps alpha_bar in float32; give it ours (float64) so only the stepping differs."""
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


def _drive(scheduler, eps, x):
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(eps(x, t.expand(x.shape[0]).double()), int(t), x).prev_sample
    return x


def _pndm_reference(eps, x, steps, schedule, skip_prk):
    from diffusers import PNDMScheduler

    s = PNDMScheduler(num_train_timesteps=1000, beta_schedule="linear", skip_prk_steps=skip_prk,
                      set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    s.set_timesteps(steps)
    _use_float64_schedule(s, schedule)
    return _drive(s, eps, x)


@pytest.mark.parametrize("steps", STEPS)
def test_f_pndm_matches_diffusers_pndm_with_prk(unet, schedule, steps):
    x = _x_T()
    ref = _pndm_reference(unet, x, steps, schedule, skip_prk=False)
    assert _rel_max_diff(sample(unet, x, "f-pndm", steps, schedule), ref) < TOL


@pytest.mark.parametrize("steps", STEPS)
def test_plms_matches_diffusers_pndm_skip_prk(unet, schedule, steps):
    x = _x_T(1)
    ref = _pndm_reference(unet, x, steps, schedule, skip_prk=True)
    assert _rel_max_diff(sample(unet, x, "plms", steps, schedule), ref) < TOL


@pytest.mark.parametrize("steps", STEPS)
def test_ddim_matches_diffusers_ddim(unet, schedule, steps):
    from diffusers import DDIMScheduler

    s = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                      set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    s.set_timesteps(steps)
    _use_float64_schedule(s, schedule)
    x = _x_T(2)
    assert _rel_max_diff(sample(unet, x, "ddim", steps, schedule), _drive(s, unet, x)) < TOL


def _on_our_grid(scheduler, schedule, steps):
    """Put a sigma-based diffusers scheduler on our grid (its own "leading" spacing uses T // (N+1))."""
    scheduler.set_timesteps(steps)
    ts = time_grid(steps, schedule.T)[:-1].long()
    ab = schedule.alphas_cumprod[ts]
    scheduler.timesteps = ts
    scheduler.sigmas = torch.cat([((1 - ab) / ab).sqrt(), torch.zeros(1, dtype=torch.float64)])
    return scheduler


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("method, order", [("dpm-solver++2m", 2), ("dpm-solver++3m", 3)])
def test_dpm_solver_pp_matches_diffusers(unet, schedule, steps, method, order):
    from diffusers import DPMSolverMultistepScheduler

    s = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=order,
                                    algorithm_type="dpmsolver++", solver_type="midpoint",
                                    lower_order_final=True, final_sigmas_type="zero")
    x = _x_T(3)
    ref = _drive(_on_our_grid(s, schedule, steps), unet, x)
    assert _rel_max_diff(sample(unet, x, method, steps, schedule, grid="leading"), ref) < TOL


@pytest.mark.parametrize("steps", STEPS)
def test_unipc_matches_diffusers(unet, schedule, steps):
    from diffusers import UniPCMultistepScheduler

    s = UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", solver_order=3,
                                solver_type="bh2", predict_x0=True, lower_order_final=True,
                                final_sigmas_type="zero")
    x = _x_T(4)
    ref = _drive(_on_our_grid(s, schedule, steps), unet, x)
    assert _rel_max_diff(sample(unet, x, "unipc", steps, schedule, grid="leading"), ref) < TOL
