"""Worker for the gradient-reducer test: every rank builds the same parameter list (a conv kernel, a bias, a matrix,
a scalar), fills each gradient with values that depend on the rank, and writes what ``parallel.grad_reducer`` and
MindSpore's own ``nn.DistributedGradReducer`` return, beside the numpy mean over ranks, to OUT/rank<r>.npz.

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
    np.savez(Path(sys.argv[1]) / f"rank{rank}.npz", **out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
