"""The one seam to ``mindspore.communication``: initialisation, rank, world size, and the collectives we use.

The environment decides whether the run is distributed: msrun (and the scheduler/worker environment it sets:
``MS_ROLE``, ``MS_WORKER_NUM``) or mpirun (``OMPI_COMM_WORLD_SIZE``) start several workers; anything else is a single
process, and every helper here then degrades to the identity (``rank() == 0``, ``world_size() == 1``).
"""

from __future__ import annotations

import os
import sys
import threading

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

_STATE = {"initialised": False, "rank": 0, "world_size": 1}


def launched_distributed() -> bool:
    """True when a launcher started this process as one of several workers - or as any process of msrun's cluster.

    msrun starts a scheduler (``MS_ROLE=MS_SCHED``) beside its workers (``MS_ROLE=MS_WORKER``), also with one worker
    (``DEVICE_NUM=1``): every process with an ``MS_ROLE`` must join the cluster in ``init()``, where the scheduler
    serves the workers, or it would train the whole run alone while the real worker waits for it.
    """
    if os.environ.get("MS_ROLE"):
        return True
    for var in ("MS_WORKER_NUM", "OMPI_COMM_WORLD_SIZE", "RANK_SIZE"):
        if int(os.environ.get(var, "1") or 1) > 1:
            return True
    return False


def init() -> tuple[int, int]:
    """Initialise the collective library if launched distributed; return (rank, world_size).

    Sets the DATA_PARALLEL context with gradient averaging, so ``nn.DistributedGradReducer`` averages.
    Idempotent. Call after the device target is set.
    """
    if _STATE["initialised"]:
        return _STATE["rank"], _STATE["world_size"]
    if launched_distributed():
        from mindspore.communication import get_group_size, get_rank
        from mindspore.communication import init as comm_init

        comm_init()
        _STATE.update(rank=get_rank(), world_size=get_group_size())
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=_STATE["world_size"]
        )
    _STATE["initialised"] = True
    return _STATE["rank"], _STATE["world_size"]


def rank() -> int:
    return _STATE["rank"]


def world_size() -> int:
    return _STATE["world_size"]


def is_distributed() -> bool:
    return _STATE["world_size"] > 1


class _Identity(nn.Cell):
    def construct(self, grads):
        return grads


def grad_reducer(parameters) -> nn.Cell:
    """A Cell mapping a grad tuple to its mean over all ranks (the identity in a single process).

    On CPU: :class:`FlatGradReducer`, one all-reduce of all gradients. Elsewhere MindSpore's
    ``nn.DistributedGradReducer``, whose per-parameter all-reduces the Ascend and GPU back ends fuse into buckets.
    """
    if not is_distributed():
        return _Identity()
    parameters = list(parameters)
    if ms.get_context("device_target") == "CPU" and len({p.dtype for p in parameters}) == 1:
        return FlatGradReducer(parameters, degree=world_size())
    return nn.DistributedGradReducer(parameters, mean=True, degree=world_size())


_flatten = ops.MultitypeFuncGraph("flatten")
_unflatten = ops.MultitypeFuncGraph("unflatten")


@_flatten.register("Tensor")
def _flatten_tensor(grad):
    return grad.reshape(-1)


@_unflatten.register("Tensor", "Number", "Number", "Tuple")
def _unflatten_tensor(flat, start, size, shape):
    return flat[start : start + size].reshape(shape)


class FlatGradReducer(nn.Cell):
    """The mean over ranks of a grad tuple as one all-reduce of the gradients concatenated (same dtype), split back.

    MindSpore's CPU collective does not fuse ``DistributedGradReducer``'s one all-reduce per parameter, and each costs
    ~1 ms of latency: 182 of them took ~0.18 s of a ~0.9 s quickstart step, one of the same 1.1M values 27 ms
    (docs/benchmarks.md). The sum, then x 1/degree: the same arithmetic as ``DistributedGradReducer(mean=True)``.
    ``HyperMap`` keeps the graph small (an unrolled Python loop over 182 slices compiled for ~20 s more).
    """

    def __init__(self, parameters, *, degree: int):
        super().__init__()
        shapes = [tuple(int(d) for d in p.shape) for p in parameters]
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self.shapes, self.sizes = tuple(shapes), tuple(sizes)
        self.starts = tuple(int(x) for x in np.cumsum([0, *sizes[:-1]]))
        self.reduce = ops.AllReduce(ops.ReduceOp.SUM)
        self.scale = 1.0 / degree
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        flat = ops.concat(self.hyper_map(_flatten, grads))
        flat = self.reduce(flat) * self.scale
        return self.hyper_map(ops.partial(_unflatten, flat), self.starts, self.sizes, self.shapes)


class AllReduce(nn.Cell):
    """Sum of a tensor over all ranks, in the graph (the identity in a single process).

    Only the sum: MindSpore's CPU collective rejects max/min ("AllReduce only support reduce sum on CPU").
    """

    def __init__(self):
        super().__init__()
        self.distributed = is_distributed()
        if self.distributed:
            self.reduce = ops.AllReduce(ops.ReduceOp.SUM)

    def construct(self, x):
        if self.distributed:
            return self.reduce(x)
        return x


class AllGather(nn.Cell):
    """Concatenate a tensor from all ranks along axis 0, in rank order (the identity in a single process)."""

    def __init__(self):
        super().__init__()
        self.distributed = is_distributed()
        if self.distributed:
            self.gather = ops.AllGather()

    def construct(self, x):
        if self.distributed:
            return self.gather(x)
        return x


class Broadcast(nn.Cell):
    """Rank 0's tensor on every rank, bit for bit (the identity in a single process).

    A copy, not a sum: an all-reduce in which the other ranks add zeros would turn -0.0 into +0.0, and MindSpore's CPU
    all-reduce takes only floats. ``ops.Broadcast`` runs on CPU too (measured: -0.0 and NaN arrive unchanged).
    """

    def __init__(self):
        super().__init__()
        self.distributed = is_distributed()
        if self.distributed:
            self.op = ops.Broadcast(0)

    def construct(self, x):
        if self.distributed:
            return self.op((x,))[0]
        return x


_CELLS: dict = {}


def _cell(kind: type) -> nn.Cell:
    """The process's one Cell of ``kind`` (built on first use, after :func:`init`; reused, so compiled once)."""
    if kind not in _CELLS:
        _CELLS[kind] = kind()
    return _CELLS[kind]


def all_gather_cell() -> AllGather:
    """The process's one AllGather Cell."""
    return _cell(AllGather)


def all_reduce_host(values: np.ndarray) -> np.ndarray:
    """Host convenience: sum a small float32 vector over ranks (every rank must call it at the same point)."""
    values = np.asarray(values, np.float32)
    if not is_distributed():
        return values
    return _cell(AllReduce)(Tensor(values)).asnumpy()


def all_gather_host(values: np.ndarray) -> np.ndarray:
    """Host convenience: float32 [world_size, *values.shape], row r from rank r (every rank must call it)."""
    values = np.asarray(values, np.float32)
    if not is_distributed():
        return values[None]
    return all_gather_cell()(Tensor(values[None])).asnumpy()


BROADCAST_WORDS = 1 << 20  # float32 words (4 MiB) per broadcast, always: one graph shape


def broadcast_host(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Rank 0's ``arrays`` on every rank, bit for bit, whatever their dtypes; the other ranks pass arrays of the same
    shapes and dtypes (their values are ignored). Every rank must call it at the same point.

    The bytes travel as float32 words (:class:`Broadcast` copies them) in chunks of :data:`BROADCAST_WORDS`, the last
    one zero-padded: always the one shape, because MindSpore's compile cache (``run.compile_cache``, on after a
    restart) hands a Broadcast Cell called with a second shape the first one's graph ("Parameter[1] has no default
    param", measured).
    """
    arrays = [np.asarray(a, order="C") for a in arrays]  # (ascontiguousarray would make a 0-d array 1-d)
    if not is_distributed():
        return arrays
    raw = np.concatenate([a.reshape(-1).view(np.uint8) for a in arrays] or [np.zeros(0, np.uint8)])
    words = max(1, -(-raw.size // 4))
    chunk = BROADCAST_WORDS
    buf = np.zeros(-(-words // chunk) * chunk * 4, np.uint8)
    buf[: raw.size] = raw
    flat = buf.view(np.float32)
    cell = _cell(Broadcast)
    for start in range(0, flat.size, chunk):
        flat[start : start + chunk] = cell(Tensor(flat[start : start + chunk])).asnumpy()
    out, pos = [], 0
    for a in arrays:
        out.append(buf[pos : pos + a.nbytes].view(a.dtype).reshape(a.shape).copy())
        pos += a.nbytes
    return out


def barrier(timeout: float | None = None, what: str = "barrier") -> None:
    """Wait until every rank arrives (no-op in a single process).

    A one-element all-reduce whose result is read back: MindSpore's Barrier op has no CPU kernel, and a collective
    every rank must join is a barrier on every back end. With ``timeout`` (seconds) a rank that waits longer prints
    one clear line and exits with status 3 (the launcher then ends the job) instead of hanging silently.
    """
    if not is_distributed():
        return
    timer = None
    if timeout:

        def expire() -> None:
            print(
                f"error: rank {rank()} waited more than {timeout:.0f}s for {what} (run.barrier_timeout); "
                "is rank 0's disk slow or full, or did a worker die?",
                file=sys.stderr,
                flush=True,
            )
            os._exit(3)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        all_reduce_host(np.ones(1, np.float32))
    finally:
        if timer is not None:
            timer.cancel()


def check_identical(values: np.ndarray, what: str) -> None:
    """Raise if ``values`` (a small vector, e.g. a weight fingerprint) differs between ranks."""
    if not is_distributed():
        return
    rows = all_gather_host(values)
    diff = np.abs(rows - rows[0]).max()
    if diff != 0:
        raise RuntimeError(f"{what} differ between ranks (max |diff| {diff:.3g})")


def mismatched_ranks(values: np.ndarray) -> list[int]:
    """The ranks whose ``values`` (a small float32 vector, e.g. a weight digest) differ from rank 0's in any bit;
    ``[]`` when all agree or in a single process. Every rank must call it at the same point."""
    if not is_distributed():
        return []
    rows = all_gather_host(values)
    first = rows[0].view(np.uint32)
    return [r for r in range(1, len(rows)) if not np.array_equal(rows[r].view(np.uint32), first)]
