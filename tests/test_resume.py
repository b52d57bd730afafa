"""Checkpoints and exact resume: atomic saves, corrupt-file fallback, retention, step-exact continuation of one
process (2 msrun workers and a dead worker: test_reliability.py), pre-emption by SIGTERM, runaway non-finite losses,
and unwritable run dirs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from train_helpers import ROOT, TINY, env, final_state, free_port, prepare_digits, run_train, worker_logs

from ddpm_dist import checkpoint

INJECT = str(ROOT / "tests" / "workers" / "inject_nonfinite.py")


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


def _events(run_dir: Path, newest_only: bool = False) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((Path(run_dir) / "tb").glob("events.*"), key=lambda p: p.stat().st_mtime)
    acc = EventAccumulator(str(files[-1] if newest_only else Path(run_dir) / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _wait_for_checkpoint(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["step"] >= step for e in checkpoint.read_index(Path(run_dir) / "checkpoints")):
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early with {proc.returncode}")
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of step {step} after {timeout}s")


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------- checkpoint files
class _Small(nn.Cell):
    def __init__(self, n: int = 64):
        super().__init__()
        self.dense = nn.Dense(n, n)


def test_save_is_atomic_indexed_and_pruned(tmp_path):
    cell = _Small()
    for step in range(1, 8):
        checkpoint.save(cell, tmp_path, step=step, meta={"images_seen": step * 8}, keep_last=2, milestone_every=3)
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["step_00000003.ckpt", "step_00000006.ckpt", "step_00000007.ckpt"]
    assert [e["step"] for e in checkpoint.read_index(tmp_path)] == [3, 6, 7]
    found = checkpoint.latest(tmp_path)
    meta = found.meta
    assert found.path.name == "step_00000007.ckpt" and meta["step"] == 7 and meta["images_seen"] == 56
    assert meta["kind"] == checkpoint.KIND_TRAIN and meta["mindspore_version"] == ms.__version__


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    cell = _Small()
    for step in (1, 2):
        checkpoint.save(cell, tmp_path, step=step, meta={"images_seen": step})
    newest = tmp_path / "step_00000002.ckpt"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="step_00000002"):
        found = checkpoint.latest(tmp_path)
    assert found.path.name == "step_00000001.ckpt" and found.meta["step"] == 1


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    cell = _Small()
    checkpoint.save(cell, tmp_path, step=1, meta={"images_seen": 1})
    before = (tmp_path / "step_00000001.ckpt").read_bytes()

    def disk_full(obj, name, **kwargs):
        Path(name).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left"):
        checkpoint.save(cell, tmp_path, step=2, meta={"images_seen": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step_00000001.ckpt"]
    assert (tmp_path / "step_00000001.ckpt").read_bytes() == before
    assert checkpoint.latest(tmp_path).path.name == "step_00000001.ckpt"


@pytest.mark.parametrize(
    "damage",
    ["{garbage", '{"file": "step_00000003.ckpt", "step": 3}', '[{"file": "step_00000003.ckpt", "step": "3"}]', None],
)
def test_damaged_or_missing_index_is_rebuilt_from_the_checkpoints_own_metadata(tmp_path, damage):
    """A damaged index used to read as "no checkpoints": resume=auto started at step 0 and overwrote the files."""
    cell = _Small()
    for step in (1, 2, 3):
        checkpoint.save(cell, tmp_path, step=step, meta={"images_seen": step}, keep_last=3)
    originals = {p.name: p.read_bytes() for p in tmp_path.glob("step_*.ckpt")}
    if damage is None:
        (tmp_path / "index.json").unlink()
    else:
        (tmp_path / "index.json").write_text(damage)
    with pytest.warns(UserWarning, match="rebuilt from 3 checkpoint file"):
        found = checkpoint.latest(tmp_path)
    assert found.path.name == "step_00000003.ckpt" and found.meta["step"] == 3
    with pytest.warns(UserWarning, match="rebuilt"):  # the next save starts from the rebuilt list: nothing is lost
        checkpoint.save(cell, tmp_path, step=4, meta={"images_seen": 4}, keep_last=3)
    assert [e["step"] for e in checkpoint.read_index(tmp_path)] == [2, 3, 4]  # a valid index again; 1 pruned
    for name in ("step_00000002.ckpt", "step_00000003.ckpt"):
        assert (tmp_path / name).read_bytes() == originals[name]


def test_rebuild_skips_files_failing_their_crc_and_stops_when_none_verifies(tmp_path):
    cell = _Small()
    for step in (1, 2):
        checkpoint.save(cell, tmp_path, step=step, meta={"images_seen": step})
    (tmp_path / "index.json").write_text("[")
    newest = tmp_path / "step_00000002.ckpt"
    newest.chmod(0o600)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuilt from 1 checkpoint"):
        assert checkpoint.read_index(tmp_path) == [{"file": "step_00000001.ckpt", "step": 1}]
    (tmp_path / "step_00000001.ckpt").chmod(0o600)
    (tmp_path / "step_00000001.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="index.json is unreadable .* none of the 2 step_"):
        checkpoint.latest(tmp_path)
    assert newest.is_file() and (tmp_path / "step_00000001.ckpt").is_file()  # nothing deleted


@pytest.mark.parametrize("where", ["parent", "absolute", "subdir", "other-name"])
def test_index_entries_outside_the_plain_checkpoint_names_are_never_deleted(tmp_path, where):
    """An index entry ``{"file": "../../victim.txt"}`` made pruning delete a file outside the run."""
    ckpt_dir = tmp_path / "run" / "checkpoints"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cell = _Small()
    checkpoint.save(cell, ckpt_dir, step=2, meta={"images_seen": 2})
    (ckpt_dir / "victim.txt").write_text("precious")
    target = {"parent": "../../victim.txt", "absolute": str(victim), "subdir": "sub/step_00000001.ckpt",
              "other-name": "victim.txt"}[where]  # fmt: skip
    index = [{"file": target, "step": 1}, {"file": "step_00000002.ckpt", "step": 2}]
    (ckpt_dir / "index.json").write_text(json.dumps(index))
    with pytest.warns(UserWarning, match="damaged"):
        for step in (3, 4):
            checkpoint.save(cell, ckpt_dir, step=step, meta={"images_seen": step}, keep_last=1)
    assert victim.read_text() == "precious" and (ckpt_dir / "victim.txt").read_text() == "precious"
    assert [e["step"] for e in checkpoint.read_index(ckpt_dir)] == [4]


def test_disk_full_save_removes_every_temporary_and_says_one_line(small_tmpfs, capfd):
    cell = _Small(2048)  # 16 MB of weights: the first save fits in 20 MB, the second runs out of space half-way
    checkpoint.save(cell, small_tmpfs, step=1, meta={"images_seen": 1})
    capfd.readouterr()
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device") as info:
        checkpoint.save(cell, small_tmpfs, step=2, meta={"images_seen": 2})
    assert "step_00000002.ckpt" in str(info.value) and len(str(info.value).splitlines()) == 1
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["index.json", "step_00000001.ckpt"]  # no .tmp left
    out, err = capfd.readouterr()
    assert "CRITICAL" not in out + err and "Traceback" not in out + err
    assert [e["step"] for e in checkpoint.read_index(small_tmpfs)] == [1]


def test_index_write_failing_after_the_rename_deletes_nothing_the_index_still_lists(tmp_path, monkeypatch):
    """Pruning used to delete old files before the new index was written: a failed index write (disk full) then left
    an index listing only deleted files, and resume=auto started over."""
    cell = _Small()
    checkpoint.save(cell, tmp_path, step=1, meta={"images_seen": 1}, keep_last=1)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_json_atomic", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left"):
        checkpoint.save(cell, tmp_path, step=2, meta={"images_seen": 2}, keep_last=1)
    monkeypatch.undo()
    found = checkpoint.latest(tmp_path)
    assert found.path.name == "step_00000001.ckpt" and found.meta["step"] == 1


def test_a_killed_save_leaves_temporaries_the_next_save_removes(tmp_path):
    cell = _Small()
    checkpoint.save(cell, tmp_path, step=1, meta={"images_seen": 1})
    leftovers = [".step_00000002.partial.ckpt", ".step_00000002.partial.tmp", ".index.json.partial-4242"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half")
    checkpoint.save(cell, tmp_path, step=3, meta={"images_seen": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step_00000001.ckpt", "step_00000003.ckpt"]


_SAVER = """
import sys
from pathlib import Path
import mindspore as ms
from mindspore import nn
from ddpm_dist import checkpoint
cell = nn.Dense(1024, 2048)  # 8 MB of weights: a save takes long enough to be killed half-way
for step in range(1, 100000):
    checkpoint.save(cell, Path(sys.argv[1]), step=step, meta={"images_seen": step}, keep_last=2)
"""


@pytest.mark.slow
def test_kill_during_save_never_leaves_a_checkpoint_latest_would_pick(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_SAVER)
    for _ in range(4):  # killed while a save is in flight (its partial file exists), not whenever a timer ends
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt")], env=env())
        deadline = time.time() + 120
        while not ((tmp_path / "ckpt" / "index.json").exists() and list((tmp_path / "ckpt").glob(".step_*.partial*"))):
            assert proc.poll() is None and time.time() < deadline, "the saver never reached a second save"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = checkpoint.latest(tmp_path / "ckpt")
        assert found is not None
        assert found.meta["step"] == max(e["step"] for e in checkpoint.read_index(tmp_path / "ckpt"))
        assert found.arrays["weight"].shape == (2048, 1024)


# ---------------------------------------------------------------- resume
@pytest.mark.slow
def test_exact_resume_after_sigkill_single_process(digits8, tmp_path):
    common = ["--config", TINY, f"data.path={digits8}", "model.dropout=0", "train.total_steps=120",
              "train.ckpt_every=60", "run.log_every=20"]  # fmt: skip
    straight = run_train(*common, f"run.out_dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr

    cmd = [sys.executable, "-m", "ddpm_dist.train", *common, f"run.out_dir={tmp_path / 'b'}"]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(tmp_path / "b", 60, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [e["step"] for e in checkpoint.read_index(tmp_path / "b" / "checkpoints")] == [60]
    resumed = run_train(*common, f"run.out_dir={tmp_path / 'b'}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout and "at step 60" in resumed.stdout

    _assert_same_state(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    a, b = _events(tmp_path / "a"), _events(tmp_path / "b", newest_only=True)
    for tag in ["train/loss", "train/grad_norm", "train/loss_scale", "loss_by_t/q1"]:
        after = {s: v for s, v in a[tag].items() if s > 60}
        assert after and after == b[tag], tag


@pytest.mark.slow
def test_resume_refuses_another_model_and_warns_on_another_world_size(digits8, tmp_path):
    run = tmp_path / "run"
    first = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", "train.total_steps=4")
    assert first.returncode == 0, first.stderr
    other = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", "model.ch=32",
                      "model.num_res_blocks=2")  # fmt: skip
    assert other.returncode == 2
    line = other.stderr.strip().splitlines()[-1]
    assert "model.ch" in line and "model.num_res_blocks" in line and "Traceback" not in other.stderr


# ---------------------------------------------------------------- faults
@pytest.mark.slow
@pytest.mark.parametrize("sig, named", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT (Ctrl-C)")])
def test_a_stop_signal_saves_and_exits_zero_then_resume_continues(digits8, tmp_path, sig, named):
    """SIGTERM (pre-emption) and SIGINT (Ctrl-C) both save and exit 0. MindSpore re-raises a SIGINT that lands in a
    step as SIGTERM, so a SIGINT stop is named "SIGTERM or SIGINT (Ctrl-C)" or "SIGINT (Ctrl-C)": either way it
    names SIGINT (it used to say only "stopped by SIGTERM")."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={digits8}", f"run.out_dir={run}",
           "train.total_steps=100000", "train.ckpt_every=0", "run.log_every=10"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 20/"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = [ln for ln in out.splitlines() if ln.startswith("stopped by ") and " at step " in ln]
    assert stopped and named in stopped[0], out
    step = int(stopped[0].split("at step ")[1].split(":")[0])
    assert (run / "checkpoints" / f"step_{step:08d}.ckpt").is_file()
    again = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", f"train.total_steps={step + 4}")
    assert again.returncode == 0 and f"at step {step}" in again.stdout and f"done: step {step + 4}" in again.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_the_launcher_stops_all_workers_at_one_step(digits8, tmp_path):
    sig = signal.SIGTERM
    run = tmp_path / "run"
    e = env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "logs")}
    proc = subprocess.Popen(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, f"data.path={digits8}", f"run.out_dir={run}",
         "train.total_steps=100000", "train.ckpt_every=0", "run.log_every=10"],
        env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    while "step 20/" not in _read(tmp_path / "logs" / "worker_0.log"):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err + worker_logs(tmp_path / "logs")
    assert f"stopped by {sig.name}" in out
    log0 = _read(tmp_path / "logs" / "worker_0.log")
    step = int(log0.split(f"stopped by {sig.name}")[1].split(" at step ")[1].split(":")[0])
    assert step % 10 == 0  # both workers agreed on a stop step at a sync point (msrun's 0 means both exited 0)
    assert [e["step"] for e in checkpoint.read_index(run / "checkpoints")] == [step]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


@pytest.mark.slow
def test_too_many_nonfinite_losses_stop_with_a_clear_error(digits8, tmp_path):
    res = subprocess.run(
        [sys.executable, INJECT, "5+", "--config", TINY, f"data.path={digits8}", f"run.out_dir={tmp_path / 'run'}",
         "train.total_steps=200", "train.ckpt_every=3", "train.keep_last=10", "train.max_nonfinite=8",
         "run.log_every=4"],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "8 consecutive non-finite losses up to step 12" in line and "step_00000003.ckpt" in line


def test_unwritable_run_dir_is_a_clear_error(digits8, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    res = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={blocker / 'run'}")
    assert res.returncode == 2 and "run.out_dir: cannot write" in res.stderr and "Traceback" not in res.stderr
