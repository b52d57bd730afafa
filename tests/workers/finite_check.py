"""Worker for the cross-rank agreement test of the train step's finite check, and of ``parallel.mismatched_ranks``:
every rank gives ``FiniteCheck`` gradients that differ by rank (as non-deterministic reductions could make them), once
all finite and once with an inf on the last rank only, and writes what it returned to OUT/rank<r>.npz.

usage: finite_check.py OUT
"""

import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor

from ddpm_dist import parallel
from ddpm_dist.train.overflow import FiniteCheck, overflow_mode


def main() -> int:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rank, world = parallel.init()
    check = FiniteCheck(mode=overflow_mode("CPU"), rank=rank, world_size=world)
    base = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    grads = (Tensor(base * (1 + rank * 1e-3)), Tensor(np.full(4, 0.5 + rank, np.float32)))
    norm, finite = check(grads)
    bad = base.copy()
    if rank == world - 1:
        bad[0, 0] = np.inf
    bad_norm, bad_finite = check((Tensor(bad), grads[1]))
    local = float(np.sqrt(sum(float((g.asnumpy().astype(np.float64) ** 2).sum()) for g in grads)))
    mismatch = parallel.mismatched_ranks(np.array([1.0, 2.0 + (rank == world - 1)], np.float32))
    np.savez(
        Path(sys.argv[1]) / f"rank{rank}.npz",
        norm=norm.asnumpy(), finite=finite.asnumpy(), local=local,
        bad_norm=bad_norm.asnumpy(), bad_finite=bad_finite.asnumpy(), mismatch=np.array(mismatch, np.int64),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
