"""CPU thread and batch defaults for sampling.

Threads: one per *physical* core this process may run on (hyper-threads share a core's vector
units, and a second thread per core slows conv/matmul kernels down), divided among the torchrun
processes of this machine (``LOCAL_WORLD_SIZE``). torch and ONNX Runtime both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Largest default batch on the CPU: past it images/s no longer grows (docs/BENCHMARKS.md) and
#: memory does.
CPU_BATCH_CAP = 64


def physical_cores() -> int:
    """Physical cores among the CPUs this process may use (Linux sysfs; else the logical count)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            return len(cpus) or os.cpu_count() or 1
    return len(cores) or os.cpu_count() or 1


def default_threads() -> int:
    """Intra-op threads for one process: its share of the physical cores (see module doc)."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, physical_cores() // max(local_processes, 1))


def engine_batch(engine, batch: int | None, num_images: int) -> int:
    """Images per call of ``engine``: ``batch`` (``--batch``), or when None all ``num_images`` in one call
    where the engine's profile allows it (fewest calls), capped at :data:`CPU_BATCH_CAP` on the CPU. A
    batch outside the profile raises the engine's one-line error, even where ``num_images`` is smaller."""
    if batch is None:
        lo, hi = engine.batch_range
        cap = hi if engine.device.type == "cuda" else min(hi, CPU_BATCH_CAP)
        batch = max(lo, min(num_images, cap))
    engine.check_batch(batch)
    return batch
