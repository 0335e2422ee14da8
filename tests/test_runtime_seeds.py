"""Seeds -> noise, batching and torchrun sharding."""

import pytest
import torch

from pndm.errors import PndmError
from pndm.runtime.seeds import DistEnv, batches, dist_env, image_noise, seed_list, shard_seeds


def test_seed_list_is_consecutive_from_seed():
    assert seed_list(5, 4) == [5, 6, 7, 8]
    with pytest.raises(PndmError, match="--num"):
        seed_list(0, 0)


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("num", [1, 4, 7, 13])
def test_shards_partition_the_seeds(world, num):
    seeds = seed_list(100, num)
    shards = [shard_seeds(seeds, r, world) for r in range(world)]
    flat = [s for shard in shards for s in shard]
    assert sorted(flat) == seeds  # no gaps
    assert len(flat) == len(set(flat))  # no duplicates
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1  # balanced


def test_shard_rejects_bad_rank():
    with pytest.raises(PndmError, match="rank 2 of world size 2"):
        shard_seeds([1, 2], 2, 2)


def test_batches_cover_in_order():
    assert batches(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_noise_depends_only_on_the_seed():
    shape = (3, 8, 8)
    together = image_noise([3, 4, 5], shape)
    assert together.dtype == torch.float32 and together.shape == (3, *shape)
    assert torch.equal(image_noise([4], shape)[0], together[1])
    assert torch.equal(image_noise([5, 3], shape)[1], together[0])
    assert not torch.equal(together[0], together[1])
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(4))
    assert torch.equal(together[1], expected)


def test_dist_env_reads_torchrun_variables():
    assert dist_env({}) == DistEnv(0, 1, 0)
    env = dist_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (1, 2, 1, False)
    with pytest.raises(PndmError):
        dist_env({"RANK": "x"})
    with pytest.raises(PndmError):
        dist_env({"RANK": "3", "WORLD_SIZE": "2"})
