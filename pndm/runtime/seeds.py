"""Seeds in, noise out: image i of a run uses seed S+i, whatever the backend, batch or rank.

Noise is drawn on the CPU in float32 from a generator seeded per image (like EDM's
``generate.py --seeds``) and only then moved to the device, so the same seed gives the same
x_T on every device and in every batch composition. Under ``torchrun`` the seeds are split
across ranks with :func:`shard_seeds` (no gaps, no duplicates).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pndm.errors import PndmError

SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def seed_list(seed: int, num: int) -> list[int]:
    """Seeds S, S+1, ..., S+num-1."""
    if num < 1:
        raise PndmError(f"--num must be at least 1, got {num}")
    if seed < 0:
        raise PndmError(f"--seed must be non-negative, got {seed}")
    if seed + num - 1 > SEED_MAX:
        raise PndmError(f"--seed {seed}: this run's seeds {seed}..{seed + num - 1} must fit in 64 bits "
                        f"(at most {SEED_MAX}): use --seed {SEED_MAX - num + 1} or less")
    return list(range(seed, seed + num))


def check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise PndmError(f"invalid distributed setup: rank {rank} of world size {world}")


def shard_seeds(seeds: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s seeds: every ``world``-th one starting at ``rank`` (the shards partition ``seeds``)."""
    check_rank(rank, world)
    return seeds[rank::world]


def batches(items: list, size: int) -> list[list]:
    """Consecutive chunks of ``size`` (the last may be shorter)."""
    if size < 1:
        raise PndmError(f"--batch must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed: x_T, then (eta > 0) its step noise."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def draw_noise(generators: list[torch.Generator], shape: tuple[int, ...],
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``randn(shape)`` in float32 from each generator, stacked and moved to ``device``."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(device)


def image_noise(seeds: list[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """x_T for a batch: ``randn(shape)`` from a CPU float32 generator seeded with each seed, stacked."""
    return draw_noise(image_generators(seeds), shape, device)


@dataclass(frozen=True)
class DistEnv:
    """The torchrun environment (a single process when the variables are absent)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_env(environ=None) -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK as set by ``torchrun``."""
    environ = os.environ if environ is None else environ
    try:
        env = DistEnv(
            int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)), int(environ.get("LOCAL_RANK", 0))
        )
    except ValueError as e:
        raise PndmError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({e})") from e
    check_rank(env.rank, env.world_size)
    return env
