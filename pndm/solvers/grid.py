"""The time grid every fixed-step sampler walks."""

from __future__ import annotations

import torch

from pndm.errors import PndmError

#: Grid value that stands for the clean image (alpha_bar = 1) after the last model step.
CLEAN = -1.0


def time_grid(steps: int, T: int) -> torch.Tensor:
    """Descending timesteps for ``steps`` model steps: ``t_i = i * (T // steps)``, ``i = N-1 .. 0``,
    followed by :data:`CLEAN` (``-1``, alpha_bar = 1).

    This is the "leading" spacing of DDIM/PNDM: exactly ``steps`` points even when ``steps`` does
    not divide ``T`` (then the top point is below ``T - 1``). Returns ``steps + 1`` float64 values.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise PndmError(f"steps must be an integer in [1, T={T}] (got {steps!r})")
    stride = T // steps
    ts = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * stride
    return torch.cat([ts, torch.tensor([CLEAN], dtype=torch.float64)])
