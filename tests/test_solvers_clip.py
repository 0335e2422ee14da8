"""x0 clipping (static thresholding): exact on in-range data, bounds out-of-range estimates."""

import torch

from pndm.schedules import make_schedule
from pndm.solvers import sample
from pndm.solvers.thresholding import clip_denoised

SCHEDULE = make_schedule("linear", 1000)


def test_in_range_estimate_is_unchanged_and_out_of_range_is_clipped():
    x0 = torch.tensor([0.5, -0.9, 3.0, -7.0], dtype=torch.float64).view(4, 1, 1, 1)
    t = torch.tensor([10.0, 500.0, 997.5, 999.0], dtype=torch.float64)
    ab = SCHEDULE.alpha_bar(t).view(-1, 1, 1, 1)
    eps = torch.randn(4, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    clipped = clip_denoised(x, t, eps, SCHEDULE)
    torch.testing.assert_close(clipped[:2], eps[:2])  # x0 in [-1, 1]: eps untouched
    recovered = (x - (1 - ab).sqrt() * clipped) / ab.sqrt()
    torch.testing.assert_close(recovered.flatten(), torch.tensor([0.5, -0.9, 1.0, -1.0], dtype=torch.float64))


def test_clipping_keeps_samples_in_range_and_callback_sees_raw_eps():
    """The ideal model of a point mass at x0 = 3 (outside the data range): free sampling returns 3,
    clipped sampling the nearest in-range image, 1; the callback still sees the model's own eps."""
    target = 3.0
    seen = []

    def point_mass_eps(x, t):
        ab = SCHEDULE.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        return (x - ab.sqrt() * target) / (1 - ab).sqrt()

    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    for method in ("ddim", "f-pndm", "dpm-solver++2m"):
        free = sample(point_mass_eps, x_T, method, 20, SCHEDULE)
        clipped = sample(point_mass_eps, x_T, method, 20, SCHEDULE, clip_x0=True,
                         callback=lambda x, t, e, i: seen.append(e - point_mass_eps(x, t)))
        torch.testing.assert_close(free, torch.full_like(free, target), atol=1e-4, rtol=0)
        torch.testing.assert_close(clipped, torch.ones_like(clipped), atol=1e-4, rtol=0)
    assert seen and all(float(d.abs().max()) == 0.0 for d in seen)
