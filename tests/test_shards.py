"""parallel.shards: the shard plan of every rank, and the sharded map reassembling rows in order (one process)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from ddpm_dist.parallel.shards import batch_indices, gathered_batch_indices, rank_range, shard_plan, sharded_map

pytestmark = pytest.mark.usefixtures("cpu_graph")


@pytest.mark.parametrize("num,world,batch", [(10, 1, 4), (10, 3, 2), (7, 4, 16), (1, 2, 3)])
def test_every_row_is_computed_once_by_one_rank(num, world, batch):
    batch, batches = shard_plan(num, world, batch)
    seen = []
    for b in range(batches):
        rows, valid = gathered_batch_indices(num, world, b, batch)
        seen += list(rows[valid])
        for r in range(world):
            idx, ok = batch_indices(num, r, world, b, batch)
            start, stop = rank_range(num, r, world)
            assert len(idx) == batch and all(start <= i < stop for i in idx[ok])
    assert sorted(seen) == list(range(num))


def test_sharded_map_puts_each_row_at_its_index_and_pads_the_last_batch():
    calls, done = [], []

    def rows(indices: np.ndarray, batch: int):
        calls.append((batch, list(indices)))
        return ms.Tensor(np.stack([indices * 10.0, -indices], axis=1).astype(np.float32))

    out = np.zeros((5, 2), np.float32)
    sharded_map(rows, num_samples=5, batch_size=2, out=out, convert=lambda a: a + 1,
                after_batch=lambda k, n: done.append((k, n)))  # fmt: skip
    assert calls == [(0, [0, 1]), (1, [2, 3]), (2, [4, 0])]  # the last batch padded with row 0
    np.testing.assert_array_equal(out, np.stack([np.arange(5) * 10.0 + 1, 1 - np.arange(5)], axis=1))
    assert done == [(1, 3), (2, 3), (3, 3)]
    sharded_map(rows, num_samples=2, batch_size=8, out=None)  # a rank that only takes part
    assert calls[-1] == (0, [0, 1])  # the batch is capped at the share
    with pytest.raises(ValueError, match="must be >= 1"):
        sharded_map(rows, num_samples=0, batch_size=2, out=None)
