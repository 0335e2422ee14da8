"""torchrun support: a gloo process group for the run, and gathering each rank's results on rank 0."""

from __future__ import annotations

import contextlib

import torch.distributed as dist

from pndm.runtime.seeds import DistEnv


@contextlib.contextmanager
def process_group(env: DistEnv):
    """Join torchrun's process group (gloo: CPU objects are gathered) for the body; no-op for one process."""
    if env.world_size == 1:
        yield
        return
    dist.init_process_group("gloo", rank=env.rank, world_size=env.world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


def gather_to_main(env: DistEnv, obj) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0; None on the other ranks."""
    if env.world_size == 1:
        return [obj]
    gathered = [None] * env.world_size if env.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered
