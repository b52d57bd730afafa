"""Data: MindRecord conversion (:mod:`.convert`; image decoding, the center crop and resize in :mod:`.decode`, LSUN
LMDB exports in :mod:`.lsun`), the training input pipeline (:mod:`.pipeline`) and the embedded digits data set
(:mod:`.digits`).

Importing this package is cheap: it imports neither MindSpore, PIL nor scikit-learn. The public names below are loaded
on first use (``from ddpm_dist.data import TrainData`` imports :mod:`.pipeline` then).

A prepared data set is a directory holding one or more MindRecord files and ``manifest.json``::

    image  bytes   uint8 pixels, HWC, row-major, exactly image_size * image_size * channels bytes
    label  int32   class id (0 where the source has none)
    index  int64   stable sample index 0..N-1; file k holds a contiguous block, so row order == index order
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import UserError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SOURCES = ("cifar10", "mnist", "folder", "lsun", "digits")


class DataError(UserError, ValueError):
    """Bad input data, a bad prepared data set, or data settings that do not fit it. The message is one line."""


_LAZY = {
    "read_manifest": "ddpm_dist.data.pipeline",
    "check_manifest": "ddpm_dist.data.pipeline",
    "verify_checksums": "ddpm_dist.data.pipeline",
    "read_images": "ddpm_dist.data.pipeline",
    "TrainData": "ddpm_dist.data.pipeline",
    "build_train_data": "ddpm_dist.data.pipeline",
}

__all__ = ["DataError", "FORMAT_VERSION", "MANIFEST_NAME", "SOURCES", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpm_dist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
