"""The one place that sets up the process environment and the MindSpore device.

Two steps, because MindSpore reads some variables at import time:

1. :func:`prepare_env` before ``import mindspore``: silences the C++/Python log noise (``GLOG_v=3``) unless the user
   set ``GLOG_v`` or passed ``verbose=True``.
2. :func:`setup_device` after the import, before the first op: picks the device target (``auto``: Ascend, then GPU,
   then CPU), the execution mode, and on CPU sets ``ONEDNN_MAX_CPU_ISA=AVX2`` unless the user set it (oneDNN's default
   choice of convolution kernel is ~70x slower on AVX-512/AMX CPUs; the measurement is in docs/development.md).
"""

from __future__ import annotations

import os

from .config import ConfigError

_DEVICES = ("Ascend", "GPU", "CPU")


def prepare_env(*, verbose: bool = False) -> None:
    """Set environment defaults that MindSpore reads at import time. Never overrides what the user set."""
    if verbose:
        os.environ.setdefault("GLOG_v", "2")
    else:
        os.environ.setdefault("GLOG_v", "3")
    # oneDNN reads this lazily at the first CPU op; setting it early is harmless on Ascend/GPU.
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")


def resolve_device(device: str) -> str:
    """``auto`` -> the first available of Ascend, GPU, CPU; an explicit target is checked to be available."""
    import mindspore as ms

    if device != "auto":
        if device not in _DEVICES:
            raise ConfigError(f"run.device: unknown device {device!r} (choose auto, Ascend, GPU or CPU)")
        if device != "CPU" and not _available(ms, device):
            raise ConfigError(f"run.device: {device} was requested but MindSpore cannot load its back end here")
        return device
    for candidate in _DEVICES:
        if candidate == "CPU" or _available(ms, candidate):
            return candidate
    return "CPU"


def _available(ms, device: str) -> bool:
    try:
        return bool(ms.hal.is_available(device))
    except Exception:  # noqa: BLE001 - a back end that fails to load is simply unavailable
        return False


def setup_device(device: str, *, mode: str) -> str:
    """Select the device target (``run.device``: auto, Ascend, GPU or CPU) and execution mode (``run.mode``: graph
    or pynative) for this process; return the resolved target."""
    prepare_env()
    import mindspore as ms

    target = resolve_device(device)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device(target)
    return target
