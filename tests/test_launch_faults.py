"""The launcher's contract through msrun (launch/run_8p.sh, ddpm_dist/supervisor.py, ddpm_dist/job_status.py): exit 0
done or stopped on request after saving, 2 bad input (the worker's one line, within seconds), anything else a fault;
Ctrl-C to the terminal's process group saves; nothing of a job survives it (msrun's ``tail -f`` helpers included).

The first tests drive the supervisor with a stand-in msrun (no MindSpore, a few seconds each) that behaves like the
real one where it matters: workers in sessions of their own, a ``tail -f`` helper, SIGKILL of its workers on SIGINT,
and a long wait (here 600 s) after a worker failed. The slow ones run the real msrun with 2 workers.
Every process a test starts carries a unique environment variable, so leftovers are found without a global pgrep of
other tests' processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from train_helpers import (
    ROOT,
    TINY,
    env,
    final_state,
    free_port,
    mounted_tmpfs,
    prepare_digits,
    run_train,
    worker_logs,
)

from ddpm_dist import checkpoint

RUN_8P = str(ROOT / "launch" / "run_8p.sh")
MARK = "DDPM_LAUNCH_FAULTS_JOB"


def _pids_with(token: str) -> list[int]:
    """Processes whose environment holds MARK=token (everything one launch started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"{MARK}={token}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def _no_leftovers(token: str, within: float = 15.0) -> list[int]:
    deadline = time.time() + within
    while (left := _pids_with(token)) and time.time() < deadline:
        time.sleep(0.2)
    for pid in left:  # do not leave them to the next test
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def _job_status(log_dir: Path) -> dict:
    return json.loads((log_dir / "job_status.json").read_text())


# ---------------------------------------------------------------- a stand-in msrun
FAKE_MSRUN = r"""
import os, signal, subprocess, sys, time
mode, log_dir = sys.argv[1], sys.argv[2]
print("[WARNING] ME(1:1,MainProcess):2026-12-02 [_api.py:1] Distributed job is spawned.", file=sys.stderr, flush=True)
workers, tails = [], []
for rank in range(2):
    log = os.path.join(log_dir, f"worker_{rank}.log")
    with open(log, "w") as f:
        e = dict(os.environ, MS_ROLE="MS_WORKER", RANK_ID=str(rank))
        workers.append(subprocess.Popen([sys.executable, sys.argv[3], mode], env=e, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    tails.append(subprocess.Popen(["tail", "-f", log]))

def on_sigint(*_):  # what msrun does on Ctrl-C: SIGKILL every worker, nothing saved
    for w in workers:
        os.killpg(w.pid, signal.SIGKILL)
    sys.exit(0)

signal.signal(signal.SIGINT, on_sigint)
while True:
    codes = [w.poll() for w in workers]
    bad = [(w.pid, c) for w, c in zip(workers, codes) if c not in (None, 0)]
    if bad:
        print(f"[ERROR] ME(1:1,MainProcess):2026 [_api.py:365] Worker process {bad[0][0]} exit with exception. "
              f"Error code: {bad[0][1]}.", file=sys.stderr, flush=True)
        time.sleep(600)  # msrun waits for its scheduler
    if all(c == 0 for c in codes):
        for t in tails:
            t.kill()
        sys.exit(0)
    time.sleep(0.2)
"""

FAKE_WORKER = r"""
import os, signal, sys, time
from ddpm_dist import job_status
from ddpm_dist.cli_util import fail, reports_exit

mode, rank = sys.argv[1], int(os.environ["RANK_ID"])
stop = []

@reports_exit
def main():
    if mode == "slow_start":
        time.sleep(120)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda s, f: stop.append(s))
    job_status.write("training")
    parent = os.getppid()
    print(f"training on rank {rank}", flush=True)
    time.sleep(0.5)
    if mode == "error" and rank == 1:
        return fail("data set not found: /nonexistent")
    if mode == "crash" and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "raise" and rank == 1:
        raise RuntimeError("boom\nsecond line")
    while not stop and os.getppid() == parent:
        time.sleep(0.05)
    why = signal.Signals(stop[0]).name if stop else "the launcher exiting"
    print(f"stopped by {why} at step 10: checkpoint saved", flush=True)
    return 0

sys.exit(main())
"""


def _supervise(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, str, Path]:
    """The supervisor over the stand-in msrun, in a process group of its own (as a terminal's foreground job)."""
    (tmp_path / "fake_msrun.py").write_text(FAKE_MSRUN)
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    log_dir, token = tmp_path / "logs", secrets.token_hex(6)
    log_dir.mkdir()
    fake = [sys.executable, str(tmp_path / "fake_msrun.py"), mode, str(log_dir), str(tmp_path / "fake_worker.py")]
    cmd = [sys.executable, "-m", "ddpm_dist.supervisor", "--log-dir", str(log_dir), "--local-workers", "2", "--", *fake]
    proc = subprocess.Popen(cmd, env=env() | {MARK: token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    return proc, token, log_dir


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc.poll() is None and time.time() < deadline, proc.communicate(timeout=10)
        time.sleep(0.05)


def _records(log_dir: Path) -> dict[int, dict]:
    from ddpm_dist import job_status

    return {r["rank"]: r for r in job_status.read_all(log_dir / "status").values()}


def _training(log_dir: Path) -> bool:
    recs = _records(log_dir)
    return len(recs) == 2 and all(r["state"] == "training" for r in recs.values())


@pytest.mark.parametrize(
    "mode, code, needle",
    [
        ("error", 2, "error: data set not found: /nonexistent"),
        ("crash", 137, "error: worker rank 1 (pid "),
        ("raise", 1, "error: RuntimeError: boom (a fault; the traceback is in this worker's log)"),
    ],
)
def test_a_failing_worker_ends_the_job_at_once_with_its_line_and_status(tmp_path, mode, code, needle):
    """The stand-in msrun waits 600 s after a worker failed, as msrun waits for its scheduler: the launcher must not."""
    proc, token, log_dir = _supervise(tmp_path, mode)
    out, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith(needle), (out, err)
    assert "error:" not in out and "Traceback" not in err  # the line once, on stderr
    if mode == "raise":  # the traceback was written to the log before the launcher ended the job
        assert "RuntimeError: boom" in (log_dir / "worker_1.log").read_text()
    else:
        assert "Traceback" not in out
    assert "ME(" not in out + err and "training on rank 0" in out  # msrun's noise filtered, the workers' lines shown
    status = _job_status(log_dir)
    assert status["exit_code"] == code and status["rank"] == 1 and status["line"] == lines[0]
    assert status["outcome"] == ("input_error" if code == 2 else "fault")
    assert status["signal"] == ("SIGKILL" if mode == "crash" else None)
    assert _no_leftovers(token) == []  # msrun (still in its 600 s wait), the other worker and the tail helpers


def test_sigint_to_the_process_group_is_forwarded_and_msrun_never_sees_it(tmp_path):
    """Ctrl-C: SIGINT to the foreground process group. msrun would SIGKILL the workers; in its own session it does
    not get it, and the workers get the stop, finish cleanly (exit 0) and so does the job."""
    proc, token, log_dir = _supervise(tmp_path, "stop")
    _wait_for(lambda: _training(log_dir), proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    assert "SIGINT (Ctrl-C) received" in err and "Traceback" not in out + err and "/proc/" not in err
    recs = _records(log_dir)
    assert {r: (rec["state"], rec["code"]) for r, rec in recs.items()} == {0: ("exited", 0), 1: ("exited", 0)}
    assert "stopped by SIGINT at step 10" in (log_dir / "worker_1.log").read_text()
    status = _job_status(log_dir)
    assert (status["exit_code"], status["outcome"], status["signal"]) == (0, "stopped", "SIGINT")
    assert _no_leftovers(token) == []


def test_sigkill_of_msrun_leaves_no_helper_and_the_workers_stop_cleanly(tmp_path):
    proc, token, log_dir = _supervise(tmp_path, "stop")
    _wait_for(lambda: _training(log_dir), proc)
    msrun = [
        p for p in _pids_with(token) if b"fake_msrun.py" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[1]
    ]
    assert len(msrun) == 1
    os.kill(msrun[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 137 and err.strip().splitlines() == [
        f"error: msrun (pid {msrun[0]}) was killed by SIGKILL; the workers saved and stopped: run the same command "
        "again to resume"
    ], err
    assert "stopped by the launcher exiting" in out  # rank 0's last line, though msrun's tail was gone
    assert {r: rec["code"] for r, rec in _records(log_dir).items()} == {0: 0, 1: 0}
    assert _job_status(log_dir)["cause"] == "msrun_killed"
    assert _no_leftovers(token) == []  # the tail -f helpers included


def test_a_stop_before_the_workers_train_ends_the_job_at_once_with_0(tmp_path):
    proc, token, log_dir = _supervise(tmp_path, "slow_start")  # workers would start training after 120 s
    _wait_for(lambda: len(list(log_dir.glob("worker_*.log"))) == 2, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped by SIGTERM before every worker was training" in out, (out, err)
    assert err == "" and _job_status(log_dir)["outcome"] == "stopped"
    assert _no_leftovers(token) == []


# ---------------------------------------------------------------- pre-flight checks (launch_check, before msrun)
def _run_8p(tmp_path: Path, *args: str, timeout: int = 120, **variables) -> subprocess.CompletedProcess:
    variables.setdefault("LOG_DIR", str(tmp_path / "logs"))
    return subprocess.run(["bash", RUN_8P, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          env=env() | {k: str(v) for k, v in variables.items()})  # fmt: skip


def test_grad_accum_over_the_per_worker_batch_is_refused_before_msrun(tmp_path):
    res = _run_8p(tmp_path, TINY, "data.path=unused", "train.grad_accum=8", DEVICE_NUM=2, MASTER_PORT=free_port())
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "train.grad_accum=8 does not divide the per-worker batch 4" in lines[0]
    assert not (tmp_path / "logs").exists()  # msrun never started


def test_one_node_master_addr_and_port_are_checked_before_msrun(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for variables, needle in [
            ({"MASTER_ADDR": "no.such.host.invalid"}, "MASTER_ADDR=no.such.host.invalid: "),
            ({"MASTER_ADDR": "192.0.2.77"}, "MASTER_ADDR=192.0.2.77 is not an address of this node"),
            ({"MASTER_PORT": busy}, f"MASTER_PORT={busy}: cannot listen on 127.0.0.1:{busy}"),
        ]:
            variables = {"MASTER_PORT": free_port(), **variables}
            t0 = time.time()
            res = _run_8p(tmp_path, TINY, "data.path=unused", DEVICE_NUM=2, **variables)
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], (variables, res.stderr)
            assert time.time() - t0 < 60 and not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- the real msrun, 2 workers
@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


class Launch:
    """``launch/run_8p.sh`` with 2 workers in ``work``; ``tty=True`` runs it as the foreground job of a new
    pseudo-terminal, where writing Ctrl-C (0x03) makes the terminal send SIGINT to its whole process group."""

    def __init__(self, work: Path, *args: str, tty: bool = False, logs: str = "logs", **variables):
        self.work, self.log_dir, self.token = work, work / logs, secrets.token_hex(6)
        work.mkdir(parents=True, exist_ok=True)
        e = env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "CLUSTER_TIMEOUT": "300"}
        e |= {"LOG_DIR": str(self.log_dir), MARK: self.token} | {k: str(v) for k, v in variables.items()}
        self.t0 = time.time()
        self.output = bytearray()
        if tty:
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(
                ["bash", RUN_8P, *args], cwd=work, env=e, stdin=slave, stdout=slave, stderr=slave,
                start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
            )  # fmt: skip
            os.close(slave)
            threading.Thread(target=self._drain, daemon=True).start()
        else:
            self.master = None
            self.proc = subprocess.Popen(["bash", RUN_8P, *args], cwd=work, env=e, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)  # fmt: skip

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def log(self, rank: int = 0) -> str:
        path = self.log_dir / f"worker_{rank}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_for_log(self, needle: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while needle not in self.log(0):
            assert self.proc.poll() is None and time.time() < deadline, (needle, worker_logs(self.log_dir))
            time.sleep(0.1)

    def finish(self, timeout: float = 600) -> tuple[str, str]:
        if self.master is None:
            out, err = self.proc.communicate(timeout=timeout)
        else:
            self.proc.wait(timeout=timeout)
            time.sleep(0.3)
            out, err = self.output.decode(errors="replace").replace("\r\n", "\n"), ""
        self.elapsed = time.time() - self.t0
        return out, err


def _steps(run: Path) -> list[int]:
    ckpts = run / "checkpoints"
    return [e["step"] for e in checkpoint.read_index(ckpts)] if (ckpts / "index.json").is_file() else []


def _stop_step(text: str) -> int:
    line = [ln for ln in text.splitlines() if ln.startswith("stopped by ") and " at step " in ln][-1]
    return int(line.split(" at step ")[1].split(":")[0])


def _intact(run: Path, steps: list[int]) -> None:
    for step in steps:  # each loads (its CRC checked) and holds its own step
        assert checkpoint.read(run / "checkpoints" / f"step_{step:08d}.ckpt").meta["step"] == step


TOTAL = 60
COMMON = ["model.dropout=0", f"train.total_steps={TOTAL}", "train.ckpt_every=10", "train.keep_last=10",
          "run.log_every=5"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_ctrl_c_in_a_terminal_saves_and_kill_9_of_msrun_too_then_the_run_ends_bitwise(digits8, tmp_path):
    """Ctrl-C in a pseudo-terminal (SIGINT to the launcher's whole process group): the workers save at one agreed
    step, exit 0, every earlier checkpoint intact. The same command again resumes; SIGKILL of its msrun: the workers
    save and stop, no msrun helper survives, the job exits 137. A third launch finishes, bitwise equal to one
    uninterrupted 2-worker run."""
    args = [TINY, f"data.path={digits8}", *COMMON]
    run = tmp_path / "run"
    first = Launch(tmp_path / "w1", *args, f"run.out_dir={run}", tty=True)
    first.wait_for_log("step 20/")
    os.write(first.master, b"\x03")
    out, _ = first.finish()
    assert first.proc.returncode == 0, out + worker_logs(first.log_dir)
    assert "SIGINT (Ctrl-C) received" in out and "Traceback" not in out and "/proc/" not in out, out
    stop1 = _stop_step(first.log(0))
    assert stop1 % 10 == 0 and 20 <= stop1 < TOTAL  # a sync point: both workers agreed on it (else no exit 0)
    assert {r: (w["state"], w["code"]) for r, w in _records(first.log_dir).items()} == {
        0: ("exited", 0),
        1: ("exited", 0),
    }
    assert f"at step {stop1}" in out  # the stop line reached the terminal
    assert _steps(run) == list(range(10, stop1 + 1, 10))
    _intact(run, _steps(run))
    assert _pids_with(first.token) == []

    second = Launch(tmp_path / "w2", *args, f"run.out_dir={run}")
    second.wait_for_log(f"step {stop1 + 5}/")
    assert f"at step {stop1}" in second.log(0)  # resumed
    msrun = [p for p in _pids_with(second.token) if _is_msrun(p)]
    assert len(msrun) == 1, msrun
    os.kill(msrun[0], signal.SIGKILL)
    out, err = second.finish(timeout=300)
    assert second.proc.returncode == 137 and err.strip().splitlines()[-1].startswith(f"error: msrun (pid {msrun[0]})")
    assert _no_leftovers(second.token) == []  # tail -f helpers, the scheduler, the workers
    stop2 = _stop_step(second.log(0))
    assert "stopped by the launcher exiting" in second.log(0) and stop2 > stop1
    assert _steps(run) == list(range(10, stop2 + 1, 10))
    _intact(run, _steps(run))
    assert _job_status(second.log_dir)["cause"] == "msrun_killed"

    third = Launch(tmp_path / "w3", *args, f"run.out_dir={run}")
    out, err = third.finish()
    assert third.proc.returncode == 0 and f"done: step {TOTAL}" in out, err + worker_logs(third.log_dir)
    straight = Launch(tmp_path / "w4", *args, f"run.out_dir={tmp_path / 'straight'}", "train.ckpt_every=0")
    straight.finish()
    assert straight.proc.returncode == 0, worker_logs(straight.log_dir)
    a, b = final_state(tmp_path / "straight"), final_state(run)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _is_msrun(pid: int) -> bool:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return any(a.endswith(b"/msrun") for a in args[:2])


def _one_line_exit(launch: Launch, code: int) -> str:
    out, err = launch.finish(timeout=600)
    lines = err.strip().splitlines()
    assert launch.proc.returncode == code and len(lines) == 1, out + err + worker_logs(launch.log_dir)
    assert "Traceback" not in out + err and "error:" not in out
    status = _job_status(launch.log_dir)
    assert status["exit_code"] == code and status["line"] == lines[0]
    # the launcher ended the job within seconds of the first worker's exit, not after msrun's long wait for its
    # scheduler (16-60 s before), whose report ("Distributed job exited with exception") never came
    exited = [w["time"] for w in _records(launch.log_dir).values() if w["state"] == "exited"]
    if exited:
        assert status["ended"] - min(exited) < 30, (status, exited)
    assert "Distributed job exited with exception" not in (launch.log_dir / "msrun.log").read_text()
    assert _no_leftovers(launch.token) == []
    return lines[0]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_workers_input_error_is_its_one_line_and_exit_2(digits8, tmp_path):
    line = _one_line_exit(Launch(tmp_path, TINY, "data.path=/nonexistent", f"run.out_dir={tmp_path / 'r'}"), 2)
    assert line == "error: data set not found: /nonexistent (prepare one with tools/prepare_data.py)"


@pytest.mark.slow
@pytest.mark.distributed
def test_rank_0_refusing_to_resume_ends_every_worker_with_its_line_and_exit_2(digits8, tmp_path):
    """Only rank 0 reads run.out_dir (the others receive its state): when it refuses the checkpoint, the other
    rank must not wait for the state forever - the job ends with rank 0's own line."""
    run = tmp_path / "r"
    first = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run}", "train.total_steps=1")
    assert first.returncode == 0, first.stderr
    line = _one_line_exit(Launch(tmp_path / "w", TINY, f"data.path={digits8}", f"run.out_dir={run}", "model.ch=8"), 2)
    assert "model.ch" in line and "rank 0 could not resume" not in line, line


@pytest.mark.slow
@pytest.mark.distributed
def test_sampling_from_a_garbage_checkpoint_is_one_line_and_exit_2(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    launch = Launch(tmp_path, "--ckpt", str(garbage), "--out", str(tmp_path / "s"), "--num-samples", "4",
                    ENTRY=str(ROOT / "tools" / "sample.py"))  # fmt: skip
    line = _one_line_exit(launch, 2)
    assert line.startswith("error: ") and str(garbage) in line and not (tmp_path / "s").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_disk_full_during_a_save_is_one_line_and_exit_2(digits8, tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "20m") as mnt:
        run = mnt / "run"  # 2.9 MB checkpoints, all kept: the 7th save finds the disk full
        launch = Launch(tmp_path / "w", TINY, f"data.path={digits8}", f"run.out_dir={run}", "train.total_steps=12",
                        "train.ckpt_every=1", "train.keep_last=12", "run.log_every=1")  # fmt: skip
        line = _one_line_exit(launch, 2)
        assert "No space left on device" in line and "step_0000000" in line
        steps = _steps(run)
        assert steps and steps == list(range(1, len(steps) + 1))
        _intact(run, steps)


DIE_AT_START = """import os, signal, sys
from ddpm_dist.train.cli import main
if os.environ.get("MS_ROLE") == "MS_WORKER" and os.environ.get("RANK_ID") == "1":
    os.kill(os.getpid(), signal.SIGKILL)  # before joining the cluster: rank 0 waits for it in init()
sys.exit(main())
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_a_worker_dying_during_start_up_or_a_stop_before_training_do_not_wait_for_cluster_timeout(digits8, tmp_path):
    script = tmp_path / "die_at_start.py"
    script.write_text(DIE_AT_START)
    args = ["--config", TINY, f"data.path={digits8}", f"run.out_dir={tmp_path / 'r'}"]
    dying = Launch(tmp_path / "a", *args, ENTRY=str(script), CLUSTER_TIMEOUT=300)
    line = _one_line_exit(dying, 137)
    assert line.startswith("error: worker rank 1 (pid ") and "was killed by SIGKILL" in line
    assert dying.elapsed < 120 and _job_status(dying.log_dir)["cause"] == "worker_killed"  # not CLUSTER_TIMEOUT

    # SIGTERM while msrun starts its workers (the supervisor has made msrun.log): ended at once, exit 0
    stopped = Launch(tmp_path / "b", TINY, *args[2:], CLUSTER_TIMEOUT=300)
    deadline = time.time() + 60
    while not (stopped.log_dir / "msrun.log").exists() and time.time() < deadline:
        time.sleep(0.05)
    stopped.proc.send_signal(signal.SIGTERM)
    out, err = stopped.finish(timeout=120)
    assert stopped.proc.returncode == 0 and "stopped by SIGTERM before every worker was training" in out, out + err
    assert err == "" and stopped.elapsed < 60 and _no_leftovers(stopped.token) == []
    # SIGTERM 0.3 s in, while the launcher's own checks run (before msrun): the same contract, exit 0
    early = Launch(tmp_path / "c", TINY, *args[2:], CLUSTER_TIMEOUT=300)
    time.sleep(0.3)
    early.proc.send_signal(signal.SIGTERM)
    out, err = early.finish(timeout=60)
    assert early.proc.returncode == 0 and "stopped by SIGTERM before msrun started: nothing to save" in out, out + err
    assert not (early.log_dir / "msrun.log").exists()
    assert not (tmp_path / "r" / "checkpoints").exists()  # nothing trained, nothing written
