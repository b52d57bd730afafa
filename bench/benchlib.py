"""What the scripts in ``bench/`` share: the child-process environment, the one error style, the TensorBoard reader
and the seed-averaged digits scoring.

A bench script is run as ``python bench/<name>.py`` (this directory is then first on ``sys.path``, so ``import
benchlib`` needs no path edit) and prints one JSON document on stdout. Its ``main`` runs its body through
``ddpm_dist.cli_util.run_main`` like every entry point: when it cannot produce its numbers (:class:`BenchError`, passed
as a one-line fault) it prints one line, ``error: <message>``, on stderr and exits 1; a bad flag or a user error of
the library (a config, a checkpoint) exits 2. Nothing here is timed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """The benchmark cannot produce its numbers; the message is one line."""


def env(**extra: str) -> dict:
    """The environment of a child process: MindSpore quiet (``GLOG_v=3`` unless set), oneDNN's AVX2 convolutions on
    CPU (docs/development.md), and this checkout first on ``PYTHONPATH``; ``extra`` last."""
    e = dict(os.environ)
    e.setdefault("GLOG_v", "3")
    e.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH", "")]))
    return e | extra


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checked(cmd: list[str], *, what: str, tail: int = 800, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd`` (text, captured, :func:`env` unless given); a non-zero exit raises BenchError naming ``what``
    with the end of its output."""
    kwargs.setdefault("env", env())
    res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if res.returncode:
        text = (res.stderr.strip() or res.stdout.strip())[-tail:]
        raise BenchError(f"{what} failed ({res.returncode}): {text}")
    return res


def scalars(run_dir: Path, tag: str) -> list[float]:
    """The values of one TensorBoard scalar of a run (``<run_dir>/tb``), in step order; [] when it was never logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def score_both(images, train_images) -> dict:
    """The digits metric of uint8 ``images`` against a model's own training images and against the held-out digits:
    ``{"vs_train": {...}, "vs_heldout": {...}}`` with fd, confidence and class_entropy rounded to 4 places."""
    from ddpm_dist.eval.digits import digits_scores

    return {"vs_train": _short(digits_scores(images, reference=train_images)),
            "vs_heldout": _short(digits_scores(images))}  # fmt: skip


def seed_means(runs: list[dict]) -> dict:
    """The mean FDs over several seeds' :func:`score_both` results: ``{"fd_vs_train": ..., "fd_vs_heldout": ...}``."""
    import numpy as np

    return {f"fd_{ref}": round(float(np.mean([r[ref]["fd"] for r in runs])), 4) for ref in ("vs_train", "vs_heldout")}


def _short(scores: dict) -> dict:
    return {k: round(float(scores[k]), 4) for k in ("fd", "confidence", "class_entropy")}


def result_json(doc: dict) -> str:
    """A bench's result as printed: ``doc`` with, first, when it was measured (UTC), the date README.md and docs/
    quote beside its figures (tests/test_figures.py checks them against bench/results/*.json)."""
    return json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **doc}, indent=1)
