"""PNDM-family samplers over any eps(x, t) callable.

``sample(eps, x_T, method, steps, schedule)`` returns x_0; ``solve`` also returns the number of
model evaluations; ``METHODS`` lists every method with its NFE formula; ``time_grid`` is the
grid they all walk. See docs/SOLVERS.md for formulas and accuracy.
"""

from pndm.solvers.api import Solution, sample, solve
from pndm.solvers.grid import time_grid
from pndm.solvers.registry import METHODS, MethodInfo

__all__ = ["METHODS", "MethodInfo", "Solution", "sample", "solve", "time_grid"]
