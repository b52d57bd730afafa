"""The finite decision of the train step: which detector this device needs, the detector itself, and its self-check.

Two ways a device reports an fp16 overflow (CANN ``aclrtFloatOverflowMode``; MindSpore 2.10's
``mindspore.amp._all_finite`` makes the same choice):

- **inf/nan** (IEEE 754; CPU, GPU, Ascend A2/A3 by default): an overflow becomes inf and an invalid operation nan,
  and both survive into the gradients, so ``isfinite`` of the global gradient norm decides. The norm is computed
  anyway for clipping: the check costs one ``isfinite`` of a scalar (``all_finite``'s per-parameter IsFinite
  kernels took ~18% of the quickstart step on CPU).
- **saturation** (the Atlas training series - first-generation 910, "910A" - supports only this mode; A2/A3 run in it
  under ``MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE``): an overflow becomes +-65504 and a nan becomes 0, the norm
  stays finite, and only the float status register (``NPUGetFloatStatusV2``) records that something overflowed. The
  register is cleared when the step starts (:meth:`FiniteCheck.begin`) and read, then cleared, after the norm.

Whatever the detector, all ranks agree in one scalar all-reduce: rank 0's norm (so the clip factor cannot differ by
an ulp between ranks - reductions are not deterministic by default) and the number of ranks that saw an overflow
(the status register is per device: an overflow in rank 1's backward is invisible to rank 0 otherwise).

:func:`check_overflow_detection` runs at start-up: a deliberate fp16 overflow and a 0/0 pass through the train step's
own :class:`FiniteCheck` and must come out "not finite" (and a clean value "finite"), or the run stops with one line
naming the device, the overflow mode and what to set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import parallel

NORM = "grad norm"  # isfinite of the global gradient norm
STATUS = "status register"  # NPUGetFloatStatusV2, then isfinite of the norm as well

# The SoC features MindSpore 2.10 asks the runtime about (mindspore/amp.py: _ascend_910a_target, _ascend_910b_target).
FEATURE_910A = "amp_loss_scale_train_classic_target"  # Atlas training series: saturation only
FEATURE_A2 = "train_hq_dtype_line"  # Atlas A2/A3 training series: inf/nan by default, saturation on request
MODE_VAR = "MS_ASCEND_CHECK_OVERFLOW_MODE"


class OverflowCheckError(RuntimeError):
    """The overflow detector said "finite" for a deliberate overflow (or "not finite" for a clean value); the message
    is one line naming the device, the overflow mode and what to set."""


def soc_supports(feature: str) -> bool:
    """Whether the Ascend SoC MindSpore runs on has ``feature`` (False off Ascend)."""
    from mindspore._c_expression import MSContext

    return bool(MSContext.get_instance().ascend_soc_supports_feature(feature))


@dataclass(frozen=True)
class OverflowMode:
    """How this device reports an fp16 overflow, and the detector that sees it.

    ``device``: Ascend, GPU or CPU; ``chip``: what the SoC query said (``910A``, ``A2/A3``, or the device name);
    ``results``: ``saturation`` or ``inf/nan``; ``detector``: :data:`STATUS` or :data:`NORM`.
    """

    device: str
    chip: str
    results: str
    detector: str

    def describe(self) -> str:
        return f"{self.chip}, {self.results} results, overflow detected by the {self.detector}"


def overflow_mode(
    device: str, *, supports: Callable[[str], bool] = soc_supports, env: Mapping[str, str] | None = None
) -> OverflowMode:
    """The overflow mode of ``device`` (``supports``: the SoC feature query; ``env``: default ``os.environ``)."""
    env = os.environ if env is None else env
    if device != "Ascend":
        return OverflowMode(device, device, "inf/nan", NORM)
    if supports(FEATURE_910A):
        return OverflowMode(device, "Ascend 910A", "saturation", STATUS)
    if supports(FEATURE_A2):
        if env.get(MODE_VAR, "") == "SATURATION_MODE":
            return OverflowMode(device, f"Ascend A2/A3 ({MODE_VAR}=SATURATION_MODE)", "saturation", STATUS)
        return OverflowMode(device, "Ascend A2/A3", "inf/nan", NORM)
    return OverflowMode(device, "Ascend (other SoC)", "inf/nan", NORM)


def _sq_sum(g):
    # Over a 1-D view: MindSpore's CPU ReduceSum over all axes of a 4-D conv weight was ~3x slower (the paper U-Net's
    # 35.7M grads: 280 ms per step against 95 ms, measured 2026-11-27).
    flat = g.astype(ms.float32).reshape(-1)
    return ops.reduce_sum(flat * flat)


class GlobalNorm(nn.Cell):
    """``norm(grads)``: the float32 L2 norm over a tuple of gradients; inf or nan when any element is (or when the
    sum of squares overflows float32)."""

    def __init__(self):
        super().__init__()
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        return ops.sqrt(ops.addn(self.hyper_map(_sq_sum, grads)))


class FiniteCheck(nn.Cell):
    """``check(grads) -> (norm, finite)``: the global norm of ``grads`` (float32 scalar, rank 0's on every rank) and
    whether the step is finite (bool scalar, the same on every rank).

    ``begin(x) -> x``: call on the step's first input; clears the status register first (status detector only).
    Args: ``mode`` from :func:`overflow_mode`; ``rank``, ``world_size`` of this process.
    """

    def __init__(self, *, mode: OverflowMode, rank: int, world_size: int):
        super().__init__()
        self.mode = mode
        self.status = mode.detector == STATUS
        self.global_norm = GlobalNorm()
        self.distributed = world_size > 1
        self.lead = rank == 0
        if self.distributed:
            self.reduce = parallel.AllReduce()  # the sum over ranks, in the step's graph
        if self.status:
            from mindspore.ops.operations.math_ops import NPUClearFloatStatusV2, NPUGetFloatStatusV2

            self.get_status = NPUGetFloatStatusV2()
            self.clear_status = NPUClearFloatStatusV2()
            self.register = Tensor(np.zeros(8, np.int32))

    def begin(self, x):
        if self.status:
            cleared = self.clear_status(ops.depend(self.register, x))
            return ops.depend(x, cleared)
        return x

    def construct(self, grads):
        norm = self.global_norm(grads)
        if not self.status and not self.distributed:
            return norm, ops.isfinite(norm)  # CPU/GPU single process: exactly the check of before
        bad = 1.0 - ops.isfinite(norm).astype(ms.float32)
        if self.status:
            register = ops.depend(self.register, norm)  # read after everything that could overflow
            flags = self.get_status(register)
            cleared = self.clear_status(ops.depend(register, flags))
            flags = ops.depend(flags, cleared)
            bad = ops.maximum(bad, ops.not_equal(flags, 0).any().astype(ms.float32))
        if self.distributed:
            shared = norm if self.lead else ops.zeros_like(norm)  # x + 0 == x: every rank gets rank 0's bits
            agreed = self.reduce(ops.stack([shared, bad]))
            norm, bad = agreed[0], agreed[1]
            bad = ops.maximum(bad, 1.0 - ops.isfinite(norm).astype(ms.float32))
        return norm, bad < 0.5


class OverflowProbe(nn.Cell):
    """``probe(a, b) -> finite``: the verdict of ``check`` on the gradient ``a / b`` computed in float16, the way the
    step computes its gradients (the status register is cleared first, read after)."""

    def __init__(self, check: FiniteCheck):
        super().__init__(auto_prefix=False)
        self.check = check

    def produce(self, a, b):
        """float16 ``a / b``: 60000 / 0.25 overflows, 0 / 0 is invalid (nan, or 0 where results saturate)."""
        return ops.div(a, b)

    def construct(self, a, b):
        a = self.check.begin(a)
        grad = self.produce(a, b).astype(ms.float32)
        _, finite = self.check((grad,))
        return finite


# (a, b, expected verdict): a / b in float16
PROBE_CASES = (
    ("an fp16 overflow (60000 / 0.25)", 60000.0, 0.25, False),
    ("a nan (0 / 0)", 0.0, 0.0, False),
    ("a clean value (1 / 2)", 1.0, 2.0, True),
)


def _what_to_set(mode: OverflowMode) -> str:
    if mode.device != "Ascend":
        return (
            "this device does not follow IEEE 754 for float16 here; train with train.amp_level=O0 and please report it"
        )
    if mode.detector == NORM:
        return (
            f"this device saturates overflows: set {MODE_VAR}=SATURATION_MODE on every rank (the status register is "
            f"then read), or {MODE_VAR}=INFNAN_MODE if the chip supports it (Atlas A2/A3)"
        )
    if mode.chip == "Ascend 910A":
        return "the float status register does not report overflows here; train with train.amp_level=O0"
    return f"the float status register does not report overflows here; set {MODE_VAR}=INFNAN_MODE on every rank"


def check_overflow_detection(check: FiniteCheck, *, probe: OverflowProbe | None = None) -> str:
    """Push :data:`PROBE_CASES` through ``check`` (the train step's own FiniteCheck) on the current device; raise
    :class:`OverflowCheckError` (one line) when a verdict is wrong. Every rank must call it (the verdicts are agreed).
    Returns the mode's description, for the run's first lines."""
    probe = OverflowProbe(check) if probe is None else probe
    mode = check.mode
    for what, a, b, want in PROBE_CASES:
        got = bool(probe(Tensor([a], ms.float16), Tensor([b], ms.float16)).asnumpy())
        if got != want:
            verdict = "finite" if got else "not finite"
            raise OverflowCheckError(
                f"overflow self-check failed on {mode.device} ({mode.describe()}): {what} was judged {verdict}; "
                f"{_what_to_set(mode)}"
            )
    return mode.describe()
