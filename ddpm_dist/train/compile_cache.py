"""MindSpore's graph compile cache for the train step, in a directory keyed by everything the graphs depend on.

``MS_COMPILER_CACHE_ENABLE=1`` with ``MS_COMPILER_CACHE_PATH=DIR`` makes a relaunch load the compiled graphs instead
of compiling them (digits U-Net on CPU: 27 s -> 3.1 s to the first step, bitwise the same weights). MindSpore reads
the two variables at each compile (setting them after ``import mindspore``, before the first graph runs, works), and
checks only the Python sources it compiled: a cache written for another network config loads the stale graph and
trains to different weights, silently (docs/failure_modes.md). So each key gets a directory of its own:
``<root>/<key>/rank_<r>/``, key = hash of the resolved model, diffusion, data and train config, run.mode, the world
size, the device, this process's DEVICE_ID, the MindSpore and ddpm_dist versions and the hash of every ddpm_dist
source file. With dropout the per-op seeds (``reseed_dropout``: derived from the start step) are graph attributes,
so the start step joins the key - a restart from another checkpoint then compiles again.

``run.compile_cache``: ``auto`` (the default) uses it when the launcher may restart the job (``MAX_RESTARTS`` > 0:
it exports ``DDPM_COMPILE_CACHE_DIR=<LOG_DIR>/compile_cache``); ``true`` always (that directory, else
``<run.out_dir>/compile_cache``); ``false`` never.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..config import Config, to_dict

ENV_DIR = "DDPM_COMPILE_CACHE_DIR"
_SOURCES = Path(__file__).resolve().parents[1]


def source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(_SOURCES.rglob("*.py")):
        h.update(str(path.relative_to(_SOURCES)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(cfg: Config, *, world_size: int, device: str, start_step: object) -> str:
    import mindspore

    from .. import __version__

    d = to_dict(cfg)
    parts = {
        "config": {k: d[k] for k in ("model", "diffusion", "data", "train")},
        "mode": cfg.run.mode,
        "world_size": world_size,
        "device": device,
        "device_id": os.environ.get("DEVICE_ID", ""),
        "mindspore": mindspore.__version__,
        "ddpm_dist": __version__,
        "sources": source_hash(),
        "start_step": start_step if cfg.model.dropout > 0 else None,
    }
    return hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:16]


def cache_dir(cfg: Config, *, world_size: int, device: str, start_step: object) -> Path | None:
    """The directory for this process's graphs, or None when the cache is off for this run."""
    mode = str(cfg.run.compile_cache).lower()
    root = os.environ.get(ENV_DIR, "")
    if mode == "false" or (mode == "auto" and not root):
        return None
    root = Path(root) if root else Path(cfg.run.out_dir) / "compile_cache"
    return root / cache_key(cfg, world_size=world_size, device=device, start_step=start_step)


def enable(path: Path | None) -> None:
    """Point MindSpore's compile cache at ``path`` (before the first graph compiles); None leaves it off."""
    if path is None:
        return
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    os.environ["MS_COMPILER_CACHE_PATH"] = str(path)
