"""The compiled train step: one Cell, one graph, no logging, no host syncs.

Order (each rank, every optimizer step):
for each of the K micro-batches: forward loss -> grads of (loss * scale / K), summed on the device ->
all-reduce mean (once) -> global norm of the reduced grads and finite check, agreed by all ranks -> unscale and clip
in one multiply -> Adam (if finite) -> EMA (if finite) -> loss-scale update. Everything after the micro-batch loop
happens once per optimizer step, whatever K.

The finite check is :class:`~ddpm_dist.train.overflow.FiniteCheck`, chosen for the device and its overflow mode
(train/overflow.py): where results become inf/nan (CPU, GPU, Ascend A2/A3 by default) it is ``isfinite`` of that norm
- a sum of squares is inf/nan exactly when an element is inf/nan, or when it overflows float32 (|grad * scale| ~ 1e19),
which is treated as an overflow too; where results saturate (Ascend 910A, A2/A3 in SATURATION_MODE) it also reads the
float status register, cleared when the step starts. Norm and verdict are agreed by all ranks (rank 0's norm).
Unscaling and clipping share one multiply by ``min(clip / (norm + 1e-6), 1) / scale``. Statistics mask non-finite
values with ``select(isfinite(x), x, 0)``, not ``ops.nan_to_num`` (no GPU kernel in 2.10; CANN's NanToNum does not
support the Atlas training series).

Gradient accumulation (``grad_accum = K``): the step receives this rank's whole share of the global batch and cuts it
into K equal micro-batches in the graph; the loop is unrolled at compile time, and each micro-batch's forward waits
for the previous one's gradients (``ops.depend``), so the previous micro-batch's activations are dead by then and the
memory planner can reuse them (the peak-memory saving was not measured on CPU). The mean of K micro-batch means of
equal size is the mean over the rank's batch, so the update equals K = 1 on the same samples up to float rounding;
the compile time grows with K, the step time by K forward/backward passes of B / K.

Statistics for logging are accumulated on the device in ``stats`` (float32 [NUM_STATS]) and read by the host only at
log intervals (see :data:`STAT_NAMES`); ``nonfinite_run`` counts consecutive skipped steps.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .. import parallel
from ..diffusion import build_diffusion
from .amp import LossScaler
from .ema import EMA
from .optim import build_optimizer
from .overflow import FiniteCheck, GlobalNorm, overflow_mode  # noqa: F401 - GlobalNorm is imported from here too

STAT_NAMES = (
    "loss_sum",  # sum over finite steps of the rank's mean loss
    "steps",  # steps taken
    "skipped",  # non-finite steps (update skipped)
    "grad_norm_sum",  # sum over finite steps of the global grad norm (after the reduce, before clipping)
    "q0_sum", "q1_sum", "q2_sum", "q3_sum",  # sums of per-sample losses by timestep quartile
    "q0_n", "q1_n", "q2_n", "q3_n",  # and their counts
)  # fmt: skip
NUM_STATS = len(STAT_NAMES)


def _scale_grad(factor, g):
    return g * factor.astype(g.dtype)


def _rows(y, lo, hi):
    """Rows lo:hi of the labels, or None (an unconditional network)."""
    return None if y is None else y[lo:hi]


def _finite_or_zero(x):
    """``x`` where finite, else 0 (``ops.nan_to_num`` has no GPU kernel in MindSpore 2.10 and no CANN kernel for the
    Atlas training series)."""
    return ops.select(ops.isfinite(x), x, ops.zeros_like(x))


class TrainStep(nn.Cell):
    """``step(x0, t, noise) -> loss`` (this rank's mean loss; everything else is state); ``step(x0, t, noise, y)``
    for a class-conditional network (labels y int32 [B]).

    Args:
        net: the network (possibly cast for mixed precision); its trainable params are the float32 master weights.
        diffusion: a GaussianDiffusion (provides ``training_losses(net, x0, t, noise)``).
        optimizer: built over ``net.trainable_params()``.
        scaler: the LossScaler.
        ema: the EMA over the same params.
        grad_clip: global-norm clip (0: off).
        grad_accum: micro-batches per optimizer step (K >= 1); the batch given to ``construct`` must divide by K.
        finite_check: the FiniteCheck (default: for the current device target, this process's rank and world size).
    """

    def __init__(
        self,
        *,
        net,
        diffusion,
        optimizer,
        scaler: LossScaler,
        ema: EMA,
        grad_clip: float,
        grad_accum: int,
        finite_check: FiniteCheck | None = None,
    ):
        super().__init__(auto_prefix=False)
        self.net = net
        self.diffusion = diffusion
        self.optimizer = optimizer
        self.scaler = scaler
        self.ema = ema
        self.weights = optimizer.parameters
        self.reducer = parallel.grad_reducer(self.weights)
        self.grad_fn = ms.value_and_grad(self.forward, None, self.weights, has_aux=True)
        self.grad_clip = float(grad_clip)
        if int(grad_accum) < 1:
            raise ValueError(f"grad_accum must be >= 1 (got {grad_accum})")
        self.grad_accum = int(grad_accum)
        self.hyper_map = ops.HyperMap()
        if finite_check is None:
            finite_check = FiniteCheck(
                mode=overflow_mode(ms.get_context("device_target")),
                rank=parallel.rank(),
                world_size=parallel.world_size(),
            )
        self.finite_check = finite_check
        self.quartile_edges = Tensor([diffusion.num_timesteps * k / 4.0 for k in (1, 2, 3)], ms.float32)
        self.stats = Parameter(ops.zeros(NUM_STATS, ms.float32), name="stats", requires_grad=False)
        self.nonfinite_run = Parameter(Tensor(0, ms.int32), name="nonfinite_run", requires_grad=False)

    def forward(self, x0, t, noise, scale, y=None):
        per_sample = self.diffusion.training_losses(self.net, x0, t, noise, y)
        loss = per_sample.mean()
        return loss * scale, (loss, per_sample)

    def accumulate(self, x0, t, noise, scale, y=None):
        """Grads of ``scale`` x the mean loss over the batch, summed over K micro-batches; the per-sample losses."""
        if self.grad_accum == 1:
            (_, (_, per_sample)), grads = self.grad_fn(x0, t, noise, scale, y)
            return grads, per_sample
        b = x0.shape[0] // self.grad_accum
        micro_scale = scale / self.grad_accum
        (_, (_, per_sample)), grads = self.grad_fn(x0[:b], t[:b], noise[:b], micro_scale, _rows(y, 0, b))
        losses = (per_sample,)
        for k in range(1, self.grad_accum):
            lo, hi = k * b, (k + 1) * b
            xk = ops.depend(x0[lo:hi], grads)  # start micro-batch k after k - 1's backward: one set of activations
            (_, (_, per_sample)), gk = self.grad_fn(xk, t[lo:hi], noise[lo:hi], micro_scale, _rows(y, lo, hi))
            grads = self.hyper_map(ops.add, grads, gk)
            losses = losses + (per_sample,)
        return grads, ops.concat(losses)

    def construct(self, x0, t, noise, y=None):
        scale = self.scaler.value
        x0 = self.finite_check.begin(x0)  # the status register (where results saturate) is cleared first
        grads, per_sample = self.accumulate(x0, t, noise, scale, y)
        loss = per_sample.mean()
        grads = self.reducer(grads)  # mean over ranks; every rank now holds the same grads
        norm, finite = self.finite_check(grads)  # the same on every rank
        norm = norm / scale  # the unscaled global norm
        factor = 1.0 / scale
        if self.grad_clip > 0:
            factor = factor * ops.minimum(self.grad_clip / (norm + 1e-6), 1.0)
        grads = self.hyper_map(ops.partial(_scale_grad, factor), grads)
        if finite:
            self.optimizer(grads)
            self.ema()
        self.scaler.adjust(finite)

        ok = finite.astype(ms.float32)
        q_sums, q_counts = self._quartile_stats(t, per_sample)
        head = ops.stack([ok * _finite_or_zero(loss), Tensor(1.0, ms.float32), 1.0 - ok, ok * _finite_or_zero(norm)])
        update = ops.concat([head, ok * _finite_or_zero(q_sums), ok * q_counts])
        ops.assign_add(self.stats, update)
        ops.assign(self.nonfinite_run, (self.nonfinite_run + 1) * (1 - finite.astype(ms.int32)))
        return loss

    def _quartile_stats(self, t, per_sample):
        """Per-sample loss sums and counts by timestep quartile: float32 [4] each."""
        q = (t.astype(ms.float32).reshape(-1, 1) >= self.quartile_edges.reshape(1, -1)).astype(ms.int32).sum(1)
        onehot = ops.one_hot(q, 4, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))  # [B, 4]
        sums = (onehot * per_sample.reshape(-1, 1)).sum(0)
        return sums, onehot.sum(0)


def build_train_step(cfg, net, *, grad_accum: int | None = None) -> TrainStep:
    """The train step of ``cfg`` for ``net``: its diffusion, optimizer (over ``net``'s trainable parameters), loss
    scaler, EMA, gradient clip and accumulation (``grad_accum``: instead of ``train.grad_accum``), built in this order
    as training builds them. The parts are the step's attributes (``diffusion``, ``optimizer``, ``scaler``, ``ema``).
    Mixed precision is the caller's: apply it to ``net`` first."""
    t = cfg.train
    diffusion = build_diffusion(cfg)
    optimizer = build_optimizer(cfg, net.trainable_params())
    scaler = LossScaler(mode=t.loss_scale, value=t.loss_scale_value, window=t.loss_scale_window)
    ema = EMA(net.trainable_params(), decay=t.ema_decay, warmup=t.ema_warmup)
    return TrainStep(
        net=net,
        diffusion=diffusion,
        optimizer=optimizer,
        scaler=scaler,
        ema=ema,
        grad_clip=t.grad_clip,
        grad_accum=t.grad_accum if grad_accum is None else grad_accum,
    )


class ReadStats(nn.Cell):
    """Return the accumulated ``stats`` and zero them, in the graph.

    Host-side ``Parameter.set_data`` on a Parameter that a compiled graph already uses detaches it from that graph
    (measured on MindSpore 2.10: the step then keeps accumulating into a buffer the host no longer sees), so every
    write to train-step state after compilation goes through a small Cell like this one.
    """

    def __init__(self, stats: Parameter):
        super().__init__(auto_prefix=False)
        self.stats = stats

    def construct(self):
        value = self.stats * 1.0
        return ops.depend(value, ops.assign(self.stats, ops.zeros_like(self.stats)))


class CopyParams(nn.Cell):
    """``dst[i] <- src[i]`` for two equally long parameter lists, in the graph (see ReadStats for why)."""

    def __init__(self, src, dst):
        super().__init__(auto_prefix=False)
        self.src = ParameterTuple(src)
        self.dst = ParameterTuple(dst)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(_copy, self.dst, self.src)


def _copy(dst, src):
    return ops.assign(dst, src.astype(dst.dtype))
