"""PNDM-family samplers over any eps(x, t) callable.

``sample(eps, x_T, method, steps, schedule)`` returns x_0; ``solve`` also returns the number of
model evaluations; ``METHODS`` lists every method with its NFE formula and default grid;
``GRIDS`` lists the time grids (``grid=`` of sample/solve); ``time_grid`` is the leading grid.
See docs/SOLVERS.md for formulas and accuracy.
"""

from pndm.solvers.api import Solution, sample, solve
from pndm.solvers.grid import GRIDS, GridInfo, make_grid, time_grid
from pndm.solvers.registry import METHODS, MethodInfo, steps_for_nfe

__all__ = ["GRIDS", "METHODS", "GridInfo", "MethodInfo", "Solution", "make_grid", "sample", "solve",
           "steps_for_nfe", "time_grid"]
