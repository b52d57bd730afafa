"""Asynchronous checkpoints (``train.async_save``) in one process: the background writer's rules, the host snapshot,
and real runs - async equals sync bitwise; SIGKILL during a background write, then SIGTERM during one, then the end
of the run, still ends bitwise equal; an error exit finishes the pending write. (2 msrun workers, the time-based
interval and a kill of the whole job during a background write: test_reliability.py; a full disk: test_reliability.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mindspore import nn
from train_helpers import ROOT, TINY, env, final_state, prepare_digits, run_train

from ddpm_dist import checkpoint
from ddpm_dist.checkpoint.background import BackgroundWriter
from ddpm_dist.config import ConfigError, load_config

FAIL_AT = str(ROOT / "tests" / "workers" / "fail_at_step.py")
TOTAL = 12
COMMON = [TINY, "model.dropout=0", f"train.total_steps={TOTAL}", "train.ckpt_every=4", "train.keep_last=3",
          "run.log_every=2"]  # fmt: skip


# ---------------------------------------------------------------- the writer and the snapshot (no training)
def _wait_until_done(writer: BackgroundWriter):
    deadline = time.time() + 30
    while True:
        outcome = writer.poll()
        if outcome is not None or not writer.pending:
            return outcome
        assert time.time() < deadline
        time.sleep(0.01)


def test_background_writes_run_one_at_a_time_in_a_non_daemon_thread():
    writer, gate, order = BackgroundWriter(), threading.Event(), []

    def first():
        gate.wait(10)
        order.append(1)
        return Path("one")

    writer.submit(first, step=1)
    busy = [t for t in threading.enumerate() if t.name == "ddpm-dist checkpoint of step 1"]
    assert busy and not busy[0].daemon  # the interpreter finishes it before the process ends
    assert writer.pending and writer.poll() is None  # still writing: the training thread goes on
    threading.Timer(0.2, gate.set).start()
    writer.submit(lambda: order.append(2) or Path("two"), step=2)  # waits for the first write
    step, path, seconds = writer.wait()
    assert order == [1, 2] and (step, path) == (2, Path("two")) and seconds >= 0
    assert not writer.pending and writer.wait() is None and writer.poll() is None


@pytest.mark.parametrize("surfaces", ["poll", "wait", "submit"])
def test_a_failed_background_write_is_raised_in_the_training_thread(surfaces):
    writer = BackgroundWriter()

    def disk_full():
        raise checkpoint.CheckpointError("could not write checkpoint x/step_00000003.ckpt: No space left on device")

    writer.submit(disk_full, step=3)
    started = []
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device"):
        if surfaces == "poll":
            _wait_until_done(writer)
        elif surfaces == "wait":
            writer.wait()
        else:
            writer.submit(lambda: started.append(4), step=4)
    assert started == [] and not writer.pending  # raised once, and the next write never started


class _Small(nn.Cell):
    def __init__(self):
        super().__init__()
        self.dense = nn.Dense(16, 8)


def test_snapshot_is_a_copy_of_the_step_boundary_and_saves_like_the_cell(tmp_path):
    cell = _Small()
    before = cell.dense.weight.asnumpy().copy()
    snap = checkpoint.snapshot(cell)
    view = cell.dense.weight.asnumpy()
    view += 1.0  # what the next compiled step does: an in-place update of the parameter's memory
    assert not np.array_equal(cell.dense.weight.asnumpy(), before)  # the update is visible through the parameter
    checkpoint.save(snap, tmp_path, step=1, meta={"images_seen": 1})
    checkpoint.save(cell, tmp_path, step=2, meta={"images_seen": 2})
    from_snap, from_cell = (checkpoint.read(tmp_path / f"step_{s:08d}.ckpt") for s in (1, 2))
    np.testing.assert_array_equal(from_snap.arrays["dense.weight"], before)
    assert list(from_snap.arrays) == list(from_cell.arrays) and len(from_cell.arrays) == 2
    assert [k for k in from_snap.meta if k != "step"] == [k for k in from_cell.meta if k != "step"]
    assert all(from_snap.arrays[k].dtype == from_cell.arrays[k].dtype for k in from_cell.arrays)


def test_host_copy_reuses_its_buffers_and_each_take_holds_the_current_values():
    cell, host = _Small(), checkpoint.HostCopy()
    first = {e["name"]: e["data"].asnumpy() for e in host.take(cell)}["dense.weight"].copy()
    view = cell.dense.weight.asnumpy()
    view *= 2.0
    second = {e["name"]: e["data"] for e in host.take(cell)}["dense.weight"]
    np.testing.assert_array_equal(second.asnumpy(), first * 2.0)
    assert np.shares_memory(second.asnumpy(), host._buffers["dense.weight"])  # no fresh allocation per save


@pytest.mark.parametrize(
    "override, says",
    [("train.ckpt_every_minutes=-1", "must be >= 0"), ("train.ckpt_every_minutes=inf", "finite"),
     ("train.async_save=maybe", "not a valid bool")],
)  # fmt: skip
def test_checkpoint_keys_are_validated(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(TINY, [override])


# ---------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


def _states(run: Path) -> dict:
    """step -> name -> array of every checkpoint of a run."""
    out = {}
    for e in checkpoint.read_index(run / "checkpoints"):
        out[e["step"]] = checkpoint.read(run / "checkpoints" / e["file"]).arrays
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if ".partial" in p.name or p.suffix == ".tmp")


@pytest.fixture(scope="module")
def sync_run(digits8, tmp_path_factory) -> dict:
    """Every checkpoint (steps 4, 8, 12) of a run with synchronous saves."""
    run = tmp_path_factory.mktemp("sync") / "run"
    res = run_train("--config", *COMMON, f"data.path={digits8}", f"run.out_dir={run}", "train.async_save=false")
    assert res.returncode == 0, res.stderr
    assert "written in the background" not in res.stdout
    return _states(run)


@pytest.mark.slow
def test_async_saves_equal_sync_saves_bitwise(digits8, sync_run, tmp_path):
    """Weights, Adam moments and step, EMA and its counter, loss scale and its counter: every checkpoint equal."""
    run = tmp_path / "run"
    res = run_train("--config", *COMMON, f"data.path={digits8}", f"run.out_dir={run}", "train.async_save=true")
    assert res.returncode == 0, res.stderr
    for step in (4, 8, 12):
        assert f"step_{step:08d}.ckpt (written in the background in" in res.stdout
    states = _states(run)
    assert sorted(states) == sorted(sync_run) == [4, 8, 12]
    assert {"loss_scale.value", "loss_scale.good_steps", "ema.updates"} <= set(states[12])
    assert any(k.startswith("moment1.") for k in states[12]) and any(k.startswith("ema.") for k in states[12])
    for step in states:
        _assert_same(sync_run[step], states[step])
    assert _temporaries(run) == []


def _run_until(cmd: list[str], line_start: str, **env_extra) -> tuple[subprocess.Popen, list[str]]:
    """Start ``cmd`` and read its stdout until a line starting with ``line_start`` (the process keeps running)."""
    proc = subprocess.Popen(cmd, env=env() | env_extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            return proc, seen
    proc.wait(timeout=60)
    raise AssertionError(
        f"the run ended ({proc.returncode}) before {line_start!r}: {''.join(seen)} {proc.stderr.read()}"
    )


@pytest.mark.slow
def test_sigkill_then_sigterm_during_background_writes_then_the_run_ends_bitwise_equal(digits8, sync_run, tmp_path):
    """A background write is made slow (the store's test hook sleeps between the write and the rename). SIGKILL while
    the write of step 8 is pending -> the step-4 checkpoint and the index are untouched; the relaunch, SIGTERM while
    its step-8 write is pending -> that write is finished, the stop step saved, exit 0, no temporary; the last
    launch ends equal to the synchronous run bitwise."""
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    common = ["--config", *COMMON, f"data.path={digits8}", f"run.out_dir={run}", "train.async_save=true"]
    cmd = [sys.executable, "-m", "ddpm_dist.train", *common]
    first = run_train(*common, "train.total_steps=4")
    assert first.returncode == 0, first.stderr
    step4 = (ckpts / "step_00000004.ckpt").read_bytes()

    proc, _ = _run_until(cmd, "step 10/", **{checkpoint.SLOW_WRITE_ENV: "120"})  # training went on past the save
    assert (ckpts / ".step_00000008.partial.ckpt").is_file()  # written, not yet renamed: the kill lands mid-write
    proc.kill()
    proc.wait(timeout=60)
    assert checkpoint.read_index(ckpts) == [{"file": "step_00000004.ckpt", "step": 4}]
    assert (ckpts / "step_00000004.ckpt").read_bytes() == step4 and not (ckpts / "step_00000008.ckpt").exists()

    # the step-8 write takes 20 s: long enough that a loaded machine still reaches step 10 with it pending (2 s was
    # not, on CI); the stop step's own write is not slowed
    proc, _ = _run_until(cmd, "step 10/", **{checkpoint.SLOW_WRITE_ENV: "20@8"})
    assert not (ckpts / "step_00000008.ckpt").exists()  # the step-8 write is still pending
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    stopped = [ln for ln in out.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert stopped, out
    stop_step = int(stopped[0].split(" at step ")[1].split(":")[0])
    assert 10 <= stop_step < TOTAL and "step_00000008.ckpt (written in the background" in out
    assert [e["step"] for e in checkpoint.read_index(ckpts)] == [4, 8, stop_step] and _temporaries(run) == []

    last = run_train(*common)
    assert last.returncode == 0, last.stderr
    assert f"at step {stop_step}" in last.stdout and _temporaries(run) == []
    _assert_same(sync_run[TOTAL], final_state(run))


@pytest.mark.slow
def test_an_error_exit_finishes_the_pending_background_write(digits8, tmp_path):
    """The data read of step 6 fails while the (slow) write of step 4 is pending: one line, exit 2, and the step-4
    checkpoint was completed and indexed before the process ended (the writer thread is not a daemon)."""
    run = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, FAIL_AT, "6", "--config", *COMMON, f"data.path={digits8}", f"run.out_dir={run}",
         "train.async_save=true"],
        env=env() | {checkpoint.SLOW_WRITE_ENV: "3"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "injected by fail_at_step at step 6" in lines[0], res.stderr
    assert checkpoint.read_index(run / "checkpoints") == [{"file": "step_00000004.ckpt", "step": 4}]
    assert checkpoint.read(run / "checkpoints" / "step_00000004.ckpt").meta["step"] == 4
    assert _temporaries(run) == []
