"""The one place that sets up the process environment and the MindSpore device.

Two steps, because MindSpore reads some variables at import time:

1. :func:`prepare_env` before ``import mindspore``, on every device: silences the C++/Python log noise
   (``GLOG_v=3``) unless the user set ``GLOG_v`` or passed ``verbose=True``, and sets ``ONEDNN_MAX_CPU_ISA=AVX2``
   unless the user set it. oneDNN reads it at the first CPU op; it matters on CPU, where oneDNN's default choice of
   convolution kernel is ~70x slower on AVX-512/AMX CPUs (docs/development.md), and is harmless on Ascend and GPU,
   whose host-side CPU ops it also caps.
2. :func:`setup_device` after the import, before the first op: picks the device target (``auto``: Ascend, then GPU,
   then CPU) and the execution mode.
   On Ascend it turns off CANN's default FP32 -> HF32 convolutions (``conv_allow_hf32(False)``): FID/IS against
   pytorch-fid statistics need float32 Inception convolutions (docs/devices.md).

A device counts as available when its MindSpore back end loaded *and* reports at least one device;
:func:`unavailable_reason` says why not (the plugin's load error, which ``GLOG_v=3`` would otherwise hide).
"""

from __future__ import annotations

import os

from .choices import DEVICE_CHOICES, DEVICES
from .config import ConfigError


def prepare_env(*, verbose: bool = False) -> None:
    """Set environment defaults that MindSpore reads at import time. Never overrides what the user set."""
    if verbose:
        os.environ.setdefault("GLOG_v", "2")
    else:
        os.environ.setdefault("GLOG_v", "3")
    # oneDNN reads this lazily at the first CPU op; setting it early is harmless on Ascend/GPU.
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


def resolve_device(device: str, *, context=None) -> str:
    """``auto`` -> the first available of Ascend, GPU, CPU; an explicit target is checked to be available.
    ``context``: MindSpore's ``MSContext`` (a stand-in in tests)."""
    if device != "auto":
        if device not in DEVICES:
            choices = ", ".join(DEVICE_CHOICES[:-1]) + f" or {DEVICE_CHOICES[-1]}"
            raise ConfigError(f"run.device: unknown device {device!r} (choose {choices})")
        if device != "CPU":
            reason = unavailable_reason(device, context=context)
            if reason:
                raise ConfigError(f"run.device: {device} was requested but {reason}")
        return device
    for candidate in DEVICES:
        if candidate == "CPU" or not unavailable_reason(candidate, context=context):
            return candidate
    return "CPU"


def unavailable_reason(device: str, *, context=None) -> str:
    """``""`` when ``device`` (Ascend or GPU) can be used, else why not, in one line: the back end's load error (e.g.
    CANN's libraries not on ``LD_LIBRARY_PATH``), no back end in this package, or no device found."""
    if context is None:
        from mindspore._c_expression import MSContext

        context = MSContext.get_instance()
    if not context.is_pkg_support_device(device):
        errors = [line.strip() for line in context.load_plugin_error().splitlines()
                  if f"mindspore_{device.lower()}" in line.lower()]  # fmt: skip
        if errors:
            hint = " - is CANN's set_env.sh sourced?" if device == "Ascend" else ""
            return f"its MindSpore back end did not load ({errors[0]}{hint})"
        return f"this MindSpore package has no {device} back end"
    try:
        count = _device_count(device)
    except Exception as err:  # noqa: BLE001 - the runtime's own message is the reason
        return f"its runtime reports no device ({str(err).strip().splitlines()[0] if str(err).strip() else err!r})"
    return "" if count > 0 else "its runtime reports no device"


def _device_count(device: str) -> int:
    import mindspore as ms

    return int(getattr(ms.device_context, device.lower()).device_count())


def auto_fallback_note(requested: str, target: str) -> str:
    """For the run's first lines: why ``run.device=auto`` chose CPU (``""`` when it did not, or was not asked to)."""
    if requested != "auto" or target != "CPU":
        return ""
    return "run.device=auto fell back to CPU: " + "; ".join(f"{d}: {unavailable_reason(d)}" for d in DEVICES[:-1])


def conv_precision() -> str:
    """The precision of float32 convolutions on the current device: ``hf32`` on Ascend unless turned off (CANN's
    default), else ``fp32``. Part of the FID reference-statistics cache key."""
    import mindspore as ms

    if ms.get_context("device_target") != "Ascend":
        return "fp32"
    from mindspore._c_expression import AscendOpPrecisionConf

    return "fp32" if AscendOpPrecisionConf.get_instance().conv_allow_hf32() == "0" else "hf32"


def _fp32_convolutions() -> None:
    """Ascend: float32 convolutions in float32, not CANN's default HF32 (a no-op if this process already chose)."""
    from mindspore.device_context.ascend import op_precision

    try:
        op_precision.conv_allow_hf32(False)
    except RuntimeError:  # "can not be set repeatedly": the process already chose
        pass


def setup_device(device: str, *, mode: str) -> str:
    """Select the device target (``run.device``: auto, Ascend, GPU or CPU) and execution mode (``run.mode``: graph
    or pynative) for this process; return the resolved target."""
    prepare_env()
    import mindspore as ms

    target = resolve_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(target)
    if target == "Ascend":
        _fp32_convolutions()
    return target
