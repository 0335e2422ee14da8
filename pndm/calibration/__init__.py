"""pndm.calibration: real ``(x_t, t)`` pairs taken along solver trajectories of a model.

Used to verify reduced-precision engines at export (per range of t) and, later, as
INT8/FP8 calibration data. See :mod:`pndm.calibration.pairs`.
"""

from pndm.calibration.pairs import CalibrationSet, collect_pairs, load_pairs, save_pairs

__all__ = ["CalibrationSet", "collect_pairs", "load_pairs", "save_pairs"]
