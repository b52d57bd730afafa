"""Automatic restart (MAX_RESTARTS, ddpm_dist/restarts.py + the supervisor's loop) and the hang watchdog wired into
the trainer (run.step_timeout), with real msrun workers.

The fast tests check the restart policy alone. The slow ones share one uninterrupted 2-worker reference run
(dropout 0): a launch whose workers are SIGKILLed twice at random moments, and one whose rank 1 stalls alive in its
data read, each end rc 0 with the reference's weights, Adam state, EMA and loss scale bitwise; an input error and a
SIGTERM are not retried; a fault at the same step every time ends as a crash loop with its one line.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_launch_faults import MARK, Launch, _job_status, _no_leftovers, _pids_with, _steps, digits8  # noqa: F401
from train_helpers import ROOT, TINY, final_state, scalars, worker_logs

from ddpm_dist.restarts import Failure, RestartPolicy, read_records

FAULT_WORKER = str(ROOT / "tests" / "workers" / "fault_at_step.py")
TOTAL = 60
COMMON = ["model.dropout=0", f"train.total_steps={TOTAL}", "train.ckpt_every=10", "train.keep_last=10",
          "run.log_every=5"]  # fmt: skip


# ---------------------------------------------------------------- the policy alone
def _fault(step, cause="worker_killed", code=137, rank=1):
    return Failure(code, cause, rank, "SIGKILL" if code == 137 else None, "error: x", step, None)


def test_policy_restarts_faults_up_to_the_limit_and_records_each(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "index.json").write_text(
        json.dumps([{"file": "a", "step": 10}, {"file": "b", "step": 20}])
    )
    policy = RestartPolicy(2, run_dir=tmp_path, log_dir=tmp_path / "logs")
    again, line = policy.decide(_fault(23), stop_requested=False)
    assert again and line.startswith("restart 1 of 2: worker_killed of rank 1 (SIGKILL), exit 137")
    assert "step reached 23, resuming from step 20" in line
    assert policy.decide(_fault(31, "hang", 124), stop_requested=False)[0]
    again, line = policy.decide(_fault(45), stop_requested=False)
    assert not again and line == "error: giving up after 2 restart(s) (MAX_RESTARTS=2)"
    recs = read_records(tmp_path)
    assert [(r["restart"], r["cause"], r["step_reached"], r["resumed_from"]) for r in recs] == [
        (1, "worker_killed", 23, 20),
        (2, "hang", 31, 20),
    ]


@pytest.mark.parametrize(
    "failure, stop",
    [
        (Failure(2, "input_error"), False),
        (Failure(2, "nonfinite_loss"), False),
        (Failure(0, "done"), False),
        (Failure(0, "stop_request"), False),
        (Failure(137, "worker_killed", 1, "SIGKILL"), True),  # killed while a stop request was being handled
    ],
)
def test_policy_never_retries_input_errors_the_nonfinite_stop_or_a_stop_request(tmp_path, failure, stop):
    policy = RestartPolicy(3, run_dir=tmp_path, log_dir=tmp_path)
    assert policy.decide(failure, stop_requested=stop) == (False, "")
    assert read_records(tmp_path) == []


def test_policy_same_cause_at_the_same_step_twice_is_a_crash_loop(tmp_path):
    policy = RestartPolicy(5, run_dir=tmp_path, log_dir=tmp_path)
    assert policy.decide(_fault(25), stop_requested=False)[0]
    assert policy.decide(_fault(30), stop_requested=False)[0]  # progress: not a loop
    again, line = policy.decide(_fault(30), stop_requested=False)
    assert not again and line.startswith("error: crash loop: worker_killed of rank 1 (SIGKILL), exit 137 at step 30")
    assert len(read_records(tmp_path)) == 2
    assert RestartPolicy(0, run_dir=tmp_path, log_dir=tmp_path).decide(_fault(1), stop_requested=False) == (False, "")


def test_a_workers_record_carries_the_cause_it_failed_with(tmp_path, monkeypatch):
    """The non-finite-loss stop exits 2 like an input error; its record names it, so the job's cause does too."""
    from ddpm_dist import job_status
    from ddpm_dist.cli_util import fail, reports_exit

    monkeypatch.setenv("DDPM_STATUS_DIR", str(tmp_path))
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("RANK_ID", "1")
    assert reports_exit(lambda: fail("3 consecutive non-finite losses", cause="nonfinite_loss"))() == 2
    (record,) = job_status.read_all(tmp_path).values()
    assert (record["code"], record["cause"]) == (2, "nonfinite_loss")
    assert reports_exit(lambda: fail("data set not found"))() == 2
    (record,) = job_status.read_all(tmp_path).values()
    assert "cause" not in record


def test_mpirun_ranks_write_records_and_msruns_scheduler_does_not(tmp_path, monkeypatch):
    """Under mpirun (no MS_ROLE) every rank records under its OMPI_COMM_WORLD_RANK; under msrun only MS_WORKER."""
    from ddpm_dist import job_status

    monkeypatch.setenv("DDPM_STATUS_DIR", str(tmp_path))
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.delenv("RANK_ID", raising=False)
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK", raising=False)
    job_status.write("training", step=3)  # neither launcher's process: nothing
    assert job_status.read_all(tmp_path) == {}
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    job_status.write("training", step=3)
    assert (tmp_path / "rank_3.json").is_file() and job_status.read_all(tmp_path)[os.getpid()]["rank"] == 3
    monkeypatch.setenv("MS_ROLE", "MS_SCHED")  # msrun's scheduler runs the same script
    assert not job_status.active()


# ---------------------------------------------------------------- real msrun, 2 workers
@pytest.fixture(scope="module")
def reference(digits8, tmp_path_factory):  # noqa: F811
    """One uninterrupted 2-worker run: the final state every interrupted launch must reach bitwise."""
    work = tmp_path_factory.mktemp("reference")
    launch = Launch(work, TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={work / 'run'}")
    out, err = launch.finish()
    assert launch.proc.returncode == 0, out + err + worker_logs(launch.log_dir)
    return final_state(work / "run")


def _assert_bitwise(reference: dict, run: Path) -> None:
    got = final_state(run)
    assert set(got) == set(reference)
    assert any(k.startswith("ema.") for k in got) and any("moment" in k or "adam" in k.lower() for k in got), list(got)
    for name in reference:
        np.testing.assert_array_equal(reference[name], got[name], err_msg=name)


def _workers(token: str) -> dict[int, int]:
    """rank -> pid of the launch's live msrun workers."""
    out = {}
    for pid in _pids_with(token):
        try:
            env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if env.get(b"MS_ROLE") == b"MS_WORKER" and env.get(b"RANK_ID", b"").isdigit():
            out[int(env[b"RANK_ID"])] = pid
    return out


def _newest(run: Path) -> int:
    steps = _steps(run) if (run / "checkpoints" / "index.json").is_file() else []
    return steps[-1] if steps else 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_random_sigkills_restart_and_end_bitwise_equal(reference, digits8, tmp_path):  # noqa: F811
    rng = random.Random()
    run = tmp_path / "run"
    launch = Launch(tmp_path / "w", TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={run}", MAX_RESTARTS=3)
    killed, after = [], 0
    for _ in range(2):
        deadline = time.time() + 600
        target = rng.choice([10, 20]) + after  # a random moment once the run has progressed past the last kill
        while _newest(run) < target:
            assert launch.proc.poll() is None and time.time() < deadline, worker_logs(launch.log_dir)
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.0))
        workers = _workers(launch.token)
        rank = rng.choice(sorted(workers))
        os.kill(workers[rank], signal.SIGKILL)
        killed_at = time.time()
        killed.append(rank)
        after = _newest(run)
        while not (tmp_path / "w" / "logs" / "status").is_dir() or _workers(launch.token).get(rank) == workers[rank]:
            time.sleep(0.1)
        # wait for the relaunch: the record of this restart
        while len(read_records(run)) < len(killed):
            assert launch.proc.poll() is None and time.time() < deadline, worker_logs(launch.log_dir)
            time.sleep(0.1)
        relaunched = read_records(run)[-1]["time"] - killed_at
        resumed = f"at step {read_records(run)[-1]['resumed_from']}\n"
        while resumed not in launch.log(0) or "first step (graph compile)" not in launch.log(0):  # the new log
            assert launch.proc.poll() is None and time.time() < deadline, worker_logs(launch.log_dir)
            time.sleep(0.1)
        print(
            f"kill of rank {rank}: relaunched after {relaunched:.1f}s, first new step after "
            f"{time.time() - killed_at:.1f}s"
        )
    out, err = launch.finish()
    assert launch.proc.returncode == 0, out + err
    recs = read_records(run)
    assert [r["restart"] for r in recs] == [1, 2] and all(r["cause"] == "worker_killed" for r in recs), recs
    assert [r["rank"] for r in recs] == killed and all(r["signal"] == "SIGKILL" for r in recs)
    lines = [ln for ln in out.splitlines() if ln.startswith("restart ")]
    assert len(lines) == 2 and "restart 2 of 3: worker_killed" in lines[1], out
    for ln, r in zip(lines, recs, strict=True):
        assert f"resuming from step {r['resumed_from']}" in ln and r["resumed_from"] % 10 == 0
    assert f"done: step {TOTAL}" in out
    assert _job_status(launch.log_dir)["outcome"] == "done"
    _assert_bitwise(reference, run)
    # the count so far, logged by each restarted attempt (a SIGKILLed worker may lose its last 30 s of events)
    assert scalars(run)["run/restarts"][-1][1] == 2.0
    assert _no_leftovers(launch.token) == []


@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_stuck_alive_is_ended_by_the_watchdog_restarted_and_ends_bitwise(reference, digits8, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    once = tmp_path / "stalled"
    launch = Launch(tmp_path / "w", "--config", TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={run}",
                    "run.step_timeout=20", ENTRY=FAULT_WORKER, MAX_RESTARTS=3, DDPM_TEST_FAULT="stall:1:25",
                    DDPM_TEST_FAULT_ONCE=str(once))  # fmt: skip
    while not once.exists():
        assert launch.proc.poll() is None, worker_logs(launch.log_dir)
        time.sleep(0.1)
    stalled_at = time.time()
    while not read_records(run):
        assert launch.proc.poll() is None, worker_logs(launch.log_dir)
        time.sleep(0.1)
    detected = time.time() - stalled_at
    out, err = launch.finish()
    assert launch.proc.returncode == 0, out + err
    (rec,) = read_records(run)
    # rank 1 stalls in its data read; rank 0 waits for it in step 25's all-reduce, where its watchdog allows 1.5 x
    # the timeout: rank 1 reports first, naming where it is stuck
    assert rec["cause"] == "hang" and rec["exit_code"] == 124 and rec["resumed_from"] == 20, rec
    line = re.compile(r"error: rank (\d): no progress for \d+s after step 24 \(run.step_timeout=20\), stuck in (\w+)")
    m = line.match(rec["line"])
    assert m and int(m.group(1)) == rec["rank"] == 1, rec
    assert m.group(2) == "wrap", rec  # the test worker's stalling generator
    print("hang detected by rank", rec["rank"], "after", round(detected, 1), "s:", rec["line"])
    assert rec["step_reached"] >= 20
    assert 15 < detected < 120, detected  # the 20 s timeout, not the cluster timeout (300 s here) nor forever
    assert f"restart 1 of 3: hang of rank {rec['rank']}" in out and f"done: step {TOTAL}" in out
    _assert_bitwise(reference, run)
    assert _no_leftovers(launch.token) == []


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sigstopped_worker_ends_the_job_through_the_heartbeat_and_it_restarts_bitwise(reference, digits8, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    launch = Launch(tmp_path / "w", TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={run}", MAX_RESTARTS=3)
    deadline = time.time() + 600
    while _newest(run) < 20:
        assert launch.proc.poll() is None and time.time() < deadline, worker_logs(launch.log_dir)
        time.sleep(0.1)
    rank = random.choice([0, 1])
    os.kill(_workers(launch.token)[rank], signal.SIGSTOP)
    stopped_at = time.time()
    while not read_records(run):
        assert launch.proc.poll() is None and time.time() < deadline, worker_logs(launch.log_dir)
        time.sleep(0.1)
    detected = time.time() - stopped_at
    out, err = launch.finish()
    assert launch.proc.returncode == 0, out + err
    (rec,) = read_records(run)
    print(
        f"SIGSTOP of rank {rank}: restarted after {detected:.1f}s ({rec['cause']} of rank {rec['rank']}, "
        f"exit {rec['exit_code']}): {rec['line']}"
    )
    assert rec["exit_code"] not in (0, 2) and detected < 180, rec  # MindSpore's heartbeat (~35 s), not forever
    _assert_bitwise(reference, run)
    assert _no_leftovers(launch.token) == []


@pytest.mark.slow
@pytest.mark.distributed
def test_the_same_fault_at_the_same_step_is_a_crash_loop_with_one_line(digits8, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    launch = Launch(tmp_path / "w", "--config", TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={run}",
                    ENTRY=FAULT_WORKER, MAX_RESTARTS=3, DDPM_TEST_FAULT="kill:1:17")  # fmt: skip
    out, err = launch.finish()
    assert launch.proc.returncode == 137, out + err
    crash = [ln for ln in err.splitlines() if ln.startswith("error: crash loop:")]
    assert len(crash) == 1 and "worker_killed of rank 1 (SIGKILL), exit 137 at step 15 twice in a row" in crash[0]
    assert err.strip().splitlines()[-1] == crash[0]
    recs = read_records(run)
    assert len(recs) == 1 and recs[0]["step_reached"] == 15 and recs[0]["resumed_from"] == 10
    assert _no_leftovers(launch.token) == []


@pytest.mark.slow
@pytest.mark.distributed
def test_an_input_error_and_a_sigterm_are_not_retried(digits8, tmp_path):  # noqa: F811
    bad = Launch(tmp_path / "a", TINY, "data.path=/nonexistent", f"run.out_dir={tmp_path / 'r1'}", MAX_RESTARTS=3)
    out, err = bad.finish()
    assert bad.proc.returncode == 2 and err.strip().splitlines() == [
        "error: data set not found: /nonexistent (prepare one with tools/prepare_data.py)"
    ], out + err
    assert "restart" not in out + err and read_records(tmp_path / "r1") == read_records(tmp_path / "a" / "logs") == []

    run = tmp_path / "r2"
    stopped = Launch(tmp_path / "b", TINY, f"data.path={digits8}", *COMMON, f"run.out_dir={run}", MAX_RESTARTS=3)
    stopped.wait_for_log("step 10/")
    stopped.proc.send_signal(signal.SIGTERM)
    out, err = stopped.finish()
    assert stopped.proc.returncode == 0 and "restart" not in out + err, out + err
    assert _job_status(stopped.log_dir)["outcome"] == "stopped" and read_records(run) == []
    assert _no_leftovers(stopped.token) == []


# ---------------------------------------------------------------- run_mpi.sh (mpirun does not start on CPU)
def _run_mpi(tmp_path, attempts: list[tuple[int, str]], max_restarts: int):
    """run_mpi.sh with a stand-in ``mpirun`` on PATH: attempt i writes ``attempts[i][1]`` (a rank record, or nothing
    if empty) into the DDPM_STATUS_DIR it was given, then exits ``attempts[i][0]``. (result, calls, run dir)."""
    import subprocess

    from train_helpers import env

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "codes").write_text("\n".join(str(code) for code, _ in attempts) + "\n")
    for i, (_, record) in enumerate(attempts):
        (tmp_path / f"record_{i + 1}").write_text(record)
    (bin_dir / "mpirun").write_text(
        f'#!/bin/bash\nprintf "%s|%s\\n" "$DDPM_STATUS_DIR" "$*" >> {tmp_path}/calls\nn=$(wc -l < {tmp_path}/calls)\n'
        f'[ -s {tmp_path}/record_$n ] && cp {tmp_path}/record_$n "$DDPM_STATUS_DIR/rank_0.json"\n'
        f'exit $(sed -n "${{n}}p" {tmp_path}/codes)\n'
    )
    (bin_dir / "mpirun").chmod(0o755)
    run = tmp_path / "run"
    run.mkdir()
    e = env() | {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MAX_RESTARTS": str(max_restarts)}
    res = subprocess.run(["bash", str(ROOT / "launch" / "run_mpi.sh"), TINY, f"run.out_dir={run}"], env=e,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    calls = (tmp_path / "calls").read_text().splitlines()
    return res, calls, run


@pytest.mark.parametrize("codes, rc, calls", [([137, 1, 0], 0, 3), ([137, 2], 2, 2), ([143], 143, 1), ([1, 1], 1, 2)])
def test_run_mpi_restarts_mpirun_after_a_fault_only(tmp_path, codes, rc, calls):
    """Faults are retried up to MAX_RESTARTS=1 or 3, never 2 (input) or 143 (a stop); each attempt gets a fresh
    DDPM_STATUS_DIR, passed on to the ranks (-x)."""
    res, made, run = _run_mpi(tmp_path, [(c, "") for c in codes], 1 if codes == [1, 1] else 3)
    assert res.returncode == rc, res.stderr
    assert len(made) == calls
    dirs = [line.split("|")[0] for line in made]
    assert len(set(dirs)) == calls and all("-x DDPM_STATUS_DIR" in line for line in made), made
    restarts = [ln for ln in res.stdout.splitlines() if ln.startswith("restart ")]
    assert len(restarts) == (calls - 1 if codes != [1, 1] else 1), res.stdout + res.stderr
    assert len(read_records(run)) == len(restarts)
    if codes == [137, 1, 0]:
        assert restarts[0].startswith("restart 1 of 3: worker_killed (SIGKILL), exit 137; step reached unknown")
    if codes == [1, 1]:
        assert res.stderr.strip().splitlines()[-1] == "error: giving up after 1 restart(s) (MAX_RESTARTS=1)"


def _rank0(step: int, **exited) -> str:
    state = {"state": "exited", **exited} if exited else {"state": "training"}
    return json.dumps({"rank": 0, "pid": 4242, "time": 1.0, "step": step, **state}) + "\n"


def test_run_mpi_ends_a_crash_loop_with_one_line_and_records_its_restarts(tmp_path):
    """The same failure at the same step twice in a row ends the job although restarts are left; a failure that got
    further is restarted. The cause and line come from the rank's record."""
    boom = dict(code=1, line="error: RuntimeError: boom (a fault; the traceback is in this worker's log)")
    res, made, run = _run_mpi(tmp_path, [(1, _rank0(5, **boom)), (1, _rank0(9, **boom)), (1, _rank0(9, **boom))], 5)
    assert res.returncode == 1 and len(made) == 3, res.stdout + res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("restart ")]
    assert [ln.split(":")[0] for ln in lines] == ["restart 1 of 5", "restart 2 of 5"], res.stdout
    assert "worker_failed of rank 0, exit 1; step reached 5" in lines[0]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: crash loop: worker_failed of rank 0, exit 1 at step 9 twice in a row"), last
    records = read_records(run)
    assert [r["step_reached"] for r in records] == [5, 9] and records[0]["line"] == boom["line"]


def test_run_mpi_sigkilled_ranks_at_one_step_are_a_crash_loop_too(tmp_path):
    res, made, run = _run_mpi(tmp_path, [(137, _rank0(7)), (137, _rank0(7))], 3)
    assert res.returncode == 137 and len(made) == 2, res.stdout + res.stderr
    last = res.stderr.strip().splitlines()[-1]
    want = "error: crash loop: worker_killed (SIGKILL), exit 137 at step 7 twice in a row; not restarting again "
    assert last.startswith(want + "(restart 1 of 3 used)"), last
    assert len(read_records(run)) == 1


@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_a_bad_step_timeout_is_one_config_error(value):
    from ddpm_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"run.step_timeout: must be auto or a number of seconds >= 0, 0 disables"):
        load_config(TINY, [f"run.step_timeout={value}"])
    assert load_config(TINY, ["run.step_timeout=0"]).run.step_timeout == "0"


@pytest.mark.slow
@pytest.mark.distributed
def test_the_nonfinite_loss_stop_is_not_retried(digits8, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    launch = Launch(tmp_path / "w", "5+", "--config", TINY, f"data.path={digits8}", f"run.out_dir={run}",
                    "model.dropout=0", "train.total_steps=40", "train.max_nonfinite=3", "run.log_every=5",
                    ENTRY=str(ROOT / "tests" / "workers" / "inject_nonfinite.py"), MAX_RESTARTS=3)  # fmt: skip
    out, err = launch.finish()
    assert launch.proc.returncode == 2 and "consecutive non-finite losses" in err, out + err
    assert "restart" not in out + err
    status = _job_status(launch.log_dir)
    assert (status["outcome"], status["cause"]) == ("input_error", "nonfinite_loss"), status
    assert read_records(run) == read_records(launch.log_dir) == []
    assert _no_leftovers(launch.token) == []
