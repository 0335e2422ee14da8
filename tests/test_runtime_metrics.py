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


def test_checker_judges_near_data_calls_by_their_own_limit():
    """int8: a lockstep call at t < 0.1 T is held to lockstep_rel_l2_near_data, the rest to
    lockstep_rel_l2; a precision without a near-data limit holds every call to one."""
    from pndm.runtime.checker import THRESHOLDS, CheckReport, _verdict, format_report

    th = THRESHOLDS["int8"]
    assert th.lockstep_rel_l2_near_data > th.lockstep_rel_l2
    images = {"max_grey_diff": 3, "mean_grey_diff": 0.5, "psnr_db": 40.0, "within_1_share": 0.9}

    def verdict(precision, near_error, far_error):
        candidate = {"path": "e", "backend": "onnx", "precision": precision, "device": "cpu"}
        report = CheckReport(candidate=candidate,
                             reference={"path": "r", "backend": "torch"}, method="ddim", steps=2, nfe=2,
                             seeds=[0], precision=precision, thresholds=THRESHOLDS[precision], T=1000,
                             images=dict(images),
                             lockstep=[{"index": 0, "t": 500.0, "rel_l2": far_error, "max_abs": 0.1},
                                       {"index": 1, "t": 0.0, "rel_l2": near_error, "max_abs": 0.1}])
        _verdict(report)
        return report

    near, far = th.lockstep_rel_l2_near_data, th.lockstep_rel_l2
    assert verdict("int8", 0.9 * near, 0.9 * far).passed
    failed = verdict("int8", 1.1 * near, 0.5 * far)
    assert failed.failures == [f"lockstep eps relative L2 {1.1 * near:.3g} at NFE 1 (t=0) exceeds {near:g}"]
    assert not verdict("int8", 0.5 * near, 1.1 * far).passed
    assert "lockstep worst rel L2, t < 100" in format_report(failed)
    fp8 = THRESHOLDS["fp8"]
    assert fp8.lockstep_rel_l2_near_data is None
    assert not verdict("fp8", 1.1 * fp8.lockstep_rel_l2, 0.0).passed
