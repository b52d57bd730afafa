"""Sharded maps: rows 0..N-1 computed in shards across the ranks and gathered, the one copy of that loop.

Rank r takes the contiguous range :func:`rank_range` (ceil(N / world_size) rows each, the last ones shorter) and
runs it in batches of at most ``batch_size`` (capped at the per-rank share). Every rank runs the same number of
equal batches - the last one padded with row 0 - so one compiled graph and the same collectives serve them all;
after every batch the ranks all-gather it, and each row lands at its own index. With one process it is plain
batching. Users: ``inference.generate`` (the EMA grids and evaluation samples during training, ``tools/sample.py``,
``bench/sampling_quality.py``) and the Inception features of ``eval.features``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous row indices [start, stop) of ``rank``: ceil(N / world_size) each, the last ones shorter."""
    share = -(-num_samples // world_size)
    return min(rank * share, num_samples), min((rank + 1) * share, num_samples)


def shard_plan(num_samples: int, world_size: int, batch_size: int) -> tuple[int, int]:
    """(batch size capped at the per-rank share, number of batches per rank) for :func:`rank_range` shards."""
    share = -(-num_samples // world_size)
    batch_size = min(batch_size, share)
    return batch_size, -(-share // batch_size)


def batch_indices(num_samples: int, rank: int, world_size: int, batch: int, batch_size: int):
    """(indices int64 [batch_size], valid bool [batch_size]) of ``rank``'s batch number ``batch``; invalid rows pad
    the last batch of a rank."""
    start, stop = rank_range(num_samples, rank, world_size)
    indices = start + batch * batch_size + np.arange(batch_size)
    return indices, indices < stop


def gathered_batch_indices(num_samples: int, world_size: int, batch: int, batch_size: int):
    """(indices, valid) [world_size * batch_size] of the rows an all-gather of every rank's batch ``batch`` gives."""
    parts = [batch_indices(num_samples, q, world_size, batch, batch_size) for q in range(world_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def sharded_map(
    fn: Callable,
    *,
    num_samples: int,
    batch_size: int,
    out: np.ndarray | None,
    convert: Callable[[np.ndarray], np.ndarray] | None = None,
    after_batch: Callable[[int, int], None] | None = None,
) -> None:
    """Rows 0..num_samples-1 of ``fn``, computed in shards on every rank and gathered.

    ``fn(indices, batch)``: indices int64 [batch_size] (padding rows repeat row 0), ``batch`` its number on this rank
    -> a device tensor [batch_size, ...] of those rows. ``out``: an array [num_samples, ...] that receives the rows
    (``convert``-ed on the host first, e.g. to uint8), or None on a rank that only takes part. Every rank must call
    it with the same arguments (the all-gathers pair up batch by batch); ``after_batch(done, batches)`` is called
    after each gathered batch.
    """
    from . import all_gather_cell, rank, world_size

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
    r, w = rank(), world_size()
    batch_size, batches = shard_plan(num_samples, w, batch_size)
    gather = all_gather_cell()
    for b in range(batches):
        indices, valid = batch_indices(num_samples, r, w, b, batch_size)
        rows = gather(fn(np.where(valid, indices, 0), b)).asnumpy()
        if out is not None:
            indices, valid = gathered_batch_indices(num_samples, w, b, batch_size)  # every rank's batch b, in order
            out[indices[valid]] = (rows if convert is None else convert(rows))[valid]
        if after_batch is not None:
            after_batch(b + 1, batches)
