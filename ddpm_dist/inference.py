"""The one generation path: samples ``0 .. N-1`` of a built keyed sampler, on one card or data-parallel.

:func:`generate` splits the samples over the ranks (``parallel.shards.sharded_map``); sample n depends only on
(seed, n) (see ``diffusion.keyed_noise``), so the images do not depend on the batch size or the number of cards.
It takes a :class:`~ddpm_dist.diffusion.sampling.KeyedSampler` that the caller built (``diffusion.build_keyed_sampler``)
and may keep: its graphs compile on the first batch and are reused by every later call with the same batch size
(the training hooks sample the same EMA network at every grid and evaluation). Users: the trainer's hooks
(``train.hooks``), ``tools/sample.py`` and ``bench/sampling_quality.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .images import to_uint8

if TYPE_CHECKING:
    from .diffusion.sampling import KeyedSampler


def generate(
    keyed: KeyedSampler,
    *,
    num_samples: int,
    batch_size: int,
    seed: int,
    uint8: bool = True,
    all_ranks: bool = False,
    progress: Callable[[int, int], None] | None = None,
    labels: np.ndarray | None = None,
) -> np.ndarray | None:
    """Samples ``0 .. num_samples-1`` of ``keyed`` with ``seed``: uint8 [N, H, W, C]
    (``images.to_uint8``), or with ``uint8=False`` the sampler's float32 [N, C, H, W] in [-1, 1]; on rank 0 (None
    on the other ranks), with ``all_ranks`` on every rank (e.g. to evaluate them in shards).

    Every rank must call it alike; each draws its share in batches of ``batch_size`` (see
    ``parallel.shards.sharded_map``). ``progress(done, total)`` is called after every sampler step with this rank's
    step counts. ``labels`` (int [num_samples], class-conditional models): the class of every sample
    (``diffusion.guidance.sample_labels``); sample n then depends on (seed, n, labels[n]).
    """
    from .parallel import rank, world_size
    from .parallel.shards import shard_plan, sharded_map

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
    if labels is not None:
        labels = np.asarray(labels, np.int64)
        if labels.shape != (num_samples,):
            raise ValueError(f"labels must be int [num_samples={num_samples}] (got shape {labels.shape})")
    total = shard_plan(num_samples, world_size(), batch_size)[1] * keyed.num_steps

    def draw(indices: np.ndarray, batch: int):
        done = batch * keyed.num_steps
        tick = None if progress is None else (lambda k: progress(done + k, total))
        if labels is None:
            return keyed.sample(indices, seed=seed, progress=tick)
        return keyed.sample(indices, seed=seed, progress=tick, labels=labels[indices])

    out = None
    if rank() == 0 or all_ranks:
        c, h, w = keyed.shape
        out = np.zeros((num_samples, h, w, c), np.uint8) if uint8 else np.zeros((num_samples, c, h, w), np.float32)
    sharded_map(draw, num_samples=num_samples, batch_size=batch_size, out=out, convert=to_uint8 if uint8 else None)
    return out
