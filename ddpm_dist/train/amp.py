"""Mixed precision: choose the level for the device, cast the network, and the loss scaler.

O2 (Ascend/GPU default): float16 network, float32 master weights (the optimizer updates float32 parameters), and
float32 GroupNorm, softmax, timestep embedding and loss (the models' ``fp32_cells`` are added to the black list, since
MindSpore's O2 list keeps only BatchNorm/LayerNorm in float32). O1: float16 for the white-listed ops (conv, matmul).
On CPU the float16 kernels only cast around float32 ones (1.5-2.5x slower), so ``auto`` means O0 there.
"""

from __future__ import annotations

import warnings

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops


def resolve_amp_level(level: str, *, device: str) -> str:
    """``train.amp_level`` for ``device``: ``auto`` is O0 on CPU and O2 elsewhere; a float16 level on CPU warns."""
    if level == "auto":
        return "O0" if device == "CPU" else "O2"
    if level != "O0" and device == "CPU":
        warnings.warn(
            f"train.amp_level={level} on CPU: float16 kernels run as casts around float32 ones here, "
            "so this is slower than O0; use it to test the mixed-precision path, not for speed",
            stacklevel=2,
        )
    return level


def apply_amp(net: nn.Cell, *, level: str, fp32_cells: list[type]) -> nn.Cell:
    """Cast ``net`` in place for ``level`` (O0: unchanged) and return it; ``fp32_cells``: Cell types kept in float32
    under O2 (the models' ``fp32_cells()``)."""
    if level == "O0":
        return net
    if level == "O2":
        black = list(ms.amp.get_black_list()) + list(fp32_cells)
        return ms.amp.custom_mixed_precision(net, black_list=black, dtype=ms.float16)
    if level == "O1":
        # MindSpore's own O1 rewrites the network's source and fails on these U-Nets ("The name 'silu_opt' is not
        # defined"; measured on 2.10), so O1 is done directly: convolutions and dense layers compute in float16,
        # everything else stays float32 (mixed-dtype arithmetic promotes to float32).
        for _, cell in net.cells_and_names():
            if isinstance(cell, (nn.Conv2d, nn.Conv2dTranspose, nn.Dense)):
                cell.to_float(ms.float16)
        return net
    raise ValueError(f"unknown amp level {level!r}")


class LossScaler(nn.Cell):
    """Loss scale as checkpointable state: ``loss_scale.value`` (float32) and ``loss_scale.good_steps`` (int32).

    ``dynamic``: halve on a non-finite step (not below 1), double after ``window`` finite steps in a row.
    ``static``: a fixed value. ``none``: 1.
    """

    def __init__(self, *, mode: str, value: float, window: int, factor: float = 2.0):
        super().__init__(auto_prefix=False)
        self.dynamic = mode == "dynamic"
        init = 1.0 if mode == "none" else float(value)
        self.value = Parameter(Tensor(init, ms.float32), name="loss_scale.value", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale.good_steps", requires_grad=False)
        self.window = window
        self.factor = factor

    def adjust(self, finite):
        """Update the scale after a step; ``finite`` is a bool scalar tensor. Returns the new scale."""
        if not self.dynamic:
            return self.value
        good = self.good_steps + 1
        grow = good >= self.window
        value = ops.select(
            finite, ops.select(grow, self.value * self.factor, self.value), ops.maximum(self.value / self.factor, 1.0)
        )
        good = ops.select(finite, ops.select(grow, ops.zeros_like(good), good), ops.zeros_like(good))
        value = ops.depend(value, ops.assign(self.good_steps, good))
        return ops.assign(self.value, value)

    def construct(self, finite):
        return self.adjust(finite)
