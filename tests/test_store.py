"""The checkpoint store decides what may be read, overwritten or deleted (issue 23, items 2-7), and set-up errors
leave nothing behind (item 13): unit tests of ``ddpm_dist.checkpoint`` and its run-directory lock, then real
``python -m ddpm_dist.train`` runs on the 8x8 digits reproducing each way a run used to lose its checkpoints.

R below is a finished 6-step tiny run (steps 3 and 6 saved, dropout 0); REF is an uninterrupted 9-step run with the
same settings. Every test works on a copy of R, checks that R's checkpoints survive byte for byte, and where the run
continues, that its step-9 state equals REF's bitwise.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mindspore import nn
from train_helpers import (
    ROOT,
    TINY,
    env,
    fill_up,
    final_state,
    free_port,
    mounted_tmpfs,
    prepare_digits,
    run_train,
    worker_logs,
)

from ddpm_dist import checkpoint


class _Small(nn.Cell):
    def __init__(self, n: int = 16):
        super().__init__()
        self.dense = nn.Dense(n, n)


def _saved(tmp_path: Path, steps=(1, 2, 3), **kw) -> dict[str, bytes]:
    cell = _Small()
    for step in steps:
        checkpoint.save(cell, tmp_path, step=step, meta={"images_seen": step}, **kw)
    return {p.name: p.read_bytes() for p in tmp_path.glob("step_*.ckpt")}


def _intact(ckpt_dir: Path, originals: dict[str, bytes]) -> None:
    for name, data in originals.items():
        assert (ckpt_dir / name).read_bytes() == data, f"{name} changed or deleted"


# ---------------------------------------------------------------- item 2: unreadable is not corrupt
def test_an_io_error_on_the_newest_checkpoint_is_raised_not_skipped(tmp_path, monkeypatch):
    """EIO / EACCES used to read as "corrupt": the newest checkpoint was skipped and later overwritten."""
    _saved(tmp_path, steps=(1, 2))
    newest = tmp_path / "step_00000002.ckpt"
    real_open = open

    def failing_open(path, *args, **kwargs):
        if Path(path) == newest:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.io, "open", failing_open, raising=False)  # the module that reads checkpoints
    with pytest.raises(checkpoint.CheckpointUnreadable, match="step_00000002.ckpt: cannot read .*Input/output error"):
        checkpoint.latest(tmp_path)
    with pytest.raises(checkpoint.CheckpointUnreadable):  # and a rebuild of a damaged index does not skip it either
        (tmp_path / "index.json").write_text("[")
        checkpoint.read_index(tmp_path)


def test_when_no_checkpoint_loads_latest_raises_instead_of_returning_none(tmp_path):
    originals = _saved(tmp_path, steps=(1, 2))
    for name in originals:
        (tmp_path / name).write_bytes(originals[name][:1000])  # every file truncated
    with pytest.raises(checkpoint.CheckpointError, match="none of the 2 checkpoint"):
        checkpoint.latest(tmp_path)
    (tmp_path / "step_00000001.ckpt").write_bytes(originals["step_00000001.ckpt"])  # an older one loads: fall back
    with pytest.warns(UserWarning, match="skipping unusable checkpoint.*step_00000002"):
        assert checkpoint.latest(tmp_path).path.name == "step_00000001.ckpt"


# ---------------------------------------------------------------- items 3, 4: an index contradicting the files
def test_an_empty_index_beside_checkpoint_files_is_rebuilt(tmp_path):
    originals = _saved(tmp_path)
    (tmp_path / "index.json").write_text("[]")
    with pytest.warns(UserWarning, match="empty list beside 3 step_.*rebuilt from 3"):
        assert [e["step"] for e in checkpoint.read_index(tmp_path)] == [1, 2, 3]
    _intact(tmp_path, originals)


def test_an_entry_whose_step_contradicts_its_file_is_rebuilt_and_retention_keeps_the_newer(tmp_path):
    originals = _saved(tmp_path, steps=(3, 6))
    (tmp_path / "index.json").write_text(json.dumps([{"file": "step_00000003.ckpt", "step": 999},
                                                     {"file": "step_00000006.ckpt", "step": 6}]))  # fmt: skip
    with pytest.warns(UserWarning, match="contradicting its files"):
        assert checkpoint.read_index(tmp_path) == [{"file": "step_00000003.ckpt", "step": 3},
                                                   {"file": "step_00000006.ckpt", "step": 6}]  # fmt: skip
    _intact(tmp_path, originals)


def test_retention_never_deletes_a_checkpoint_newer_than_the_one_saved(tmp_path):
    _saved(tmp_path, steps=(3, 6, 9), keep_last=3)
    ninth = tmp_path / "step_00000009.ckpt"
    ninth.write_bytes(ninth.read_bytes()[:500])  # a corrupt newer file (resume fell back past it) may be replaced,
    checkpoint.save(_Small(), tmp_path, step=7, meta={"images_seen": 7}, keep_last=1)  # but retention leaves it
    assert [e["step"] for e in checkpoint.read_index(tmp_path)] == [7, 9] and ninth.is_file()


def test_a_save_below_a_newer_checkpoint_that_loads_is_refused(tmp_path):
    originals = _saved(tmp_path, steps=(3, 6))
    assert checkpoint.newer_checkpoints(tmp_path, 3) == [{"file": "step_00000006.ckpt", "step": 6}]
    with pytest.raises(checkpoint.CheckpointError, match="refusing to write .*step_00000004.ckpt.*step_00000006"):
        checkpoint.save(_Small(), tmp_path, step=4, meta={"images_seen": 4}, keep_last=1)
    _intact(tmp_path, originals)
    assert not (tmp_path / "step_00000004.ckpt").exists()


# ---------------------------------------------------------------- item 6: one writer per run directory
_HOLDER = """
import sys, time
from ddpm_dist.checkpoint.lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire(create=True)
print("locked", flush=True)
time.sleep(600)
"""


def test_the_run_lock_refuses_a_second_holder_and_a_killed_holder_releases_it(tmp_path):
    from ddpm_dist.checkpoint.lock import RunDirInUse, RunLock

    run = tmp_path / "run"
    assert RunLock(run).acquire(create=False) is False and not run.exists()  # nothing created before set-up passed
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirInUse, match=f"run.out_dir {run} is in use by another run \\(pid {holder.pid} on "):
            RunLock(run).acquire(create=True)
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock, no stale lock file blocks the next run
        holder.wait(timeout=60)
    lock = RunLock(run)
    assert lock.acquire(create=False) and (run / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


# ---------------------------------------------------------------- item 13: nothing left behind
def test_tensorboard_creates_its_directory_at_the_first_write_only(tmp_path):
    from ddpm_dist.logging import TensorBoard

    tb = TensorBoard(str(tmp_path / "run"), rank=0)
    assert not (tmp_path / "run").exists()
    tb.scalars({"a": 1.0}, 1)
    tb.close()
    assert list((tmp_path / "run" / "tb").glob("events.*"))


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 1 MB tmpfs filled up (needs root); skips when it cannot be mounted."""
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mnt:
        fill_up(mnt / "filler")
        yield mnt


def test_a_full_disk_is_found_by_the_set_up_probe_and_named(full_tmpfs):
    """mkdir alone still succeeds on a full tmpfs: the old probe passed and tb/ was left behind by the run."""
    from ddpm_dist.storage import probe_writable, write_text_atomic

    (full_tmpfs / "made").mkdir()  # what the old probe did
    with pytest.raises(OSError, match=f"No space left on device .*into {full_tmpfs}"):
        probe_writable(full_tmpfs / "run")
    with pytest.raises(OSError, match=f"could not write {full_tmpfs / 'made' / 'config.yaml'}: No space left"):
        write_text_atomic(full_tmpfs / "made" / "config.yaml", "x" * 100_000)
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler", "made"]
    assert not list((full_tmpfs / "made").iterdir())


# ---------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


def _t(data: Path, run: Path, *overrides: str) -> subprocess.CompletedProcess:
    """T of the issue: the tiny config, dropout 0 (exact resume), checkpoints at 3 and 6."""
    return run_train("--config", TINY, f"data.path={data}", "model.dropout=0", "train.total_steps=6",
                     "train.ckpt_every=3", "run.log_every=3", f"run.out_dir={run}", *overrides)  # fmt: skip


@pytest.fixture(scope="module")
def runs(digits8, tmp_path_factory) -> dict:
    """R (a finished 6-step run), its checkpoint bytes, and REF's final state (9 steps straight)."""
    root = tmp_path_factory.mktemp("store")
    r = _t(digits8, root / "R")
    assert r.returncode == 0, r.stderr
    ref = _t(digits8, root / "REF", "train.total_steps=9")
    assert ref.returncode == 0, ref.stderr
    ckpts = root / "R" / "checkpoints"
    return {"R": root / "R", "bytes": {p.name: p.read_bytes() for p in ckpts.glob("step_*.ckpt")},
            "ref": final_state(root / "REF")}  # fmt: skip


def _copy_r(runs: dict, dst: Path) -> Path:
    shutil.copytree(runs["R"], dst)
    (dst / ".lock").unlink(missing_ok=True)
    return dst


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (res.returncode, res.stderr)
    return lines[0]


def _continues_bitwise(runs: dict, run: Path, res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr
    assert "resumed from" in res.stdout and "at step 6" in res.stdout and "done: step 9" in res.stdout
    ref, got = runs["ref"], final_state(run)
    assert set(ref) == set(got)
    for name in ref:
        np.testing.assert_array_equal(ref[name], got[name], err_msg=name)


def _as_another_user() -> list[str]:
    """A command prefix under which chmod 000 denies reading, as for a colleague's run directory: ``unshare -U``
    (root without its capabilities) when running as root, nothing otherwise."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run(["unshare", "-U", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -U is not available here: {probe.stderr.decode().strip()}")
    return ["unshare", "-U"]


@pytest.mark.slow
def test_unreadable_checkpoints_stop_the_run_then_it_resumes_bitwise(digits8, runs, tmp_path):
    """Item 2: chmod 000 on every checkpoint, then T as another user: "skipping unusable checkpoint ... permission",
    training from step 0, steps 3 and 6 overwritten, exit 0. Now one line naming the newest file and the cause."""
    prefix = _as_another_user()
    run = _copy_r(runs, tmp_path / "run")
    for f in (run / "checkpoints").glob("step_*.ckpt"):
        f.chmod(0)
    cmd = [*prefix, sys.executable, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={digits8}",
           "model.dropout=0", "train.total_steps=9", "train.ckpt_every=3", f"run.out_dir={run}"]  # fmt: skip
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    line = _one_error_line(res)
    assert "step_00000006.ckpt: cannot read this checkpoint (Permission denied)" in line
    for f in (run / "checkpoints").glob("step_*.ckpt"):
        f.chmod(0o400)
    _intact(run / "checkpoints", runs["bytes"])
    assert not (run / "checkpoints" / "step_00000009.ckpt").exists()
    _continues_bitwise(runs, run, _t(digits8, run, "train.total_steps=9"))


@pytest.mark.slow
def test_every_checkpoint_truncated_stops_the_run_instead_of_starting_over(digits8, runs, tmp_path):
    run = _copy_r(runs, tmp_path / "run")
    for f in (run / "checkpoints").glob("step_*.ckpt"):
        f.chmod(0o600)
        f.write_bytes(runs["bytes"][f.name][:2000])
    truncated = {f.name: f.read_bytes() for f in (run / "checkpoints").glob("step_*.ckpt")}
    line = _one_error_line(_t(digits8, run, "train.total_steps=9"))
    assert "none of the 2 checkpoint(s)" in line and "step_00000006.ckpt" in line
    _intact(run / "checkpoints", truncated)  # not overwritten either


@pytest.mark.slow
def test_an_empty_index_resumes_from_the_files_and_continues_bitwise(digits8, runs, tmp_path):
    """Item 3: ``[]`` as index.json restarted at step 0 without a word and overwrote both checkpoints."""
    run = _copy_r(runs, tmp_path / "run")
    (run / "checkpoints" / "index.json").write_text("[]")
    res = _t(digits8, run, "train.total_steps=9")
    assert "is an empty list beside 2 step_*.ckpt file(s); rebuilt" in res.stderr
    _continues_bitwise(runs, run, res)
    _intact(run / "checkpoints", runs["bytes"])


@pytest.mark.slow
def test_an_index_step_contradicting_its_file_does_not_let_retention_delete_the_new_checkpoint(digits8, runs, tmp_path):
    """Item 4: with ``{"file": "step_00000003.ckpt", "step": 999}`` and keep_last=1 the run saved step 9, then retention
    deleted steps 6 and 9 (keeping "999"). Now the index is rebuilt from the files and step 9 is what is kept."""
    run = _copy_r(runs, tmp_path / "run")
    index = [{"file": "step_00000003.ckpt", "step": 999}, {"file": "step_00000006.ckpt", "step": 6}]
    (run / "checkpoints" / "index.json").write_text(json.dumps(index))
    res = _t(digits8, run, "train.total_steps=9", "train.keep_last=1")
    assert "contradicting its files" in res.stderr
    _continues_bitwise(runs, run, res)
    assert checkpoint.read_index(run / "checkpoints") == [{"file": "step_00000009.ckpt", "step": 9}]


@pytest.mark.slow
def test_resume_none_into_a_used_run_dir_is_refused_and_no_error_suggests_it(digits8, runs, tmp_path):
    """Item 5: resume=none saved its own steps over the old run's and retention deleted them; the model-mismatch
    error suggested exactly that."""
    run = _copy_r(runs, tmp_path / "run")
    line = _one_error_line(_t(digits8, run, "train.resume=none", "train.total_steps=3"))
    assert f"run.out_dir {run} already holds checkpoints (newest: step 6)" in line and "new run.out_dir" in line
    other = _one_error_line(_t(digits8, run, "model.ch=32"))
    assert "model.ch" in other and "resume=none" not in other and "new run.out_dir" in other
    _intact(run / "checkpoints", runs["bytes"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["index.json", *sorted(runs["bytes"])]


@pytest.mark.slow
def test_a_second_run_into_a_busy_run_dir_is_refused_and_a_killed_run_releases_it(digits8, runs, tmp_path):
    """Item 6: two runs into one run.out_dir overwrote each other's step files. The first run holds the lock; the
    second is one line naming its pid; after a SIGKILL of the first the same command resumes bitwise."""
    run = _copy_r(runs, tmp_path / "run")
    cmd = [sys.executable, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={digits8}", "model.dropout=0",
           "train.total_steps=100000", "train.ckpt_every=0", "run.log_every=2", f"run.out_dir={run}"]  # fmt: skip
    first = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in first.stdout:
            if line.startswith("step 8/"):  # resumed and training: it holds the lock
                break
        else:
            raise AssertionError(f"the first run ended with {first.wait()}")
        line = _one_error_line(_t(digits8, run, "train.total_steps=9"))
        assert f"run.out_dir {run} is in use by another run (pid {first.pid} on " in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    _intact(run / "checkpoints", runs["bytes"])
    _continues_bitwise(runs, run, _t(digits8, run, "train.total_steps=9"))


@pytest.mark.slow
@pytest.mark.distributed
def test_under_msrun_rank_0_takes_the_lock_and_a_busy_run_dir_is_refused(digits8, runs, tmp_path):
    """Only rank 0 writes run.out_dir, so only it locks: a 2-worker job into a directory another process holds is
    refused by rank 0 (one line naming the holder) and writes nothing."""
    from ddpm_dist.checkpoint.lock import RunLock

    run = _copy_r(runs, tmp_path / "run")
    holder = RunLock(run)
    assert holder.acquire(create=False)
    try:
        launch = subprocess.run(
            ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, f"data.path={digits8}", "model.dropout=0",
             "train.total_steps=9", "train.ckpt_every=3", f"run.out_dir={run}"],
            env=env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "logs"),
                         "CLUSTER_TIMEOUT": "120"},
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        holder.release()
    logs = worker_logs(tmp_path / "logs")
    assert launch.returncode != 0, logs
    assert f"error: run.out_dir {run} is in use by another run (pid {os.getpid()} on " in logs
    _intact(run / "checkpoints", runs["bytes"])
    assert not (run / "checkpoints" / "step_00000009.ckpt").exists()


@pytest.mark.slow
def test_another_global_batch_continues_at_the_checkpoint_step_and_overwrites_nothing(digits8, runs, tmp_path):
    """Item 7: global_batch 8 -> 16 resumed "at step 3" (images seen / 16) without a word and overwrote step 6."""
    run = _copy_r(runs, tmp_path / "run")
    res = _t(digits8, run, "train.total_steps=9", "train.global_batch=16")
    assert res.returncode == 0, res.stderr
    assert "at step 6" in res.stdout and "steps 6->9" in res.stdout
    assert "train.global_batch=16, but step_00000006.ckpt was trained with train.global_batch=8" in res.stderr
    _intact(run / "checkpoints", runs["bytes"])
    meta = checkpoint.read(run / "checkpoints" / "step_00000009.ckpt").meta
    assert meta["step"] == 9 and meta["images_seen"] == 6 * 8 + 3 * 16


@pytest.mark.slow
@pytest.mark.parametrize("override", ["eval.inception=/nonexistent/inception.ckpt", "eval.ref=/nonexistent/ref"])
def test_missing_evaluation_inputs_leave_no_run_directory(digits8, tmp_path, override):
    """Item 13: the error line was right, but <run>/tb had been created before the check."""
    metric = "fid" if "inception" in override else "digits"
    run = tmp_path / "run"
    line = _one_error_line(_t(digits8, run, "eval.every=3", f"eval.metric={metric}", override))
    assert override.split("=")[0] in line and not run.exists()


@pytest.mark.slow
def test_a_full_disk_at_start_is_one_line_naming_the_place_and_leaves_nothing(digits8, full_tmpfs):
    run = full_tmpfs / "run"
    line = _one_error_line(_t(digits8, run))
    assert f"run.out_dir: cannot write to {run} (No space left on device" in line and str(full_tmpfs) in line
    assert sorted(p.name for p in full_tmpfs.iterdir()) == ["filler"]
