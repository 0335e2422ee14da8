"""pndm.calibration: real ``(x_t, t)`` pairs taken along solver trajectories of a model.

Used to verify reduced-precision engines at export (per range of t) and as INT8/FP8 calibration
data (forward-process pairs for random weights). See :mod:`pndm.calibration.pairs`.
"""

from pndm.calibration.pairs import (
    CalibrationSet,
    check_method,
    collect_pairs,
    forward_process_pairs,
    load_pairs,
    save_pairs,
)

__all__ = [
    "CalibrationSet", "check_method", "collect_pairs", "forward_process_pairs", "load_pairs", "save_pairs",
]
