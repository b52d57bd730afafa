"""Faults a run must survive without losing data: SIGKILL of a 2-worker msrun job at random moments (including in
the middle of checkpoint writes, which run in the background with train.async_save), a damaged checkpoint index, and
a disk that fills up during training (a synchronous or a background write); 2 workers agreeing on time-based saves."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import ROOT, TINY, env, final_state, free_port, prepare_digits, run_train, worker_logs

from ddpm_dist import checkpoint

TEMPORARY_MARKS = (".partial", ".tmp", ".probe")


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


def _temporaries(ckpt_dir: Path) -> list[str]:
    return sorted(p.name for p in ckpt_dir.iterdir() if any(m in p.name for m in TEMPORARY_MARKS))


def _job_pids(marker: str) -> list[int]:
    """Every process of one launch (bash, msrun, its scheduler and workers): their command lines hold ``marker``."""
    res = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split() if int(p) != os.getpid()]


def _kill_job(marker: str, proc: subprocess.Popen) -> None:
    """SIGKILL every process of the job at once (a power cut or the OOM killer), then reap them."""
    for pid in _job_pids(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while _job_pids(marker):
        assert time.time() < deadline, f"processes survived SIGKILL: {_job_pids(marker)}"
        time.sleep(0.2)


def _steps(ckpt_dir: Path) -> list[int]:
    return [e["step"] for e in checkpoint.read_index(ckpt_dir)] if (ckpt_dir / "index.json").is_file() else []


TOTAL = 24  # steps of every 2-worker run below; the uninterrupted reference is launched once for the module
STRAIGHT = [TINY, "model.dropout=0", f"train.total_steps={TOTAL}"]  # checkpoint and log settings do not change weights


def _launch(run: Path, logs: Path, *overrides: str) -> subprocess.Popen:
    """``launch/run_8p.sh`` with 2 workers, writing to ``run``; the processes' command lines all hold ``run``."""
    e = env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(logs), "CLUSTER_TIMEOUT": "120"}
    cmd = ["bash", str(ROOT / "launch" / "run_8p.sh"), *overrides, f"run.out_dir={run}"]
    return subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def straight(digits8, tmp_path_factory) -> dict:
    """Final weights, Adam moments and EMA of an uninterrupted 2-worker run of TOTAL steps."""
    root = tmp_path_factory.mktemp("straight")
    proc = _launch(
        root / "run", root / "logs", *STRAIGHT, f"data.path={digits8}", "train.ckpt_every=0", "train.async_save=false"
    )
    assert proc.wait(timeout=900) == 0, worker_logs(root / "logs")
    return final_state(root / "run")


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.distributed
def test_sigkill_of_two_workers_at_random_moments_then_resume_ends_bitwise_equal(digits8, straight, tmp_path):
    """Two SIGKILLs of the whole 2-worker job in a row - at a random moment, and the moment a checkpoint write (in
    the background: train.async_save) is seen in progress - then a last launch finishes. After every kill each
    checkpoint the index lists passes its CRC; after the next saves no temporary is left; the final weights equal an
    uninterrupted run's bitwise (dropout 0: every other random stream resumes exactly)."""
    common = [
        *STRAIGHT,
        f"data.path={digits8}",
        "train.ckpt_every=1",
        "train.keep_last=2",
        "run.log_every=4",
        "train.async_save=true",
    ]
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    rng = np.random.default_rng(17)
    for k, moment in enumerate(["random", "during a checkpoint write"]):
        proc = _launch(run, tmp_path / f"logs{k}", *common)
        start = max(_steps(ckpts), default=0)
        deadline = time.time() + 600
        while max(_steps(ckpts), default=0) <= start:  # training has resumed and saved once more
            assert proc.poll() is None and time.time() < deadline, worker_logs(tmp_path / f"logs{k}")
            time.sleep(0.05)
        if moment == "random":
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # MindSpore's .tmp or our partial file: rank 0 is inside checkpoint.save right now
            while not any(".partial" in name for name in os.listdir(ckpts)):
                assert proc.poll() is None and time.time() < deadline, "the run ended before a write was caught"
                time.sleep(0.001)
        _kill_job(str(run), proc)
        steps = _steps(ckpts)
        assert steps and max(steps) < TOTAL, (moment, steps)  # killed before the end, with something to resume
        for step in steps:  # every listed checkpoint is complete: read() checks the CRC
            path = ckpts / f"step_{step:08d}.ckpt"
            assert checkpoint.read(path).meta["step"] == step

    last = _launch(run, tmp_path / "logs_last", *common)
    assert last.wait(timeout=900) == 0, worker_logs(tmp_path / "logs_last")
    assert _temporaries(ckpts) == [] and _steps(ckpts)[-1] == TOTAL
    _assert_same_state(straight, final_state(run))


@pytest.mark.slow
@pytest.mark.distributed
def test_async_time_based_saves_happen_at_one_step_on_both_workers_and_change_nothing(digits8, straight, tmp_path):
    """train.ckpt_every_minutes (tiny here: due at every step on rank 0's clock) with background writes: both workers
    log the same save steps, all at the every-10-steps agreement, the checkpoints appear, and the final weights, Adam,
    EMA and loss scale equal the synchronous run's bitwise."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    proc = _launch(run, logs, *STRAIGHT, f"data.path={digits8}", "train.ckpt_every=0", "train.ckpt_every_minutes=1e-4",
                   "train.async_save=true", "run.log_every=4")  # fmt: skip
    assert proc.wait(timeout=900) == 0, worker_logs(logs)
    said = r"^step (\d+): checkpoint due \(train\.ckpt_every_minutes"
    due = [re.findall(said, (logs / f"worker_{r}.log").read_text(), re.M) for r in (0, 1)]
    assert due[0] == due[1] == ["10", "20"], due
    log0 = (logs / "worker_0.log").read_text()
    assert all(f"step_{s:08d}.ckpt (written in the background" in log0 for s in (10, 20))
    assert _steps(run / "checkpoints") == [10, 20, TOTAL] and _temporaries(run / "checkpoints") == []
    _assert_same_state(straight, final_state(run))


@pytest.mark.slow
def test_damaged_index_then_the_same_command_resumes_instead_of_starting_over(digits8, tmp_path):
    run = tmp_path / "run"
    common = ["--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", "train.ckpt_every=2"]
    first = run_train(*common, "train.total_steps=4")
    assert first.returncode == 0, first.stderr
    kept = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("step_*.ckpt")}
    (run / "checkpoints" / "index.json").write_text("{garbage")
    again = run_train(*common, "train.total_steps=6")
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout and "at step 4" in again.stdout and "steps 4->6" in again.stdout
    assert "rebuilt from 2 checkpoint file(s)" in again.stderr
    assert _steps(run / "checkpoints") == [2, 4, 6]
    for name, data in kept.items():
        assert (run / "checkpoints" / name).read_bytes() == data  # never overwritten


@pytest.mark.slow
@pytest.mark.parametrize("async_save", ["false", "true"])
def test_disk_full_during_training_is_one_line_and_leaves_a_valid_index_and_no_temporary(
    digits8, small_tmpfs, async_save
):
    """With train.async_save the failing write runs in the background: its error is raised at the next step boundary
    (or the next save), as the same one line and exit 2."""
    run = small_tmpfs / "run"  # 2.9 MB checkpoints, all kept: the 7th save finds the disk full
    res = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", "train.total_steps=12",
                    "train.ckpt_every=1", "train.keep_last=12", "run.log_every=1",
                    f"train.async_save={async_save}")  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0]
    assert ("written in the background" in res.stdout) == (async_save == "true")
    ckpts = run / "checkpoints"
    assert _temporaries(ckpts) == [] and _temporaries(run) == []
    steps = _steps(ckpts)
    assert steps and steps == list(range(1, len(steps) + 1))
    for step in steps:
        checkpoint.read(ckpts / f"step_{step:08d}.ckpt")


def test_tensorboard_on_a_full_disk_is_one_error_and_no_traceback_at_exit(small_tmpfs, tmp_path):
    """tensorboardX writes from its own thread: a full disk used to print tracebacks from that thread and again from
    its atexit hook (and a full queue behind the dead thread could block the training loop)."""
    script = tmp_path / "tb_full.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})  # tests/, for train_helpers
from ddpm_dist.logging import TensorBoard, TensorBoardError
from train_helpers import fill_up
tb = TensorBoard({str(small_tmpfs / "run")!r}, rank=0)
fill_up({str(small_tmpfs / "filler")!r})
try:
    for i in range(5000):
        tb.scalars({{"a": 1.0, "b": 2.0}}, i)
    tb.flush()
except TensorBoardError as err:
    print("error:", err, file=sys.stderr)
    sys.exit(2)
finally:
    tb.close()
""")
    res = subprocess.run([sys.executable, str(script)], env=env(), capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "could not write TensorBoard events to" in lines[0] and "No space left on device" in lines[0]
