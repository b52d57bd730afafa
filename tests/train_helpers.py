"""Helpers for training tests: prepare the embedded digits at 8x8, run the CLI or msrun, read results back."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("GLOG_v", "3")
    e.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_digits(out: Path, size: int = 8) -> Path:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", "digits", "--output", str(out),
         "--image-size", str(size)],
        check=True, env=env(), capture_output=True,
    )  # fmt: skip
    return out


def run_train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddpm_dist.train", *args], env=env(), capture_output=True, text=True, timeout=timeout
    )


def run_msrun(script: str, *args: str, workers: int = 2, log_dir: Path, timeout: int = 600):
    cmd = ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={free_port()}",
           f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=120", script, *args]  # fmt: skip
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)


def worker_logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(Path(log_dir).glob("worker_*.log")))


def final_state(run_dir: Path) -> dict:
    """name -> numpy array of every non-meta entry of the newest checkpoint of a run."""
    from ddpm_dist import checkpoint

    return checkpoint.latest(Path(run_dir) / "checkpoints").arrays


def scalars(run_dir: Path) -> dict:
    """tag -> [(step, value)] from the run's TensorBoard events, read with the tensorboard package."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["_images"] = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return out


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str):
    """A tmpfs of ``size`` (e.g. ``20m``) mounted at ``where`` for the block (needs root); skips the test when it
    cannot be mounted."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {res.stderr.strip() or res.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_up(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(bytes(1 << 16))
                f.flush()
        except OSError:
            pass
