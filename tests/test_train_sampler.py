"""The resumable data order: per-epoch permutations, sharding, micro-batches, resume position."""

from __future__ import annotations

import numpy as np

from deeplabv1.train.sampler import (
    EpochDataset,
    MicroBatchSampler,
    epoch_permutation,
    stream_items,
)


def test_stream_is_one_permutation_per_epoch():
    items = stream_items(7, seed=3, start=0, count=7 * 3 + 2)
    for epoch in range(3):
        chunk = items[epoch * 7 : (epoch + 1) * 7]
        assert [e for e, _ in chunk] == [epoch] * 7
        assert [i for _, i in chunk] == list(np.random.default_rng([3, epoch]).permutation(7))
        assert sorted(i for _, i in chunk) == list(range(7))
    assert items[21:] == [(3, int(i)) for i in epoch_permutation(7, 3, 3)[:2]]
    # any window of the stream equals the same slice of the whole stream
    assert stream_items(7, 3, start=5, count=10) == items[5:15]


def test_shards_and_micro_batches_cover_the_global_batch_exactly():
    n, batch, iters = 11, 6, 5
    single = list(MicroBatchSampler(n, batch_size=batch, max_iter=iters, seed=1))
    assert len(single) == iters and all(len(b) == batch for b in single)
    sharded = [list(MicroBatchSampler(n, batch_size=batch, iter_size=3, max_iter=iters, seed=1,
                                      rank=r, world_size=2)) for r in range(2)]
    assert all(len(s) == iters * 3 for s in sharded)
    for it in range(iters):
        parts = [mb for r in range(2) for mb in sharded[r][it * 3 : (it + 1) * 3]]
        assert all(len(mb) == 1 for mb in parts)
        assert [x for mb in parts for x in mb] == single[it]


def test_resume_position_continues_the_same_stream():
    full = list(MicroBatchSampler(5, batch_size=3, max_iter=8, seed=0))
    tail = list(MicroBatchSampler(5, batch_size=3, max_iter=8, seed=0, start_iter=3))
    assert tail == full[3:]
    shifted = list(MicroBatchSampler(5, batch_size=3, max_iter=8, seed=0, start_iter=3,
                                     start_position=10))
    assert shifted[0] == stream_items(5, 0, 10, 3)


class _Recorder:
    def __init__(self):
        self.epoch = None

    def __len__(self):
        return 4

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, i):
        return (self.epoch, i)


def test_epoch_dataset_sets_the_epoch_of_each_item():
    ds = EpochDataset(_Recorder())
    assert len(ds) == 4
    assert ds[(2, 3)] == (2, 3) and ds[(0, 1)] == (0, 1)
