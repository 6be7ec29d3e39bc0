"""Batch samplers and the per-epoch view schedule: which items each step and epoch take.

Every order here is a pure function of seeds and counters, never of a random state carried
between calls, so a run cut anywhere resumes with exactly the batches it would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def epoch_views(seed: int, epoch: int, num_images: int, views: int) -> np.ndarray:
    """The view each image uses in `epoch`: a per-image permutation of the views, walked one
    step per epoch and redrawn every `views` epochs, so views are used without replacement."""
    cycle, step = divmod(epoch, views)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED, cycle])))
    order = np.argsort(rng.random((num_images, views)), axis=1)
    return order[:, step].astype(np.int64)


class EpochBatches:
    """Batch sampler whose order is a pure function of (seed, epoch): resumable exactly.

    With `world` > 1 rank `rank` takes order[rank::world] of the epoch's global order; with
    `pad` that order is first wrapped round to a multiple of `world`, so every rank gets the
    same number of samples and batches (as paddle's DistributedBatchSampler); evaluation
    passes pad=False so no image is counted twice."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pad: bool = True,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside [0, {world})")
        self.size, self.batch_size = size, batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world, self.pad = rank, world, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _samples(self) -> int:
        """How many samples this rank gets per epoch."""
        if self.world == 1:
            return self.size
        if self.pad:
            return math.ceil(self.size / self.world)
        return len(range(self.rank, self.size, self.world))

    def __iter__(self) -> Iterator[list[int]]:
        order = np.arange(self.size)
        if self.shuffle:
            seq = np.random.SeedSequence([self.seed, 0x0DE2, self.epoch])
            order = np.random.Generator(np.random.PCG64(seq)).permutation(self.size)
        if self.world > 1:
            if self.pad:
                order = np.resize(order, self._samples() * self.world)  # wraps round
            order = order[self.rank :: self.world]
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self._samples() // self.batch_size
        return math.ceil(self._samples() / self.batch_size)


class ShardBatches:
    """Batch sampler over the items of the missing shards; a batch never crosses a shard."""

    def __init__(self, shard_items: list[list[int]], batch_size: int) -> None:
        self.batches = [
            list(range(start, min(start + batch_size, stop)))
            for start, stop in _spans(shard_items)
            for start in range(start, stop, batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _spans(shard_items: list[list[int]]) -> Iterator[tuple[int, int]]:
    position = 0
    for items in shard_items:
        yield position, position + len(items)
        position += len(items)
