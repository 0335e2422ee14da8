"""The quantization policy's end-to-end criterion: final images, judged as ``pndm-run check`` judges them.

Per-call limits (:mod:`pndm.export.precision`) bound each model call's error, but a solver feeds
every call's error into the next input, and whether the final images still agree is what the checker
decides. On the default model the int8 CPU form met every per-call limit with 7 float layers and
still failed the checker (2.56 grey levels against 2). So for the automatic choice of float layers
(:func:`pndm.export.quantize.choose_float_layers`) the candidate graph also samples
:data:`GUARD_SEEDS` images with the checker's default solver (F-PNDM, 20 steps), in ONNX Runtime on
the CPU, and its images are compared with the fp32 model's from the same seeds
(:func:`pndm.metrics.image_agreement`): the mean grey difference must stay within
:data:`GUARD_MARGIN` of the checker's limit for the precision, and the PSNR :data:`GUARD_PSNR_MARGIN_DB`
above its minimum, so the checker's own seeds (a different, smaller set by default) pass with room.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import torch

from pndm.images import to_uint8
from pndm.metrics import image_agreement

GUARD_SEEDS = 8
GUARD_METHOD, GUARD_STEPS = "f-pndm", 20  # the checker's defaults
GUARD_MARGIN = 0.75  # share of the checker's mean grey limit the guard allows
GUARD_PSNR_MARGIN_DB = 3.0


def _images(eps: Callable, image_shape: tuple[int, ...], schedule, seeds: list[int]) -> torch.Tensor:
    """uint8 images of ``seeds`` (x_T drawn as pndm-run draws it) through the solver over ``eps``."""
    from pndm.runtime.seeds import draw_noise, image_generators
    from pndm.solvers import sample

    x_T = draw_noise(image_generators(seeds), image_shape)
    with torch.no_grad():
        return to_uint8(sample(eps, x_T, GUARD_METHOD, GUARD_STEPS, schedule))


def trajectory_guard(calls, precision: str,
                     seeds: int = GUARD_SEEDS) -> Callable[[onnx.ModelProto], tuple[float, str]]:
    """``excess(graph) -> (ratio, description)``: ratio <= 1 when the graph's final images agree with those
    of the fp32 model behind ``calls`` (:class:`pndm.export.model_calls.ModelCalls`, which also says how
    a native output becomes eps) well enough (module doc); the fp32 images are sampled once, here."""
    from pndm.export.verify import onnx_native
    from pndm.runtime.checker import THRESHOLDS

    limits = THRESHOLDS[precision]
    image_shape, seed_list = tuple(calls.spec.image_shape), list(range(seeds))
    reference = _images(calls.eps, image_shape, calls.schedule, seed_list)
    mean_limit = GUARD_MARGIN * limits.mean_grey_diff
    psnr_floor = limits.min_psnr_db + GUARD_PSNR_MARGIN_DB

    def excess(graph: onnx.ModelProto) -> tuple[float, str]:
        images = _images(calls.eps_through(onnx_native(graph)), image_shape, calls.schedule, seed_list)
        agreement = image_agreement(images, reference)
        mean, psnr = agreement["mean_grey_diff"], agreement["psnr_db"]
        ratio = max(mean / mean_limit, psnr_floor / psnr if psnr > 0 else float("inf"))
        return ratio, (f"{GUARD_METHOD} {GUARD_STEPS} steps on {seeds} seeds: {mean:.2f} grey levels "
                       f"(guard {mean_limit:.2f}), {psnr:.1f} dB (guard {psnr_floor:.0f})")

    return excess
