"""Worker for the gradient-reducer test: every rank builds the same parameter list (a conv kernel, a bias, a matrix,
a scalar), fills each gradient with values that depend on the rank, and writes what ``parallel.grad_reducer`` and
MindSpore's own ``nn.DistributedGradReducer`` return, beside the numpy mean over ranks, to OUT/rank<r>.npz.
The same run checks ``parallel.broadcast_host``: arrays of several dtypes (-0.0, NaN and inf among them; one larger
than a broadcast chunk) whose values depend on the rank; what each rank received is written as ``bcast<i>``.

usage: grad_reduce.py OUT
"""

import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from ddpm_dist import parallel

SHAPES = [(4, 2, 3, 3), (4,), (5, 3), ()]


def grads_of(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def to_broadcast(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7 + rank)
    special = np.array([-0.0, np.nan, np.inf, -np.inf, 1e-45, rank], np.float32)
    big = rng.standard_normal(parallel.BROADCAST_WORDS + 12345).astype(np.float32)  # two chunks
    ints = rng.integers(-(2**62), 2**62, size=(3, 5), dtype=np.int64)
    return [special, big, ints, np.float16([rank, -0.0, 65504]), np.array(rank % 2 == 0), np.zeros((0, 3), np.int32)]


def main() -> int:
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rank, world = parallel.init()
    params = [Parameter(Tensor(np.zeros(s, np.float32)), name=f"p{i}") for i, s in enumerate(SHAPES)]
    grads = tuple(Tensor(g) for g in grads_of(rank))
    ours = parallel.grad_reducer(params)(grads)
    theirs = nn.DistributedGradReducer(params, mean=True, degree=world)(grads)
    expected = [np.mean([grads_of(r)[i] for r in range(world)], axis=0) for i in range(len(SHAPES))]
    out = {"kind": np.array(type(parallel.grad_reducer(params)).__name__)}
    for i in range(len(SHAPES)):
        out[f"ours{i}"], out[f"theirs{i}"], out[f"expected{i}"] = ours[i].asnumpy(), theirs[i].asnumpy(), expected[i]
    for i, got in enumerate(parallel.broadcast_host(to_broadcast(rank))):
        out[f"bcast{i}"] = got
    np.savez(Path(sys.argv[1]) / f"rank{rank}.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
