"""Sampling after training, on one card or data-parallel.

:func:`generate` draws samples ``0 .. num_samples-1`` split over the ranks (``parallel.shards``); sample n depends
only on (seed, n) (see ``diffusion.keyed_noise``), so the images do not depend on the batch size or the number of
cards. Checkpoints are read by ``checkpoint.convert.load_for_sampling``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import Config


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (round((x + 1) * 127.5), clipped)."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def generate(
    cfg: Config,
    net,
    *,
    sampler: str,
    steps: int,
    eta: float,
    num_samples: int,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    all_ranks: bool = False,
) -> np.ndarray | None:
    """Samples ``0 .. num_samples-1`` as uint8 [N, H, W, C] on rank 0 (None on the other ranks; with ``all_ranks``
    on every rank, e.g. to evaluate them in shards).

    Every rank draws its share in batches of ``batch_size`` (see ``parallel.shards.sharded_map``). ``steps``:
    respaced sampling steps (0: the full schedule). ``progress(done, total)`` is called after every sampler step
    with this rank's step counts.
    """
    from .diffusion import build_keyed_sampler
    from .parallel import rank, world_size
    from .parallel.shards import shard_plan, sharded_map

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1 (got {num_samples}, {batch_size})")
    keyed = build_keyed_sampler(cfg, net, sampler=sampler, steps=steps, eta=eta)
    total = shard_plan(num_samples, world_size(), batch_size)[1] * keyed.num_steps

    def draw(indices: np.ndarray, batch: int):
        done = batch * keyed.num_steps
        tick = None if progress is None else (lambda k: progress(done + k, total))
        return keyed.sample(indices, seed=seed, progress=tick)

    keep = rank() == 0 or all_ranks
    s, c = cfg.data.image_size, cfg.data.channels
    out = np.zeros((num_samples, s, s, c), np.uint8) if keep else None
    sharded_map(draw, num_samples=num_samples, batch_size=batch_size, out=out, convert=to_uint8)
    return out
