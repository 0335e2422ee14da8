"""Comparison math for export verification and the checker: eps errors and image agreement.

- relative L2 error: ||eps_c - eps_r||_2 / ||eps_r||_2 over the whole batch; for a zero reference
  it is 0 when the candidate is zero too and +inf otherwise (no error is hidden by a tiny divisor);
- max abs error: max |eps_c - eps_r|;
- on 8-bit images: max and mean grey-level difference, the share of pixels within 1 level,
  and PSNR = 10 log10(255^2 / MSE) in dB (infinite for identical images).

Model-output errors are judged per range of t. The range nearest the data, t < NEAR_DATA_FRACTION * T,
may have its own (looser) limit: an output error there moves the denoised estimate
x0 = (x_t - sqrt(1-ab) eps) / sqrt(ab) (Ho et al. 2020, eq. 15) by sqrt((1-ab)/ab) <= 0.34 times
itself (sqrt(1-ab) for a v model), against 1 to 157 times at larger t (linear schedule, T = 1000),
so it barely reaches the image, and it is where quantized graphs err most in relative terms (the
output there is the small noise residue). The limits: :mod:`pndm.export.precision` (export) and
:data:`pndm.runtime.checker.THRESHOLDS`.
"""

from __future__ import annotations

import math

import torch

NEAR_DATA_FRACTION = 0.1


def is_near_data(t: float, T: int) -> bool:
    """Whether timestep ``t`` of a ``T``-step schedule lies in the range nearest the data (module doc)."""
    return t < NEAR_DATA_FRACTION * T


def eps_errors(candidate: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(relative L2, max abs) of ``candidate`` against ``reference`` (computed in float64)."""
    c, r = candidate.double().cpu(), reference.double().cpu()
    diff = c - r
    norm = r.norm().item()
    rel = diff.norm().item() / norm if norm > 0 else (0.0 if diff.norm().item() == 0 else math.inf)
    return rel, diff.abs().max().item()


def error_stats(candidate: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """:func:`eps_errors` as ``{"rel_l2": ..., "max_abs": ...}`` (the manifest's verification entries)."""
    rel, max_abs = eps_errors(candidate, reference)
    return {"rel_l2": rel, "max_abs": max_abs}


def image_agreement(candidate: torch.Tensor, reference: torch.Tensor) -> dict:
    """Agreement of two uint8 image batches of equal shape (grey levels 0..255)."""
    diff = (candidate.to(torch.int16) - reference.to(torch.int16)).abs()
    mse = diff.double().pow(2).mean().item()
    return {
        "max_grey_diff": int(diff.max().item()),
        "mean_grey_diff": diff.double().mean().item(),
        "within_1_share": (diff <= 1).double().mean().item(),
        "psnr_db": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
    }


def has_nonfinite(eps: torch.Tensor) -> bool:
    """True if ``eps`` holds a NaN or an Inf."""
    return not bool(torch.isfinite(eps).all())
