"""A resumable, shardable data order: one permutation per (seed, epoch), read as an endless stream.

Training consumes ``batch_size`` items per iteration from the stream
``perm(seed, 0) ++ perm(seed, 1) ++ ...`` where ``perm(seed, e)`` is
``np.random.default_rng([seed, e]).permutation(n)``. The position in the stream (items consumed)
is all a checkpoint needs to continue exactly. Each global batch is cut into contiguous shards,
one per process (like ``DistributedSampler`` but on the batch, so that any number of processes
sees the same global batch), and each shard into ``iter_size`` micro-batches.

Items are ``(epoch, index)`` pairs; ``EpochDataset`` sets the dataset's epoch before reading an
item, so augmentation randomness (``default_rng([seed, epoch, index])`` in the dataset) does not
depend on worker processes or on where training was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The data order of one epoch: a permutation of ``range(n)``."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def stream_items(n: int, seed: int, start: int, count: int) -> list[tuple[int, int]]:
    """Items ``start .. start + count - 1`` of the endless stream, as ``(epoch, index)``."""
    out: list[tuple[int, int]] = []
    pos = start
    while len(out) < count:
        epoch, offset = divmod(pos, n)
        perm = epoch_permutation(n, seed, epoch)
        take = min(n - offset, count - len(out))
        out.extend((epoch, int(i)) for i in perm[offset : offset + take])
        pos += take
    return out


class MicroBatchSampler(torch.utils.data.Sampler):
    """Yields this process's micro-batches (lists of ``(epoch, index)``) from ``start_iter`` on.

    Per iteration: global batch = the next ``batch_size`` stream items, starting at stream
    position ``start_position`` (default ``start_iter * batch_size``);
    this rank's shard = the rank-th of ``world_size`` contiguous equal parts; then ``iter_size``
    contiguous micro-batches of it.
    """

    def __init__(
        self,
        num_items: int,
        *,
        batch_size: int,
        iter_size: int = 1,
        seed: int = 0,
        start_iter: int = 0,
        start_position: int | None = None,
        max_iter: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_items < 1:
            raise ValueError("the dataset is empty")
        if batch_size % (world_size * iter_size):
            raise ValueError("batch_size must be divisible by world_size * iter_size")
        self.num_items = num_items
        self.batch_size = batch_size
        self.iter_size = iter_size
        self.seed = seed
        self.start_iter = start_iter
        self.start_position = start_iter * batch_size if start_position is None else start_position
        self.max_iter = max_iter
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return max(self.max_iter - self.start_iter, 0) * self.iter_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        shard = self.batch_size // self.world_size
        micro = shard // self.iter_size
        for it in range(self.start_iter, self.max_iter):
            pos = self.start_position + (it - self.start_iter) * self.batch_size
            items = stream_items(self.num_items, self.seed, pos, self.batch_size)
            mine = items[self.rank * shard : (self.rank + 1) * shard]
            for k in range(self.iter_size):
                yield mine[k * micro : (k + 1) * micro]


class EpochDataset(torch.utils.data.Dataset):
    """Wraps a dataset with ``set_epoch``; indexed by ``(epoch, index)`` pairs."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]
