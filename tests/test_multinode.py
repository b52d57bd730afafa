"""Multi-node data parallelism, for real on one machine: node 0 in the root network namespace, node 1 in its own
namespace (tests/netns.py), each running the unchanged ``launch/run_8p.sh`` in its own working directory with the
same command line; only NODE_RANK differs. Covers: 2 nodes x 1 worker train like 1 node x 2 workers; only global
rank 0 writes checkpoints and a 1-node run resumes from them; a worker killed on node 1 ends the job on both nodes
and, with MAX_RESTARTS, both restart and finish like one node (rank 1 has no run directory: rank 0 sends it the
state); a wrong MASTER_ADDR fails with a clear line within CLUSTER_TIMEOUT.

Timings on 2 CPU cores: the whole file ~4 min (each msrun start-up + graph compile ~20 s).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from netns import NamespaceError, SecondNode, second_node, skip_reason
from train_helpers import ROOT, TINY, env, free_port, prepare_digits

RUN_8P = str(ROOT / "launch" / "run_8p.sh")
FAULT_AT_STEP = str(ROOT / "tests" / "workers" / "fault_at_step.py")
MARKER = "DDPM_MULTINODE_TEST_JOB"  # env var carried by every process a test starts (msrun's workers included)


# ---------------------------------------------------------------- running one "node"
@dataclass
class Job:
    """One node's ``bash launch/run_8p.sh ...``, its console in ``cwd/<name>.out`` and its msrun logs."""

    name: str
    cwd: Path
    proc: subprocess.Popen
    out: Path
    log_dir: Path
    started: float
    ended: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def console(self) -> str:
        return self.out.read_text(errors="replace")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))

    def report(self) -> str:
        return f"--- {self.name}: rc {self.proc.returncode}, {self.elapsed:.0f}s\n{self.console()[-4000:]}"


@dataclass
class Cluster:
    """Starts nodes (optionally inside node 1's namespace) and kills whatever of them is left at the end."""

    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    jobs: list[Job] = field(default_factory=list)

    def start(self, name: str, cwd: Path, args: list[str], *, netns: SecondNode | None = None, **env_vars) -> Job:
        cwd.mkdir(parents=True, exist_ok=True)
        cmd = ["bash", RUN_8P, *args]
        if netns is not None:
            cmd = netns.wrap(cmd)
        environment = env() | {k: str(v) for k, v in env_vars.items()} | {MARKER: self.tag}
        environment.setdefault("LOG_DIR", "logs")
        out = cwd / f"{name}.out"
        with open(out, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=cwd, env=environment, stdout=f, stderr=subprocess.STDOUT)
        job = Job(name, cwd, proc, out, cwd / environment["LOG_DIR"], time.monotonic())
        self.jobs.append(job)
        return job

    def wait(self, *jobs: Job, timeout: float) -> None:
        """Wait for all ``jobs`` (recording when each ended); on time-out kill everything and fail with the consoles."""
        deadline = time.monotonic() + timeout
        while any(j.ended is None for j in jobs):
            for j in jobs:
                if j.ended is None and j.proc.poll() is not None:
                    j.ended = time.monotonic()
            if time.monotonic() > deadline:
                self.kill_all()
                pytest.fail(f"jobs still running after {timeout:.0f}s\n" + "\n".join(j.report() for j in jobs))
            time.sleep(0.2)

    def leftovers(self) -> list[int]:
        """PIDs of processes started by this cluster that are still alive (msrun's setsid workers included)."""
        import psutil

        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get(MARKER) == self.tag:
                    found.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return found

    def kill_all(self) -> None:
        for _ in range(3):
            pids = self.leftovers()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)


@pytest.fixture(scope="module")
def node1():
    """Node 1's network namespace for the module; skipped, with the reason, where one cannot be made."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        with second_node() as node:
            yield node
    except NamespaceError as err:
        pytest.skip(f"cannot create a network namespace here: {err}")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    yield c
    c.kill_all()


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


def _train_args(digits8: Path, *extra: str) -> list[str]:
    # Relative run dir: each node writes under its own working directory, as on machines with local disks.
    return [TINY, f"data.path={digits8}", "model.dropout=0", "run.out_dir=run", *extra]


def _ckpt(path: Path) -> dict:
    from ddpm_dist import checkpoint

    stored = checkpoint.read(path)
    return {**stored.arrays, **{f"meta.{k}": v for k, v in stored.meta.items()}}


def _assert_same_params(a: dict, b: dict) -> None:
    weights = [k for k in a if not k.startswith("meta.")]
    assert set(weights) == {k for k in b if not k.startswith("meta.")}
    assert len([k for k in weights if not k.startswith(("ema.", "moment"))]) > 20
    for k in weights:
        np.testing.assert_allclose(a[k], b[k], atol=2e-5, rtol=1e-4, err_msg=k)


# ---------------------------------------------------------------- the runs shared by the first two tests
@pytest.fixture(scope="module")
def one_node_two_workers(digits8, cluster, tmp_path_factory):
    """Reference: 1 node x 2 workers, 6 steps, checkpoints at 2, 4, 6."""
    cwd = tmp_path_factory.mktemp("one_node")
    job = cluster.start(
        "node0", cwd, _train_args(digits8, "train.total_steps=6", "train.ckpt_every=2"),
        DEVICE_NUM=2, NNODES=1, MASTER_PORT=free_port(), CLUSTER_TIMEOUT=120,
    )  # fmt: skip
    cluster.wait(job, timeout=300)
    assert job.proc.returncode == 0, job.report() + job.logs()
    return cwd / "run" / "checkpoints"


@pytest.fixture(scope="module")
def two_nodes(node1, digits8, cluster, tmp_path_factory):
    """2 nodes x 1 worker, 4 steps, checkpoints at 2 and 4: the same command on both nodes but NODE_RANK."""
    base = tmp_path_factory.mktemp("two_nodes")
    args = _train_args(digits8, "train.total_steps=4", "train.ckpt_every=2")
    common = dict(DEVICE_NUM=1, NNODES=2, MASTER_ADDR=node1.host_ip, MASTER_PORT=free_port(), CLUSTER_TIMEOUT=120)
    n1 = cluster.start("node1", base / "node1", args, netns=node1, NODE_RANK=1, **common)
    n0 = cluster.start("node0", base / "node0", args, NODE_RANK=0, **common)
    cluster.wait(n0, n1, timeout=300)
    print(f"\n2 nodes x 1 worker, 4 steps: node 0 {n0.elapsed:.0f}s, node 1 {n1.elapsed:.0f}s")
    for j in (n0, n1):
        assert j.proc.returncode == 0, "\n".join(x.report() + x.logs() for x in (n0, n1))
    return n0, n1


# ---------------------------------------------------------------- 1. same parameters as one node
@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_train_like_one_node_with_two_workers(two_nodes, one_node_two_workers):
    n0, n1 = two_nodes
    # Each node ran its own msrun: the scheduler and rank 0 on node 0, rank 1 inside node 1's namespace (msrun.log:
    # each launcher's whole console stream, which the console shows without msrun's own noise).
    assert sorted(p.name for p in n0.log_dir.glob("*.log")) == ["msrun.log", "scheduler.log", "worker_0.log"]
    assert sorted(p.name for p in n1.log_dir.glob("*.log")) == ["msrun.log", "worker_1.log"]
    assert "x 2 worker(s)" in n0.logs() and "batch 8 (4 per worker)" in n0.logs() and "done: step 4" in n0.logs()
    two = _ckpt(n0.cwd / "run" / "checkpoints" / "step_00000004.ckpt")
    one = _ckpt(one_node_two_workers / "step_00000004.ckpt")
    assert int(two["meta.world_size"]) == 2 and int(two["meta.step"]) == 4
    _assert_same_params(two, one)
    assert np.abs(two["conv_out.weight"]).max() > 0  # trained, not two untouched initialisations


# ---------------------------------------------------------------- 2. written once, resumed on one node
@pytest.mark.slow
@pytest.mark.distributed
def test_checkpoints_written_once_and_resumed_on_one_node(two_nodes, one_node_two_workers, digits8, cluster):
    n0, n1 = two_nodes
    ckpt_dir = n0.cwd / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["index.json", "step_00000002.ckpt", "step_00000004.ckpt"]
    assert list(n1.cwd.rglob("*.ckpt")) == [] and not (n1.cwd / "run").exists()  # rank 1 wrote nothing at all

    # Continue on 1 node x 2 workers from node 0's run dir (train.resume=auto), to step 6.
    job = cluster.start(
        "resume", n0.cwd, _train_args(digits8, "train.total_steps=6", "train.ckpt_every=2"),
        DEVICE_NUM=2, NNODES=1, MASTER_PORT=free_port(), CLUSTER_TIMEOUT=120, LOG_DIR="logs_resume",
    )  # fmt: skip
    cluster.wait(job, timeout=300)
    print(f"\nresume 4 -> 6 on 1 node x 2 workers: {job.elapsed:.0f}s")
    logs = job.logs()
    assert job.proc.returncode == 0, job.report() + logs
    assert "resumed from run/checkpoints/step_00000004.ckpt at step 4" in logs  # run.out_dir is relative
    assert "steps 4->6" in logs and "done: step 6" in logs
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == [f"step_0000000{s}.ckpt" for s in (2, 4, 6)]
    resumed = _ckpt(ckpt_dir / "step_00000006.ckpt")
    assert int(resumed["meta.step"]) == 6 and int(resumed["global_step"].reshape(-1)[0]) == 6
    assert int(resumed["ema.updates"]) == 6
    # 4 steps on 2 nodes + 2 resumed steps on 1 node == 6 uninterrupted steps on 1 node (weights, Adam, EMA).
    _assert_same_params(resumed, _ckpt(one_node_two_workers / "step_00000006.ckpt"))


# ---------------------------------------------------------------- 3. a dead worker; both nodes restart
@pytest.mark.slow
@pytest.mark.distributed
def test_worker_killed_on_node1_ends_the_job_on_both_nodes_and_both_restart(
    node1, digits8, cluster, one_node_two_workers, tmp_path
):
    """Rank 1 (node 1's only worker) SIGKILLs itself when it draws step 3's batch, once; rank 0 then waits in the
    all-reduce until MindSpore's heartbeat gives up. With MAX_RESTARTS=2 on both nodes, each node's launcher restarts;
    node 1 waits for node 0's old scheduler to close, and the two meet at node 0's new one, resume from step 2 and
    finish: the same weights as 6 uninterrupted steps on 1 node x 2 workers."""
    once = tmp_path / "killed_once"
    args = ["--config", *_train_args(digits8, "train.total_steps=6", "train.ckpt_every=2")]
    common = dict(
        ENTRY=FAULT_AT_STEP, DEVICE_NUM=1, NNODES=2, MASTER_ADDR=node1.host_ip, MASTER_PORT=free_port(),
        CLUSTER_TIMEOUT=120, MAX_RESTARTS=2, DDPM_TEST_FAULT="kill:1:3", DDPM_TEST_FAULT_ONCE=once,
    )  # fmt: skip
    n1 = cluster.start("node1", tmp_path / "node1", args, netns=node1, NODE_RANK=1, **common)
    n0 = cluster.start("node0", tmp_path / "node0", args, NODE_RANK=0, **common)
    cluster.wait(n0, n1, timeout=600)
    print(f"\nkill on node 1, both restart: node 1 {n1.elapsed:.0f}s, node 0 {n0.elapsed:.0f}s")
    report = n0.report() + n1.report()
    for j in (n0, n1):
        assert j.proc.returncode == 0, report + j.logs()
    # the fault and where it ended each node's first attempt
    assert "fault_at_step: rank 1" in n1.console() and "worker_killed of rank 1 (SIGKILL), exit 137" in n1.console()
    restart0 = [ln for ln in n0.console().splitlines() if ln.startswith("restart 1 of 2:")]
    assert len(restart0) == 1 and "resuming from step 2" in restart0[0], report
    restart1 = [ln for ln in n1.console().splitlines() if ln.startswith("restart 1 of 2:")]
    assert len(restart1) == 1 and "resuming from rank 0's newest checkpoint" in restart1[0], report
    # rank 0 learnt of the lost peer in its all-reduce (or from MindSpore's heartbeat): a fault, restarted
    (rec,) = [json.loads(ln) for ln in (n0.cwd / "run" / "restarts.jsonl").read_text().splitlines()]
    assert rec["restart"] == 1 and rec["resumed_from"] == 2 and rec["rank"] == 0 and rec["exit_code"] not in (0, 2)
    assert not (n1.cwd / "run").exists()  # rank 1 wrote nothing, restart record included
    # the second attempt: rank 0 resumed at step 2 and sent its state to rank 1, which has no run directory
    assert "resumed from run/checkpoints/step_00000002.ckpt at step 2" in (n0.log_dir / "worker_0.log").read_text()
    assert "done: step 6" in n0.console(), report
    ckpt_dir = n0.cwd / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == [f"step_0000000{s}.ckpt" for s in (2, 4, 6)]
    _assert_same_params(_ckpt(ckpt_dir / "step_00000006.ckpt"), _ckpt(one_node_two_workers / "step_00000006.ckpt"))
    assert cluster.leftovers() == [] and node1.pids() == []  # no orphaned worker or scheduler on either node


# ---------------------------------------------------------------- 4. a wrong MASTER_ADDR
@pytest.mark.slow
@pytest.mark.distributed
def test_wrong_master_addr_fails_clearly_within_cluster_timeout(node1, digits8, cluster, tmp_path):
    timeout, port = 20, free_port()
    args = _train_args(digits8)
    common = dict(DEVICE_NUM=1, NNODES=2, MASTER_PORT=port, CLUSTER_TIMEOUT=timeout)
    # Node 1 is given an address in its subnet that nobody has; node 0 is right and waits for a node that never comes.
    wrong, right = node1.unused_ip, node1.host_ip
    n1 = cluster.start("node1", tmp_path / "node1", args, netns=node1, NODE_RANK=1, MASTER_ADDR=wrong, **common)
    n0 = cluster.start("node0", tmp_path / "node0", args, NODE_RANK=0, MASTER_ADDR=right, **common)
    cluster.wait(n0, n1, timeout=300)
    print(f"\nwrong MASTER_ADDR (timeout {timeout}s): node 1 fails after {n1.elapsed:.0f}s, node 0 {n0.elapsed:.0f}s")
    report = n0.report() + n1.report()
    errors = [line for line in n1.console().splitlines() if line.startswith("error:")]
    assert n1.proc.returncode == 3 and len(errors) == 1, report
    assert f"no scheduler answered at MASTER_ADDR={wrong} MASTER_PORT={port}" in errors[0]
    assert f"within CLUSTER_TIMEOUT={timeout}s" in errors[0] and "Traceback" not in n1.console()
    assert timeout <= n1.elapsed < timeout + 30, report
    assert not n1.log_dir.exists()  # no msrun was started on node 1
    # Node 0's scheduler gives up after CLUSTER_TIMEOUT with MindSpore's own message (not after 10 minutes); its worker
    # can linger ~20 s more before exiting (measured: node 0 done after 26-52 s on 2 loaded cores).
    assert n0.proc.returncode != 0 and n0.elapsed < timeout + 80, report
    assert "not successfully spawned" in n0.console(), report
    assert cluster.leftovers() == [] and node1.pids() == []


def test_master_addr_on_the_wrong_node_fails_at_once(tmp_path):
    """NODE_RANK=0 must own MASTER_ADDR (msrun starts the scheduler there) and no other node may: one line, exit 2."""
    for node_rank, addr, needle in [
        (0, "192.0.2.77", "MASTER_ADDR=192.0.2.77"),  # TEST-NET-1: never an address of this machine
        (1, "127.0.0.1", "MASTER_ADDR=127.0.0.1 is this node's own address, but NODE_RANK=1"),
    ]:
        res = subprocess.run(
            ["bash", RUN_8P, TINY], cwd=tmp_path, capture_output=True, text=True, timeout=60,
            env=env() | {"NNODES": "2", "DEVICE_NUM": "1", "NODE_RANK": str(node_rank), "MASTER_ADDR": addr,
                         "MASTER_PORT": "29999", "LOG_DIR": str(tmp_path / "logs")},
        )  # fmt: skip
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr
        assert not (tmp_path / "logs").exists()
