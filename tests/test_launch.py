"""launch/run_8p.sh: the pre-flight checks (ddpm_dist/launch_check.py, one line each, before msrun starts) and a
one-card run through msrun (DEVICE_NUM=1), where msrun's scheduler process must not train by itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from train_helpers import ROOT, TINY, env, free_port, prepare_digits

RUN_8P = str(ROOT / "launch" / "run_8p.sh")


def _run_8p(tmp_path: Path, *args: str, timeout: int = 120, **variables) -> subprocess.CompletedProcess:
    variables.setdefault("LOG_DIR", str(tmp_path / "logs"))
    return subprocess.run(
        ["bash", RUN_8P, *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
        env=env() | {k: str(v) for k, v in variables.items()},
    )  # fmt: skip


@pytest.mark.parametrize(
    "variables,needle",
    [
        ({"DEVICE_NUM": "0"}, "DEVICE_NUM=0: must be in [1,"),
        ({"DEVICE_NUM": "abc"}, "DEVICE_NUM='abc': must be an integer"),
        ({"NNODES": "-1"}, "NNODES=-1: must be in [1,"),
        ({"NNODES": "2", "NODE_RANK": "2", "DEVICE_NUM": "1"}, "NODE_RANK=2: must be in [0, 1]"),
        ({"MASTER_PORT": "99999"}, "MASTER_PORT=99999: must be in [1, 65535]"),
        ({"CLUSTER_TIMEOUT": "x"}, "CLUSTER_TIMEOUT='x'"),
        ({"BIND_CORE": "yes"}, "BIND_CORE must be True or False (got 'yes')"),
        ({"DEVICE_NUM": "3"}, "train.global_batch=8 is not divisible by the 3 workers"),
        ({"DEVICE_NUM": "1", "NNODES": "2", "MASTER_ADDR": "127.0.0.1"}, "MASTER_ADDR=127.0.0.1 is a loopback address"),
        ({"DEVICE_NUM": "1", "NNODES": "2", "MASTER_ADDR": "localhost"}, "is a loopback address, but NNODES=2"),
    ],
)
def test_bad_launcher_settings_are_one_line_before_msrun(tmp_path, variables, needle):
    res = _run_8p(tmp_path, TINY, "data.path=unused", **variables)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
    assert lines[0].startswith("error: ") and not (tmp_path / "logs").exists()  # msrun never started


def test_bad_config_override_is_one_line_before_msrun(tmp_path):
    res = _run_8p(tmp_path, TINY, "model.ch=abc", DEVICE_NUM=2)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "model.ch" in lines[0], res.stderr


def test_launch_check_accepts_good_settings():
    from ddpm_dist.launch_check import main

    common = ["--nnodes", "1", "--node-rank", "0", "--master-addr", "127.0.0.1", "--cluster-timeout", "5"]
    assert main(["--device-num", "4", "--master-port", str(free_port()), *common, "--config", TINY]) == 0
    assert main(["--device-num", "8", "--master-port", str(free_port()), *common]) == 0  # ENTRY scripts: no config


@pytest.mark.slow
@pytest.mark.distributed
def test_one_card_through_msrun_trains_once_and_exits_zero(tmp_path):
    """DEVICE_NUM=1: msrun starts a scheduler (MS_ROLE=MS_SCHED, MS_WORKER_NUM=1) and one worker; before the fix the
    scheduler trained the whole run alone and the worker waited for a cluster that never formed."""
    data = prepare_digits(tmp_path / "digits8")
    run = tmp_path / "run"
    res = _run_8p(
        tmp_path, TINY, f"data.path={data}", f"run.out_dir={run}", "train.total_steps=3",
        timeout=600, DEVICE_NUM=1, MASTER_PORT=free_port(), CLUSTER_TIMEOUT=120,
    )  # fmt: skip
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((tmp_path / "logs").glob("*.log")))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    assert res.stdout.count("done: step 3") == 1, res.stdout  # rank 0's outcome, once (not also the repeat)
    assert "Traceback" not in res.stderr + logs
    worker = (tmp_path / "logs" / "worker_0.log").read_text(errors="replace")
    assert "training ddpm_unet on CPU x 1 worker(s)" in worker and "steps 0->3" in worker
    scheduler = (tmp_path / "logs" / "scheduler.log").read_text(errors="replace")
    assert "training ddpm_unet" not in scheduler  # the scheduler only serves the cluster
    from ddpm_dist import checkpoint

    assert [e["step"] for e in checkpoint.read_index(run / "checkpoints")] == [3]


@pytest.mark.parametrize("role", ["MS_SCHED", "MS_WORKER"])
def test_every_process_msrun_starts_joins_its_cluster_even_with_one_worker(monkeypatch, role):
    from ddpm_dist import parallel

    for var in ("OMPI_COMM_WORLD_SIZE", "RANK_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MS_WORKER_NUM", "1")
    monkeypatch.setenv("MS_ROLE", role)
    assert parallel.launched_distributed()
    monkeypatch.delenv("MS_ROLE")
    assert not parallel.launched_distributed()  # a plain single process


FAKE_MSRUN = """#!/usr/bin/env bash
# stands in for msrun: its own noise and a worker's lines on both streams, a log file, a chosen exit status
for a in "$@"; do case $a in --log_dir=*) LOG=${a#--log_dir=};; esac; done
mkdir -p "$LOG" && echo "worker log line" > "$LOG/worker_0.log"
echo "[WARNING] ME(123:456,MainProcess):2026-11-27-05:37:05.319.000 [_api.py:275] Distributed job is spawned."
echo "Start worker process with rank id:0, log file:$LOG/worker_0.log. Execute command: python train.py"
echo "training ddpm_unet on CPU x 1 worker(s)"
echo "[INFO] DISTRIBUTED(26700,7fd9,python):2026-11-27 [tcp_server.cc:314] Start] Event base dispatch success!" >&2
echo "[WARNING] something of ours: not msrun's" >&2
echo "error: a worker's own error line" >&2
exit ${FAKE_STATUS:-0}
"""


@pytest.mark.parametrize("status", [0, 3])
def test_msrun_console_noise_is_filtered_but_logged_and_the_exit_status_kept(tmp_path, status):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "msrun").write_text(FAKE_MSRUN)
    (bin_dir / "msrun").chmod(0o755)
    path = f"{bin_dir}:{env()['PATH']}"
    res = _run_8p(
        tmp_path, TINY, "data.path=unused", DEVICE_NUM=1, PATH=path, FAKE_STATUS=status, MASTER_PORT=free_port()
    )
    assert res.returncode == status, res.stderr
    console = res.stdout + res.stderr
    assert "ME(" not in console and "DISTRIBUTED(" not in console and "Start worker" not in console, console
    assert "training ddpm_unet on CPU" in res.stdout and "error: a worker's own error line" in res.stderr
    assert "[WARNING] something of ours" in res.stderr  # only msrun's own lines are dropped
    log = (tmp_path / "logs" / "msrun.log").read_text()
    assert "[WARNING] ME(123:456" in log and "[INFO] DISTRIBUTED(26700" in log and "training ddpm_unet" in log
    assert "Start worker process with rank id:0" in log
    assert (tmp_path / "logs" / "worker_0.log").read_text() == "worker log line\n"
