"""Building blocks shared by the U-Nets: timestep embedding, float32 GroupNorm, attention softmax, resampling.

Mixed precision: when a network is cast to float16 (``auto_mixed_precision(net, "O2")``, ``net.to_float(fp16)``),
three computations must stay in float32 and do so here by casting in and back out:

- :class:`GroupNorm32` (mean/variance of float16 activations overflow and lose precision);
- :class:`SinusoidalEmbedding` (``t * freq`` for t up to 1000 has too few float16 bits);
- :class:`Softmax32` (attention logits).

O2's black list holds BatchNorm and LayerNorm only, so the build code should also black-list the Cells from
:func:`ddpm_dist.models.fp32_cells` (``ms.amp.custom_mixed_precision(net, black_list=ms.amp.get_black_list() +
fp32_cells(), dtype=ms.float16)``). Without that, GRAPH_MODE still computes them in float32 (explicit casts are
kept) but reads GroupNorm's parameters through float16 casts, and PyNative mode casts the inputs of every op in a
float16 Cell to float16, explicit casts included, so nothing stays float32 there.
"""

from __future__ import annotations

import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Normal, XavierUniform, initializer

_GROUP_CHOICES = (32, 16, 8, 4, 2, 1)


def norm_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count for ``channels``: ``max_groups`` (the paper's 32) if it divides ``channels``, else the
    largest of 16, 8, 4, 2, 1 below it that does.

    The paper's widths (128, 256) always take 32 groups; the fallback only matters for tiny test nets (ch=8 or 16).
    """
    for groups in (max_groups,) + _GROUP_CHOICES:
        if groups <= max_groups and channels % groups == 0:
            return groups
    raise AssertionError("unreachable: 1 divides every channel count")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype; returns the input dtype.

    x: float16/float32 [B, C, H, W] -> same dtype and shape. Parameters ``gamma``/``beta`` are float32 [C].
    A subclass of ``nn.GroupNorm``, so a black list naming ``nn.GroupNorm`` also catches it.
    """

    def __init__(self, *, num_groups: int, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_groups, num_channels, eps=eps)

    def construct(self, x: Tensor) -> Tensor:
        y = ops.group_norm(
            ops.cast(x, mstype.float32),
            self.num_groups,
            ops.cast(self.gamma, mstype.float32),
            ops.cast(self.beta, mstype.float32),
            self.eps,
        )
        return ops.cast(y, x.dtype)


def group_norm(channels: int, *, max_groups: int = 32, eps: float = 1e-5) -> GroupNorm32:
    """GroupNorm with :func:`norm_groups` groups (32 for the paper's widths)."""
    return GroupNorm32(num_groups=norm_groups(channels, max_groups), num_channels=channels, eps=eps)


class SinusoidalEmbedding(nn.Cell):
    """Sinusoidal timestep embedding (Ho et al. 2020, ``get_timestep_embedding``), computed in float32.

    t: int32 (or float) [B] in [0, T) -> float32 [B, dim] = concat(sin(t * f), cos(t * f)) with
    f_i = exp(-log(10000) * i / (dim/2 - 1)), zero-padded if dim is odd.

    The frequencies are computed in the graph from an int32 index rather than stored as a float constant: a float16
    cast (``to_float``) of the Cell would round a stored constant, and t * f for t ~ 1000 would be off by ~0.2 rad.
    """

    def __init__(self, *, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        half = dim // 2
        if half < 2:
            raise ValueError(f"timestep embedding dim must be >= 4 (got {dim})")
        self.dim = dim
        self.index = Tensor(np.arange(half, dtype=np.int32)[None, :])  # [1, dim // 2]
        self.neg_log_scale = -math.log(max_period) / (half - 1)
        self.pad_odd = dim % 2 == 1

    def construct(self, t: Tensor) -> Tensor:
        freqs = ops.exp(ops.cast(self.index, mstype.float32) * self.neg_log_scale)
        args = ops.reshape(ops.cast(t, mstype.float32), (-1, 1)) * freqs
        emb = ops.cat((ops.sin(args), ops.cos(args)), axis=1)
        if self.pad_odd:
            emb = ops.pad(emb, (0, 1))
        return emb


class ClassEmbedding(nn.Cell):
    """Labels int32 [B] in [0, K] -> float32 [B, dim]: a learned table of K + 1 rows, row K being "no label" (the
    unconditional model of classifier-free guidance). Initialised N(0, 1) like torch's ``nn.Embedding``."""

    def __init__(self, *, num_classes: int, dim: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
        self.num_classes = num_classes
        self.embedding_table = Parameter(initializer(Normal(1.0), (num_classes + 1, dim)), name="embedding_table")

    def construct(self, labels: Tensor) -> Tensor:
        return ops.gather(self.embedding_table, labels, 0)


class Softmax32(nn.Cell):
    """Softmax over ``axis`` computed in float32. scores: float16/float32 [...] -> same dtype and shape.

    A Cell (not a function) so that the amp black list can pin it to float32: in PyNative mode a float16 Cell casts
    the inputs of every op inside it, explicit casts included.
    """

    def __init__(self, *, axis: int = -1) -> None:
        super().__init__()
        self.axis = axis

    def construct(self, scores: Tensor) -> Tensor:
        return ops.cast(ops.softmax(ops.cast(scores, mstype.float32), axis=self.axis), scores.dtype)


def conv2d(
    in_ch: int,
    out_ch: int,
    kernel_size: int = 3,
    *,
    stride: int = 1,
    padding: int | tuple[int, int, int, int] | None = None,
    zero_init: bool = False,
) -> nn.Conv2d:
    """Conv with the DDPM reference initialisation: weights ``variance_scaling(1, fan_avg, uniform)`` (= Xavier
    uniform) or zeros if ``zero_init``, biases zero. ``padding`` defaults to kernel_size // 2 (shape-preserving)."""
    if padding is None:
        padding = kernel_size // 2
    return nn.Conv2d(
        in_ch,
        out_ch,
        kernel_size,
        stride=stride,
        pad_mode="pad",
        padding=padding,
        has_bias=True,
        weight_init="zeros" if zero_init else XavierUniform(),
        bias_init="zeros",
    )


def dense(in_ch: int, out_ch: int, *, zero_init: bool = False) -> nn.Dense:
    """Dense with the DDPM reference initialisation (Xavier uniform or zeros, zero bias)."""
    return nn.Dense(
        in_ch, out_ch, weight_init="zeros" if zero_init else XavierUniform(), bias_init="zeros", has_bias=True
    )


def upsample_nearest2x(x: Tensor) -> Tensor:
    """Nearest-neighbour x2: [B, C, H, W] -> [B, C, 2H, 2W], any float dtype (broadcast, no resize kernel)."""
    b, c, h, w = x.shape
    x = ops.broadcast_to(ops.reshape(x, (b, c, h, 1, w, 1)), (b, c, h, 2, w, 2))
    return ops.reshape(x, (b, c, 2 * h, 2 * w))


class Upsample(nn.Cell):
    """DDPM upsampling: nearest x2, then conv3x3 if ``with_conv``. x: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, *, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = conv2d(channels, channels, 3) if with_conv else nn.Identity()

    def construct(self, x: Tensor) -> Tensor:
        return self.conv(upsample_nearest2x(x))


class Downsample(nn.Cell):
    """DDPM downsampling: conv3x3 stride 2 if ``with_conv`` else 2x2 average pooling. x: [B, C, H, W] -> [B, C, H/2,
    W/2] (H, W even).

    The conv pads 0 top/left and 1 bottom/right, which is TensorFlow's ``SAME`` padding for an even input, as in the
    reference implementation (symmetric padding=1 gives the same shape but shifts the sampling grid by one pixel).
    """

    def __init__(self, *, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        if with_conv:
            self.op = conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1))
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def construct(self, x: Tensor) -> Tensor:
        return self.op(x)


def recompute_cells(net: nn.Cell, types: tuple[type, ...]) -> int:
    """Mark every sub-Cell of ``net`` of one of ``types`` for activation recomputation (``Cell.recompute()``); returns
    how many were marked.

    In GRAPH_MODE the backward pass recomputes each marked Cell's intermediate activations from its inputs instead of
    keeping them from the forward pass; a Cell's inputs and output are still kept. The weights and parameter names
    are unchanged, so a checkpoint moves freely between networks built with and without it. MindSpore allows one
    ``recompute()`` per Cell and none inside an already marked Cell, so ``types`` must not nest.

    Dropout is kept out of the recomputation (:func:`keep_dropout_masks`): a recomputed dropout can draw a new mask
    (measured on MindSpore 2.10, tests/test_recompute.py), and the backward pass would not be the forward's gradient.
    """
    marked = [cell for _, cell in net.cells_and_names() if isinstance(cell, types)]
    for cell in marked:
        cell.recompute()
        keep_dropout_masks(cell)
    return len(marked)


def keep_dropout_masks(net: nn.Cell) -> None:
    """Exclude every ``nn.Dropout`` primitive in ``net`` from recomputation, so its forward mask (and output) is kept
    for the backward pass (a primitive's own ``recompute(False)`` overrides its Cell's ``recompute()``).

    Needed because MindSpore 2.10 recomputes a dropout by running a duplicate of the primitive: its mask equals the
    forward's only when both start from the same fixed seeds and run once per step (unseeded, about half the entries
    of a p=0.5 mask disagree, GRAPH and PyNative; tests/test_recompute.py). Kept out, the duplicate does not exist:
    the backward uses the forward's mask whatever the seeds, for the price of keeping the dropout's output and mask.
    In PyNative mode the whole Cell is re-run and the flag has no effect (config.validate refuses model.recompute
    with dropout > 0 there). Whoever replaces a dropout primitive (the trainer's reseed_dropout) must carry the
    ``recompute`` attribute over.
    """
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Dropout) and hasattr(cell, "dropout"):
            cell.dropout.recompute(False)
