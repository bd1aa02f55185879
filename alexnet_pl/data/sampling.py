"""Which images each process reads, in which order: a function of (seed, epoch, rank, world size)
alone, so that a resumed run can continue an epoch exactly where its checkpoint left it.

Lightning's own choice (torch's RandomSampler on one process, a DistributedSampler under DDP)
restarts the epoch's permutation on a resume, and RandomSampler draws it from the global generator,
whose state no checkpoint holds. ResumableShuffleSampler is DistributedSampler's permutation with
a way to skip what the checkpoint already trained on; ShardSampler splits the validation images
without padding, so that each is counted once.
"""

from collections.abc import Iterator

from torch.utils.data import DistributedSampler, Sampler


class ResumableShuffleSampler(DistributedSampler):
    """The training order: DistributedSampler's (the epoch's permutation of all images, seeded
    with seed + epoch, padded by repeating its start to a multiple of the world size; rank r takes
    every world_size-th entry from r), with a way to start an epoch part way through.

    With a global batch B (B / world_size per process), optimizer step j of an epoch trains on
    permutation entries j*B to (j+1)*B - 1 whatever the number of processes, so skipping the first
    k batches on every rank skips exactly the images of the first k steps.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside the {world_size} processes")
        super().__init__(range(length), num_replicas=world_size, rank=rank, seed=seed)
        self._resume: tuple[int, int] | None = None  # (epoch, samples of it to skip), used once

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """The next pass over `epoch` starts after this rank's first `samples_done` samples (those
        of the batches a checkpoint already completed; a short last batch may take it past the
        end). A pass over any other epoch, and every pass after the next, is whole."""
        if samples_done < 0:
            raise ValueError(f"cannot skip {samples_done} samples: a count is never negative")
        self._resume = (epoch, samples_done)

    def __iter__(self) -> Iterator[int]:
        start = 0
        if self._resume is not None:
            resume_epoch, samples_done = self._resume
            self._resume = None
            start = samples_done if resume_epoch == self.epoch else 0
        # __len__ stays DistributedSampler's whole share, also when resuming: Lightning counts an
        # epoch's batches from the loader's length and continues its batch index where the
        # checkpoint stopped.
        return iter(list(super().__iter__())[start:])


class ShardSampler(Sampler[int]):
    """Every rank takes every world_size-th image, with no padding: unlike DistributedSampler, each
    image is counted exactly once when the ranks' metrics are summed."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
