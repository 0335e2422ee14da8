"""The checker's comparison math on inputs with known answers."""

import math

import torch

from pndm.metrics import eps_errors, has_nonfinite, image_agreement


def test_eps_errors_known_values():
    ref = torch.ones(2, 3, 4, 4)
    cand = ref.clone()
    cand[0, 0, 0, 0] = 1.5  # one element off by 0.5; ||ref|| = sqrt(96)
    rel, max_abs = eps_errors(cand, ref)
    assert math.isclose(rel, 0.5 / math.sqrt(96), rel_tol=1e-12)
    assert math.isclose(max_abs, 0.5)
    assert eps_errors(ref, ref) == (0.0, 0.0)


def test_image_agreement_known_values():
    ref = torch.full((1, 4, 4, 3), 100, dtype=torch.uint8)
    cand = ref.clone()
    cand[0, 0, 0, 0] = 103  # one pixel 3 levels off of 48
    cand[0, 1, 1, 1] = 99  # one pixel 1 level off
    m = image_agreement(cand, ref)
    assert m["max_grey_diff"] == 3
    assert math.isclose(m["mean_grey_diff"], 4 / 48)
    assert math.isclose(m["within_1_share"], 47 / 48)
    assert math.isclose(m["psnr_db"], 10 * math.log10(255**2 / (10 / 48)))
    assert image_agreement(ref, ref)["psnr_db"] == math.inf


def test_uint8_differences_do_not_wrap():
    a = torch.zeros(1, 1, 1, 1, dtype=torch.uint8)
    b = torch.full((1, 1, 1, 1), 255, dtype=torch.uint8)
    assert image_agreement(a, b)["max_grey_diff"] == 255


def test_nonfinite_detection():
    x = torch.zeros(3)
    assert not has_nonfinite(x)
    x[1] = float("inf")
    assert has_nonfinite(x)
    x[1] = float("nan")
    assert has_nonfinite(x)


def test_zero_reference_norm():
    """A zero reference: identical zero candidate -> 0, any difference -> inf (not a huge finite number)."""
    from pndm.metrics import error_stats

    zero = torch.zeros(2, 3)
    assert eps_errors(zero, zero) == (0.0, 0.0)
    assert eps_errors(torch.full((2, 3), 0.5), zero)[0] == math.inf
    assert error_stats(torch.full((2, 3), 0.5), zero) == {"rel_l2": math.inf, "max_abs": 0.5}
