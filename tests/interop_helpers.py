"""Helpers shared by the diffusers parity tests (tests/test_interop.py, tests/test_recipes_256.py): the reference
worker (tests/workers/diffusers_reference.py, its own process, so PyTorch and MindSpore never share one), random
weights, one forward pass, and the parity bound."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mindspore import Tensor
from train_helpers import ROOT, env

from ddpm_dist.checkpoint.io import read
from ddpm_dist.models import build_model

WORKER = str(ROOT / "tests" / "workers" / "diffusers_reference.py")
HAVE_DIFFUSERS = all(importlib.util.find_spec(name) is not None for name in ("torch", "diffusers"))
needs_diffusers = pytest.mark.skipif(
    not HAVE_DIFFUSERS, reason="needs PyTorch and diffusers (pip install torch diffusers==0.42.1)"
)


def arrays_and_meta(path) -> tuple[dict, dict]:
    stored = read(path)
    return stored.arrays, stored.meta


def run(script: str, *args: str, timeout: int = 900, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], env=env() | (extra_env or {}), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def reference(tmp: Path, tasks: list[dict]) -> None:
    """Run the diffusers worker on ``tasks`` (see its docstring)."""
    job = tmp / f"job-{len(list(tmp.glob('job-*.json')))}.json"
    job.write_text(json.dumps(tasks))
    res = run(WORKER, str(job))
    assert res.returncode == 0, res.stderr[-3000:]


def forward(net, x: np.ndarray, t: np.ndarray, *, train: bool = False, y: np.ndarray | None = None) -> np.ndarray:
    """eps of ``net`` at (x, t), and class labels y (int [B]) for a class-conditional net."""
    net.set_train(train)
    labels = () if y is None else (Tensor(y.astype(np.int32)),)
    return net(Tensor(x), Tensor(t.astype(np.int32)), *labels).asnumpy()


def assert_eps_parity(ours: np.ndarray, ref) -> None:
    """The bound of every network parity check, and why.

    All rows: max |ours - diffusers float32| <= 1e-4 * max |eps|. Both networks do the same float32 operations in
    other orders (~1e-6 of |eps| through ~40 layers); what dominates is the timestep embedding: sin and cos of
    t * f for t up to 999 rad, where one float32 ulp is ~6e-5, and the two frameworks round f from differently
    written (equal in exact arithmetic) formulas, so their embeddings differ by up to ~4e-5 at large t (measured:
    1.6e-5 of |eps| at t = 780 on the CIFAR-10 net, 7e-6 at t = 999 on the small one). diffusers' float64 run keeps
    its float32 embedding, so it cannot serve as the exact value there.
    Rows with t < 20, where the embedding's rounding is negligible: within 2x diffusers' own float32 error against
    the same network in float64, + 1e-6.
    A wrong mapping (an unflipped embedding, a swapped GroupNorm affine) is off by far more (see test_interop.py).
    """
    exact, torch32, t = ref["eps64"], ref["eps32"], ref["t"]
    scale = np.abs(exact).max()
    assert np.abs(ours - torch32).max() <= 1e-4 * scale, (np.abs(ours - torch32).max(), scale)
    small = t < 20
    assert small.any()
    ours_err = np.abs(ours[small] - exact[small]).max()
    assert ours_err <= 2 * np.abs(torch32[small] - exact[small]).max() + 1e-6, ours_err


def random_weights(cfg, seed: int = 0) -> dict:
    """Every parameter of cfg's network random (no zero-initialised output), as the network's float32 arrays."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in build_model(cfg).get_parameters():
        fan_in = int(np.prod(p.shape[1:])) if len(p.shape) > 1 else 1
        out[p.name] = rng.normal(0.0, 1.0 / np.sqrt(fan_in), p.shape).astype(np.float32)
        if p.name.endswith("gamma"):
            out[p.name] += 1.0
    return out


def no_data(cfg):
    cfg.data.path = ""  # as in an imported checkpoint: released weights come with no data set
    return cfg
