"""The samplers of data/sampling.py: which images each rank reads, in which order."""

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from alexnet_pl.data.sampling import ResumableShuffleSampler, ShardSampler


def shares(length: int, world_size: int, seed: int = 7, epoch: int = 0) -> list[list[int]]:
    """Every rank's order of one epoch."""
    samplers = [ResumableShuffleSampler(length, seed, r, world_size) for r in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


def test_the_ranks_of_an_epoch_cover_every_image_and_pad_only_by_repeating_its_start():
    ranks = shares(10, 4)  # 10 images over 4 ranks: 3 each, the first 2 of the order again
    assert [len(share) for share in ranks] == [3, 3, 3, 3]
    order = [share[i] for i in range(3) for share in ranks]  # the permutation, read across ranks
    assert sorted(order[:10]) == list(range(10))
    assert order[10:] == order[:2]
    assert sorted(sum(shares(12, 4), [])) == list(range(12))  # divisible: disjoint, no padding


def test_the_order_is_distributed_samplers_and_depends_on_seed_and_epoch_alone():
    reference = DistributedSampler(range(23), num_replicas=3, rank=1, shuffle=True, seed=5)
    ours = ResumableShuffleSampler(23, seed=5, rank=1, world_size=3)
    for epoch in (0, 4):
        reference.set_epoch(epoch)
        ours.set_epoch(epoch)
        torch.manual_seed(epoch)  # the global generator plays no part
        assert list(ours) == list(reference) == list(ours)
    assert shares(23, 1, epoch=0) != shares(23, 1, epoch=1)
    assert shares(23, 1, seed=1) != shares(23, 1, seed=2)


@pytest.mark.parametrize("world_size", [2, 4])
def test_each_step_trains_on_the_same_images_whatever_the_number_of_processes(world_size):
    global_batch, length = 8, 45
    one = list(BatchSampler(shares(length, 1)[0], global_batch, drop_last=True))
    per_rank = [
        list(BatchSampler(share, global_batch // world_size, drop_last=True))
        for share in shares(length, world_size)
    ]
    for step, images in enumerate(one):
        assert sorted(sum((batches[step] for batches in per_rank), [])) == sorted(images)


def test_a_resumed_epoch_skips_the_completed_batches_once_and_keeps_its_length():
    sampler = ResumableShuffleSampler(20, seed=3, rank=1, world_size=2)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.resume_at(epoch=2, samples_done=4)
    assert len(sampler) == 10  # Lightning counts the epoch's batches from the full length
    assert list(sampler) == whole[4:]
    assert list(sampler) == whole  # only the first pass after the resume is short

    sampler.resume_at(epoch=2, samples_done=40)  # a checkpoint at the end of the epoch's batches
    assert list(sampler) == []

    sampler.resume_at(epoch=2, samples_done=4)
    sampler.set_epoch(3)  # Lightning moved on to the next epoch: it is whole
    next_epoch = list(sampler)
    assert len(next_epoch) == 10 and next_epoch != whole
    sampler.set_epoch(2)
    assert list(sampler) == whole  # and the skip was used up

    with pytest.raises(ValueError, match="cannot skip -1 samples"):
        sampler.resume_at(epoch=2, samples_done=-1)


def test_validation_shards_are_disjoint_cover_every_image_and_are_not_padded():
    shards = [list(ShardSampler(19, rank, 4)) for rank in range(4)]
    assert [len(shard) for shard in shards] == [5, 5, 5, 4]
    assert sorted(sum(shards, [])) == list(range(19))
    assert list(ShardSampler(5)) == [0, 1, 2, 3, 4]  # one process: the folder's order
