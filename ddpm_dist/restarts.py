"""Automatic restart of a failed job (``MAX_RESTARTS``): what is retried, crash loops, and the run's restart record.

The launcher's supervisor (``ddpm_dist/supervisor.py``) runs msrun once per attempt; after a fault it asks
:class:`RestartPolicy` whether to launch again with the same arguments. The workers resume from the newest complete
checkpoint (``train.resume=auto``), so a restarted run continues exactly where its last checkpoint left it.

Never retried: a clean end or a stop on request (0), the user's input (2, whatever its cause, e.g. the non-finite
loss stop ``nonfinite_loss``), any outcome while a stop signal was being handled. Retried up to ``max_restarts``
times: every other non-zero status (a worker killed or crashed, the hang watchdog's 124, msrun killed or failed).
A crash loop - the same cause at the same step twice in a row, where "step" is the furthest step the workers
reported (``job_status`` records) or the newest checkpoint's - ends the job with one line instead.

Every restart is one console line, one JSON line in ``RUN/restarts.jsonl`` (the trainer logs their count as the
TensorBoard scalar ``run/restarts``) - no MindSpore import here.

``launch/run_mpi.sh`` runs its own loop around mpirun and asks :func:`main` (``python -m ddpm_dist.restarts``) after
each fault; :func:`mpirun_failure` reads the ranks' records of that attempt the way the supervisor reads msrun's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import job_status

RECORD = "restarts.jsonl"
NEVER_RETRIED = {"stop_request", "input_error", "nonfinite_loss"}


def newest_checkpoint_step(run_dir: Path | None) -> int | None:
    """The step of the newest checkpoint listed in ``run_dir``'s index (None: no run directory or no index)."""
    if run_dir is None:
        return None
    try:
        entries = json.loads((Path(run_dir) / "checkpoints" / "index.json").read_text(encoding="utf-8"))
        return max(int(e["step"]) for e in entries) if entries else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_records(run_dir: Path) -> list[dict]:
    """The restart records of a run (oldest first; unreadable lines skipped)."""
    try:
        lines = (Path(run_dir) / RECORD).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@dataclass
class Failure:
    """One failed attempt, as the policy sees it."""

    code: int
    cause: str
    rank: int | None = None
    signal: str | None = None
    line: str = ""
    step_reached: int | None = None  # the furthest step a worker reported, else the newest checkpoint's
    resumed_from: int | None = None  # the newest checkpoint's step when the attempt started

    def key(self) -> tuple:
        """What "the same cause at the same step" compares: the worker's line too (pids aside), so that two
        different errors of one exit status are not a loop."""
        return (self.cause, self.code, self.signal, re.sub(r"\(pid \d+\)", "", self.line), self.step_reached)


@dataclass
class RestartPolicy:
    max_restarts: int
    run_dir: Path | None = None  # where restarts.jsonl goes (None: log_dir)
    log_dir: Path = Path(".")
    write_record: bool = True  # node 0 only: several nodes may share the run directory
    restarts: int = 0
    history: list[Failure] = field(default_factory=list)

    def decide(self, failure: Failure, *, stop_requested: bool) -> tuple[bool, str]:
        """(restart?, the console line). The line is empty when the job simply ends with its own line."""
        if failure.code in (job_status.EXIT_DONE, job_status.EXIT_INPUT) or failure.cause in NEVER_RETRIED:
            return False, ""
        if stop_requested:
            return False, ""
        if self.max_restarts <= 0:
            return False, ""
        previous = self.history[-1] if self.history else None
        self.history.append(failure)
        if previous is not None and previous.key() == failure.key() and failure.step_reached is not None:
            return False, (
                f"error: crash loop: {self._what(failure)} at step {failure.step_reached} twice in a row; not "
                f"restarting again (restart {self.restarts} of {self.max_restarts} used) - see the line above"
            )
        if self.restarts >= self.max_restarts:
            return False, f"error: giving up after {self.restarts} restart(s) (MAX_RESTARTS={self.max_restarts})"
        self.restarts += 1
        resumed = newest_checkpoint_step(self.run_dir)
        line = (
            f"restart {self.restarts} of {self.max_restarts}: {self._what(failure)}; step reached "
            f"{_step(failure.step_reached)}, {self._resuming(resumed)}"
        )
        self._record(failure, resumed)
        return True, line

    def _resuming(self, resumed: int | None) -> str:
        if resumed is not None:
            return f"resuming from step {resumed}"
        if self.write_record or (self.run_dir is not None and Path(self.run_dir).is_dir()):
            return "resuming from step 0"
        return "resuming from rank 0's newest checkpoint"  # another node: rank 0 decides and sends its state

    @staticmethod
    def _what(f: Failure) -> str:
        who = f" of rank {f.rank}" if f.rank is not None else ""
        sig = f" ({f.signal})" if f.signal else ""
        return f"{f.cause}{who}{sig}, exit {f.code}"

    def _record(self, f: Failure, resumed: int | None) -> None:
        if not self.write_record:
            return
        where = self.run_dir if self.run_dir is not None and Path(self.run_dir).is_dir() else self.log_dir
        entry = {
            "time": time.time(),
            "restart": self.restarts,
            "max_restarts": self.max_restarts,
            "cause": f.cause,
            "exit_code": f.code,
            "rank": f.rank,
            "signal": f.signal,
            "line": f.line,
            "step_reached": f.step_reached,
            "resumed_from": resumed,
        }
        try:
            with open(Path(where) / RECORD, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")
                out.flush()
                os.fsync(out.fileno())
        except OSError:
            pass


def _step(step: int | None) -> str:
    return "unknown" if step is None else str(step)


def wait_for_port_closed(addr: str, port: int, *, timeout: float, poll: float = 1.0) -> bool:
    """Wait until nothing accepts connections at ``addr:port`` (node 0's scheduler of the failed attempt has gone);
    False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=2.0):
                pass
        except OSError:
            return True
        time.sleep(poll)
    return False


# ---------------------------------------------------------------- launch/run_mpi.sh's restart decision
def mpirun_failure(code: int, status_dir: Path | None, run_dir: Path | None) -> Failure:
    """The failure of an mpirun attempt that exited ``code``: the rank that recorded a non-zero exit first (its cause
    and line) in ``status_dir`` (``job_status``), else the status alone (a rank killed by a signal leaves no record);
    the step reached is the furthest a rank reported, or the newest checkpoint's if further."""
    records = list(job_status.read_all(status_dir).values()) if status_dir is not None else []
    steps = [int(r["step"]) for r in records if isinstance(r.get("step"), int)]
    newest = newest_checkpoint_step(run_dir)
    reached = max([*steps, *([newest] if newest is not None else [])], default=None)
    failed = sorted((r for r in records if r.get("state") == "exited" and r.get("code")), key=lambda r: r["time"])
    signal_name = None
    if code > 128:
        try:
            signal_name = signal.Signals(code - 128).name
        except ValueError:
            pass
    if failed:
        first = failed[0]
        rec_code = int(first["code"])
        cause = first.get("cause") or ("input_error" if rec_code == job_status.EXIT_INPUT else "worker_failed")
        return Failure(code, cause, first.get("rank"), None, str(first.get("line", "")), reached)
    return Failure(code, "worker_killed" if signal_name else "mpirun_failed", None, signal_name, "", reached)


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_dist.restarts --state F --max-restarts N --code RC [--status-dir D] [--run-dir R]``: after
    mpirun exited ``RC`` (a fault), print this module's line and exit 0 to run it again, 3 not to. ``F`` keeps the
    restarts used and the last failure between the calls of one launch (a crash loop is the same failure twice in a
    row)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ddpm_dist.restarts", description=main.__doc__)
    p.add_argument("--state", type=Path, required=True)
    p.add_argument("--max-restarts", type=int, required=True)
    p.add_argument("--code", type=int, required=True)
    p.add_argument("--status-dir", type=Path)
    p.add_argument("--run-dir", type=Path)
    args = p.parse_args(argv)
    try:
        state = json.loads(args.state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    policy = RestartPolicy(args.max_restarts, run_dir=args.run_dir, log_dir=args.state.parent,
                           restarts=int(state.get("restarts", 0)))  # fmt: skip
    if isinstance(state.get("last"), dict):
        policy.history.append(Failure(**state["last"]))
    failure = mpirun_failure(args.code, args.status_dir, args.run_dir)
    again, line = policy.decide(failure, stop_requested=False)
    args.state.write_text(json.dumps({"restarts": policy.restarts, "last": failure.__dict__}), encoding="utf-8")
    if line:
        print(line, file=sys.stdout if again else sys.stderr, flush=True)
    return 0 if again else 3


if __name__ == "__main__":
    sys.exit(main())
