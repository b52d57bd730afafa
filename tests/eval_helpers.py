"""Helpers for evaluation tests: a FID Inception checkpoint with random weights, made without PyTorch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def torch_fid_available() -> bool:
    """True when PyTorch, torchvision and pytorch-fid are installed (found without importing them here)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "torchvision", "pytorch_fid"))


def random_inception(dst: Path, seed: int = 0) -> Path:
    """A converted-format checkpoint of FIDInceptionV3 with seeded random weights and batch-norm statistics that keep
    activations near unit scale; ``meta.source_sha256`` is that of a small stand-in source file."""
    from ddpm_dist.eval import weights
    from ddpm_dist.eval.inception import FIDInceptionV3

    rng = np.random.default_rng(seed)
    arrays = {}
    for p in FIDInceptionV3().get_parameters():
        shape = tuple(p.shape)
        if p.name.endswith("moving_variance"):
            value = rng.uniform(0.5, 2.0, shape)
        elif p.name.endswith(("moving_mean", "beta", "bias")):
            value = rng.normal(0.0, 0.1, shape)
        elif p.name.endswith("gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        else:  # conv / dense weights, He-scaled so activations neither explode nor vanish
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        arrays[p.name] = value.astype(np.float32)
    source = dst.with_suffix(".source")
    source.write_bytes(f"random FID Inception, seed {seed}".encode())
    return weights.save(dst, arrays, source=source)
