"""Where a command's time goes: run.json's ``phases`` (import, load, warm-up, sampling, writing).

- ``import``: from the start of the process (Linux: its start time in ``/proc/self/stat``, 10 ms
  resolution; elsewhere: when :mod:`pndm.cli` was imported) to the start of the command's work.
- ``load``: reading, verifying and loading the engine (cached work is skipped: ``cache`` says which).
- ``warm_up``: the first model call, which carries the backend's one-time setup (memory planning,
  kernel selection, a CUDA graph capture).
- ``sampling``: the rest of the sampling loop (model calls, solver updates, images back on the CPU).
- ``writing``: the PNGs / npz and grid.png (run.json itself is written after the record is made).
- ``total``: process start to the end of writing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

#: time.perf_counter() when this module was first imported (the fallback process start).
_IMPORTED = time.perf_counter()


def process_start() -> float:
    """The process's start on the :func:`time.perf_counter` clock (best effort, see module doc)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5)
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started_after_boot
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    return time.perf_counter() - max(age, 0.0)


class Phases:
    """Seconds spent per named phase, measured from the process start; ``to_dict`` for run.json."""

    ORDER = ("import", "load", "warm_up", "sampling", "writing")

    def __init__(self, start: float | None = None):
        self.start = process_start() if start is None else start
        self.seconds: dict[str, float] = {"import": time.perf_counter() - self.start}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the time spent inside the ``with`` block to phase ``name``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - began)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def to_dict(self) -> dict[str, float]:
        """The phases in order (every one of :attr:`ORDER`, 0 where nothing ran), then ``total``."""
        out = {name: round(self.seconds.get(name, 0.0), 4) for name in self.ORDER}
        out.update({k: round(v, 4) for k, v in self.seconds.items() if k not in out})
        out["total"] = round(time.perf_counter() - self.start, 4)
        return out
