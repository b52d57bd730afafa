"""Run msrun for ``launch/run_8p.sh`` and own the job's signals and exit status (no MindSpore import).

    python -m ddpm_dist.supervisor --log-dir DIR --local-workers N [--node-rank K] -- msrun --worker_num=... ENTRY ...

msrun alone cannot give the launcher's contract (``ddpm_dist/job_status.py``: 0 done or stopped on request, 2 bad
input, anything else a fault): it exits 1 for every failed worker, after waiting 16-58 s for its scheduler (the whole
CLUSTER_TIMEOUT when a worker dies during start-up); on SIGINT it SIGKILLs the workers (nothing saved); killed itself,
it leaves its ``tail -f`` helpers running. So this process:

- starts msrun in a session of its own: Ctrl-C in a terminal (SIGINT to the foreground process group) reaches only
  this process. A stop request (SIGINT, SIGTERM, SIGHUP) is forwarded to the workers (SIGHUP as SIGTERM) once every
  local worker has its stop handler installed (state ``training``): they agree on a stop step, save and exit 0, and
  so does the job. Earlier - during start-up, before any step was trained - the job is ended at once, exit 0
  (nothing to save; an earlier checkpoint is untouched).
- watches the workers' records (``DDPM_STATUS_DIR``) and msrun's report of a worker's exit code: the first worker
  that ends non-zero ends the job at once - the other workers' process groups, msrun, its scheduler and helpers are
  SIGKILLed - and the job exits with that worker's status, printing its one ``error:`` line (once). A worker killed
  by signal N gives 128 + N (137 for SIGKILL); a worker's uncaught exception 1.
- is a child subreaper: when msrun is killed, its helpers and workers become this process's children. The helpers
  are killed; workers that were training notice msrun is gone, save at an agreed step and exit (they are waited
  for), workers still starting up are killed. The job then exits 128 + msrun's signal: a fault, worth a restart.
- shows the local workers' logs as they grow, to their last line (msrun runs with ``--tail_worker_log=-2``: no
  ``tail -f`` helpers), keeps msrun's own console lines in ``LOG_DIR/msrun.log``, and writes the machine-readable
  outcome to ``LOG_DIR/job_status.json``: ``exit_code``, ``outcome`` (done, stopped, input_error, fault), ``cause``,
  ``rank``, ``signal``, ``line`` and each local worker's record.
"""

from __future__ import annotations

import signal

# Run as the launcher (run_8p.sh execs this process), a stop request is caught from here on: one that arrives while
# the imports below run is kept and honoured, it does not kill the launcher with msrun never started.
EARLY_STOPS: list[int] = []
if __name__ == "__main__":
    for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(_sig, lambda signum, frame: EARLY_STOPS.append(signum))

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from . import job_status  # noqa: E402

POLL_S = 0.2
MSRUN_EXIT_GRACE_S = 60.0  # after every local worker exited 0, msrun (waiting for its scheduler) gets this long
ORPHAN_STOP_S = 900.0  # after msrun was killed: how long training workers get to reach the stop step and save

# msrun's own console lines: its logger ("[WARNING] ME(pid:...) ...", "[ERROR] ME(...)", the C++ "[INFO]
# DISTRIBUTED(...)") and its start lines; a worker's own lines (followed in its log) are shown.
MSRUN_NOISE = re.compile(r"^(\[(WARNING|INFO|ERROR|DEBUG|CRITICAL)\] (ME|DISTRIBUTED)\(|Start (scheduler|worker) proc)")
# msrun's report of a worker that ended non-zero (process_entity/_api.py, join_processes): the code is Popen's
WORKER_EXIT = re.compile(r"Worker process (\d+) exit with exception\. Error code: (-?\d+)")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# ------------------------------------------------------------------ /proc helpers (Linux)
def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(e.decode(errors="replace").split("=", 1) for e in raw.split(b"\0") if b"=" in e)


def _cmdline(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]; [] when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped, not gone)."""
    stat = _stat(pid)
    return bool(stat) and stat[0] not in ("Z", "X")


def _start_time(pid: int) -> str:
    """When the process started (clock ticks since boot): with the pid, it names one process, never a reused pid."""
    stat = _stat(pid)
    return stat[19] if len(stat) > 19 else ""


def _kill_group(pid: int, sig: int, started: str | None = None) -> None:
    """``sig`` to ``pid``'s process group when it leads one (msrun's workers, msrun here), else to ``pid``; when
    ``started`` is given, only if ``pid`` is still the process that started then."""
    if started is not None and _start_time(pid) != started:
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass


def _reap(pid: int) -> int | None:
    """Collect a child of ours that ended (a worker or helper msrun left behind); its status as msrun reports it."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def become_subreaper() -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants (msrun's workers and helpers) are reparented to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ------------------------------------------------------------------ the console
class Console:
    """What the user sees: the workers' own lines, followed in their logs, and msrun's console without its noise.

    msrun is told not to tail the worker logs (its ``tail -f`` helpers outlive a killed msrun and stop before a
    worker's last lines); this class follows them itself and reads them to the end when the job is over. msrun's own
    stdout and stderr all go into ``msrun.log``. Worker ``error:`` lines are not shown: the supervisor prints the
    failing worker's line once. A traceback of msrun itself ("Distributed job exited with exception") is kept out of
    the console too.
    """

    def __init__(self, log_path: Path, on_worker_exit):
        self.log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in close()
        self.lock = threading.Lock()
        self.shown: list[str] = []
        self.on_worker_exit = on_worker_exit
        self.threads: list[threading.Thread] = []
        self.followed: dict[Path, list] = {}  # worker log -> [open file, partial last line]
        self.done = threading.Event()
        follower = threading.Thread(target=self._follow_loop, daemon=True)
        follower.start()
        self.follower = follower

    def follow(self, path: Path) -> None:
        """Show the lines of a worker's log as they are written (from its start: msrun truncated it)."""
        with self.lock:
            if path not in self.followed:
                self.followed[path] = [None, ""]

    def _read_logs(self, final: bool = False) -> None:
        with self.lock:
            items = list(self.followed.items())
        for path, state in items:
            if state[0] is None:
                try:
                    state[0] = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in close()
                except OSError:
                    continue
            text = state[1] + state[0].read()
            lines = text.split("\n")
            state[1] = "" if final else lines.pop()
            for line in lines:
                if line and not MSRUN_NOISE.match(line) and not line.startswith("error: "):
                    self.show(line, sys.stdout)
            if "\r" in state[1]:  # a progress bar redrawing its line (tqdm): show it as it goes
                done, _, state[1] = state[1].rpartition("\r")
                self.show(done + "\r", sys.stdout, end="")

    def _follow_loop(self) -> None:
        while not self.done.wait(0.1):
            self._read_logs()

    def pump(self, stream, out, *, is_stderr: bool) -> None:
        def run():
            in_traceback = False
            for raw in iter(stream.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                with self.lock:
                    self.log.write(line + "\n")
                    self.log.flush()
                if is_stderr:
                    m = WORKER_EXIT.search(line)
                    if m:
                        self.on_worker_exit(int(m.group(1)), int(m.group(2)))
                    in_traceback = in_traceback or line.startswith("Traceback (most recent call last)")
                if in_traceback or MSRUN_NOISE.match(line) or (not is_stderr and line.startswith("error: ")):
                    continue
                self.show(line, out)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def show(self, line: str, out, end: str = "\n") -> None:
        with self.lock:
            self.shown.append(line)
            try:
                print(line, file=out, end=end, flush=True)
            except OSError:  # the terminal went away: keep logging, keep supervising
                pass

    def close(self, timeout: float = 5.0) -> None:
        """After the job: msrun's pipes to their end, then every worker log to its last line."""
        for t in self.threads:
            t.join(timeout)
        self.done.set()
        self.follower.join(timeout)
        self._read_logs(final=True)
        for f, _ in self.followed.values():
            if f is not None:
                f.close()
        with self.lock:
            self.log.close()


# ------------------------------------------------------------------ the job
@dataclass
class Worker:
    pid: int
    rank: int | None
    record: dict = field(default_factory=dict)  # its newest job_status record
    reported: int | None = None  # msrun's "Error code" for it (Popen's: negative = killed by that signal)


@dataclass
class Outcome:
    code: int
    cause: str
    line: str = ""
    rank: int | None = None
    signal: str | None = None


class Supervisor:
    """One attempt: msrun from its start to its end. ``stop_signals``: shared with the restart loop (``main``), which
    installs the handlers once for all attempts."""

    def __init__(
        self,
        cmd: list[str],
        *,
        log_dir: Path,
        local_workers: int,
        node_rank: int = 0,
        stop_signals: list[int] | None = None,
    ):
        self.cmd, self.log_dir, self.local_workers, self.node_rank = cmd, log_dir, local_workers, node_rank
        self.status_dir = log_dir / "status"
        self.workers: dict[int, Worker] = {}
        self.helpers: set[int] = set()  # msrun's tail -f processes
        self.schedulers: set[int] = set()
        self.started: dict[int, str] = {}  # pid -> start time of every process of msrun's we know
        self.reported: dict[int, int] = {}  # pid -> code, from msrun's stderr (filled by the console thread)
        self.stop_signals: list[int] = stop_signals if stop_signals is not None else []
        self.stop_seen = False  # a stop request arrived during this attempt: its outcome is never retried
        self.outcome: Outcome | None = None
        self.forwarded: str | None = None  # the name of the stop signal forwarded to the workers
        self.msrun: subprocess.Popen | None = None

    # ---------------------------------------------------------------- set-up
    def _prepare(self) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        for old in self.status_dir.glob("*rank_*"):  # an earlier launch's records
            old.unlink(missing_ok=True)
        (self.log_dir / "job_status.json").unlink(missing_ok=True)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signals.append(signum)

    # ---------------------------------------------------------------- watching
    def _discover(self) -> None:
        """msrun's children: workers (MS_ROLE=MS_WORKER, with RANK_ID), its scheduler, its tail -f helpers."""
        known = set(self.workers) | self.helpers | self.schedulers
        for pid in _children(self.msrun.pid):
            if pid in known:
                continue
            self.started[pid] = _start_time(pid)
            cmd = _cmdline(pid)
            if cmd and os.path.basename(cmd[0]) == "tail":
                self.helpers.add(pid)
                continue
            role = _environ(pid).get("MS_ROLE")  # before its exec a child still shows msrun's environment: retried
            if role == "MS_WORKER":
                rank = _environ(pid).get("RANK_ID", "")
                self.workers[pid] = Worker(pid, int(rank) if rank.isdigit() else None)
                self.console.follow(self._log_path(self.workers[pid]))
            elif role == "MS_SCHED":
                self.schedulers.add(pid)

    def _refresh(self) -> None:
        for pid, record in job_status.read_all(self.status_dir).items():
            w = self.workers.setdefault(pid, Worker(pid, record.get("rank")))
            w.record = record
        for pid, code in list(self.reported.items()):
            if pid in self.workers:
                self.workers[pid].reported = code

    def _failed(self) -> Worker | None:
        """The first worker known to have ended non-zero (its own record, else msrun's report)."""
        ended = [w for w in self.workers.values() if w.record.get("state") == "exited" and w.record.get("code")]
        ended += [w for w in self.workers.values() if w.reported and w.record.get("state") != "exited"]
        return ended[0] if ended else None

    def _ready(self) -> bool:
        """Every local worker is training (its stop handler installed) or has already finished cleanly."""

        def ready(w: Worker) -> bool:
            if w.record.get("state") == "exited":
                return w.record.get("code") == 0
            return w.record.get("state") == "training" and _alive(w.pid)

        return len(self.workers) >= self.local_workers and all(ready(w) for w in self.workers.values())

    # ---------------------------------------------------------------- ending
    def _log_path(self, w: Worker) -> Path:
        return self.log_dir / f"worker_{w.rank if w.rank is not None else 0}.log"

    def _last_line(self, path: Path, pattern: re.Pattern) -> str:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        found = [ln.strip() for ln in lines if pattern.match(ln.strip())]
        return found[-1] if found else ""

    def _worker_outcome(self, w: Worker) -> Outcome:
        if w.record.get("state") == "exited":
            code = int(w.record["code"])
            line = w.record.get("line") or self._last_line(self._log_path(w), re.compile(r"^error: "))
        else:
            code = w.reported if w.reported > 0 else job_status.signal_exit_code(-w.reported)
            line = self._last_line(self._log_path(w), re.compile(r"^error: ")) if w.reported > 0 else ""
        sig = _signame(-w.reported) if w.reported is not None and w.reported < 0 else None
        if not line:
            how = f"was killed by {sig}" if sig else f"exited with status {code}"
            line = f"error: worker rank {w.rank} (pid {w.pid}) {how}; see {self._log_path(w)}"
        cause = "input_error" if code == job_status.EXIT_INPUT else ("worker_killed" if sig else "worker_failed")
        cause = w.record.get("cause") or cause  # the worker's own (e.g. "hang", "nonfinite_loss")
        return Outcome(code, cause, line, w.rank, sig)

    def step_reached(self) -> int | None:
        """The furthest step a local worker reported training (its records' ``step``), None if none did."""
        steps = [int(w.record["step"]) for w in self.workers.values() if isinstance(w.record.get("step"), int)]
        return max(steps) if steps else None

    def _kill_all(self) -> None:
        """SIGKILL every worker's process group, msrun's (its scheduler and tail helpers) and any orphan of ours."""
        for pid in list(self.workers) + list(self.helpers) + list(self.schedulers):
            if pid in self.started:
                _kill_group(pid, signal.SIGKILL, self.started[pid])
        if self.msrun.poll() is None:
            _kill_group(self.msrun.pid, signal.SIGKILL)
        self.msrun.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [p for p in _children(os.getpid()) if p != self.msrun.pid]
            for pid in left:
                _kill_group(pid, signal.SIGKILL)
                _reap(pid)
            if not left and not any(_alive(w.pid) for w in self.workers.values()):
                break
            time.sleep(0.05)

    def _stop(self) -> Outcome | None:
        """Handle a stop request: forward it to training workers, or end a job still starting up."""
        sig = self.stop_signals[-1]
        self.stop_signals.clear()
        self.stop_seen = True
        name = _signame(sig) + (" (Ctrl-C)" if sig == signal.SIGINT else "")
        if self.forwarded or self._ready():
            fwd = signal.SIGINT if sig == signal.SIGINT else signal.SIGTERM
            if not self.forwarded:
                self._say(f"run_8p.sh: {name} received; the workers save a checkpoint at an agreed step and stop")
            self.forwarded = _signame(sig)
            for w in self.workers.values():
                if _alive(w.pid):
                    try:
                        os.kill(w.pid, fwd)
                    except OSError:
                        pass
            return None
        self._kill_all()
        line = f"stopped by {name} before every worker was training: the job was ended at once, nothing to save"
        return Outcome(0, "stop_request", line, signal=_signame(sig))

    def _orphaned(self, msrun_code: int) -> Outcome:
        """msrun was killed: its helpers go; training workers stop and save by themselves (waited for), others go."""
        sig = _signame(-msrun_code) if msrun_code < 0 else None
        deadline = time.monotonic() + ORPHAN_STOP_S
        for pid in self.helpers:
            _kill_group(pid, signal.SIGKILL, self.started[pid])
        while True:
            self._refresh()
            for pid in _children(os.getpid()):  # the workers are our children now: collect their status
                code = _reap(pid)
                if pid in self.workers and code is not None and self.workers[pid].record.get("state") != "exited":
                    self.workers[pid].reported = code
            if self.stop_signals:
                self.stop_seen = True
            self.stop_signals.clear()  # the training workers are stopping already
            alive = [w for w in self.workers.values() if _alive(w.pid)]
            failed = self._failed() is not None  # the others would wait for it in an all-reduce
            for w in alive:
                if w.record.get("state") != "training" or failed or time.monotonic() > deadline:
                    _kill_group(w.pid, signal.SIGKILL, self.started.get(w.pid))
            if not alive:
                break
            time.sleep(POLL_S)
        self._kill_all()  # the scheduler, now that no worker needs it
        saved = sum(1 for w in self.workers.values() if w.record.get("state") == "exited" and w.record.get("code") == 0)
        how = f"was killed by {sig}" if sig else f"exited with status {msrun_code}"
        code = job_status.signal_exit_code(-msrun_code) if msrun_code < 0 else (msrun_code or job_status.EXIT_FAULT)
        n = len(self.workers)
        what = "the workers saved and stopped" if saved == n else f"{saved} of {n} worker(s) here stopped cleanly"
        line = f"error: msrun (pid {self.msrun.pid}) {how}; {what}: run the same command again to resume"
        return Outcome(code, "msrun_killed" if sig else "msrun_failed", line, signal=sig)

    def _say(self, line: str, out=None) -> None:
        self.console.show(line, out or sys.stderr)

    def _finished(self, msrun_code: int) -> Outcome:
        """msrun exited by itself."""
        self._refresh()
        failed = self._failed()
        if failed is not None:
            return self._worker_outcome(failed)
        if msrun_code < 0 or (msrun_code and any(_alive(w.pid) for w in self.workers.values())):
            return self._orphaned(msrun_code)
        if msrun_code:
            return Outcome(
                msrun_code, "msrun_failed", f"error: msrun exited with status {msrun_code}; see {self.log_dir}"
            )
        return self._clean_end()

    def _clean_end(self) -> Outcome:
        return Outcome(0, "stop_request", signal=self.forwarded) if self.forwarded else Outcome(0, "done")

    def _all_workers_done(self) -> bool:
        ws = list(self.workers.values())
        return len(ws) >= self.local_workers and all(
            w.record.get("state") == "exited" and w.record.get("code") == 0 and not _alive(w.pid) for w in ws
        )

    # ---------------------------------------------------------------- main loop
    def run(self, *, install_signals: bool = True) -> int:
        self._prepare()
        self.console = Console(self.log_dir / "msrun.log", self.reported.__setitem__)
        start = time.time()
        if install_signals:
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
        become_subreaper()
        env = dict(os.environ, **{job_status.STATUS_DIR_VAR: str(self.status_dir.resolve())})
        self.msrun = subprocess.Popen(self.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.console.pump(self.msrun.stdout, sys.stdout, is_stderr=False)
        self.console.pump(self.msrun.stderr, sys.stderr, is_stderr=True)
        outcome, all_done_at = None, None
        try:
            while outcome is None:
                if self.msrun.poll() is None:
                    self._discover()
                self._refresh()
                failed = self._failed()
                if failed is not None:
                    outcome = self._worker_outcome(failed)
                    self._kill_all()
                elif self.msrun.poll() is not None:
                    outcome = self._finished(self.msrun.returncode)
                elif self.stop_signals:
                    outcome = self._stop()
                elif self._all_workers_done():
                    all_done_at = all_done_at or time.monotonic()
                    if time.monotonic() - all_done_at > MSRUN_EXIT_GRACE_S:  # msrun stuck on its scheduler
                        self._kill_all()
                        outcome = self._clean_end()
                if outcome is None:
                    time.sleep(POLL_S)
        finally:
            if outcome is None:  # an exception of our own: leave nothing running
                self._kill_all()
            else:
                self._kill_all()  # reaps msrun's helpers and anything left; a no-op after a normal end
        self.console.close()
        self.outcome = outcome
        self._report(outcome, start)
        return outcome.code

    def _report(self, outcome: Outcome, start: float) -> None:
        if outcome.line:
            self._say(outcome.line, sys.stdout if outcome.code == 0 else sys.stderr)
        names = {0: "stopped" if outcome.cause == "stop_request" else "done", job_status.EXIT_INPUT: "input_error"}
        record = {
            "exit_code": outcome.code,
            "outcome": names.get(outcome.code, "fault"),
            "cause": outcome.cause,
            "rank": outcome.rank,
            "signal": outcome.signal,
            "line": outcome.line,
            "node_rank": self.node_rank,
            "started": start,
            "ended": time.time(),
            "workers": [
                {
                    "rank": w.rank,
                    "pid": w.pid,
                    "state": w.record.get("state"),
                    "code": w.record.get("code"),
                    "msrun_reported": w.reported,
                }
                for w in sorted(self.workers.values(), key=lambda w: (w.rank is None, w.rank or 0))
            ],  # fmt: skip
        }
        tmp = self.log_dir / ".job_status.json.partial"
        try:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(tmp, self.log_dir / "job_status.json")
        except OSError:
            tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm_dist.supervisor", description=__doc__.splitlines()[0])
    p.add_argument("--log-dir", required=True, type=Path)
    p.add_argument("--local-workers", required=True, type=int)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--max-restarts", type=int, default=0, help="relaunch msrun after a fault up to N times")
    p.add_argument("--run-dir", type=Path, default=None, help="run.out_dir: checkpoint steps, restarts.jsonl")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- msrun ...")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return supervise(cmd, log_dir=args.log_dir, local_workers=args.local_workers, node_rank=args.node_rank,
                     max_restarts=args.max_restarts, run_dir=args.run_dir)  # fmt: skip


def _msrun_arg(cmd: list[str], name: str, default: str = "") -> str:
    return next((a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")), default)


def _wait_for_old_scheduler(cmd: list[str]) -> None:
    from .restarts import wait_for_port_closed

    addr, port = _msrun_arg(cmd, "master_addr", "127.0.0.1"), int(_msrun_arg(cmd, "master_port", "8118"))
    wait_for_port_closed(addr, port, timeout=float(_msrun_arg(cmd, "cluster_time_out", "600")))


def supervise(
    cmd: list[str], *, log_dir: Path, local_workers: int, node_rank: int, max_restarts: int, run_dir: Path | None
) -> int:
    """Run msrun, and again after a fault while ``ddpm_dist/restarts.py``'s policy allows (MAX_RESTARTS).

    Every node runs the same command: a failure on any node ends the job on all of them (the others lose the
    cluster), each node's supervisor restarts, and the nodes meet again at node 0's scheduler. A restart keeps
    msrun's arguments, ``--master_port`` included: the relaunched scheduler gets the same port at once (measured,
    tests/test_restart.py: no wait for TIME_WAIT).
    """
    from .restarts import Failure, RestartPolicy, newest_checkpoint_step

    stop_signals = EARLY_STOPS
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, frame: stop_signals.append(signum))
    if stop_signals:  # the launcher was asked to stop while this process started: nothing ran, nothing to save
        sig = stop_signals[-1]
        name = _signame(sig) + (" (Ctrl-C)" if sig == signal.SIGINT else "")
        print(f"stopped by {name} before msrun started: nothing to save", flush=True)
        return 0
    policy = RestartPolicy(max_restarts, run_dir=run_dir, log_dir=log_dir, write_record=node_rank == 0)
    if max_restarts > 0:  # a restart loads the compiled graphs (run.compile_cache=auto: train/compile_cache.py)
        os.environ.setdefault("DDPM_COMPILE_CACHE_DIR", str((log_dir / "compile_cache").resolve()))
    while True:
        resumed_from = newest_checkpoint_step(run_dir)
        sup = Supervisor(cmd, log_dir=log_dir, local_workers=local_workers, node_rank=node_rank,
                         stop_signals=stop_signals)  # fmt: skip
        code = sup.run(install_signals=False)
        out = sup.outcome
        reached = sup.step_reached()
        newest = newest_checkpoint_step(run_dir)
        if newest is not None:
            reached = max(reached or 0, newest)
        failure = Failure(code, out.cause, out.rank, out.signal, out.line, reached, resumed_from)
        again, line = policy.decide(failure, stop_requested=sup.stop_seen or bool(stop_signals))
        if line:
            print(line, file=sys.stdout if again else sys.stderr, flush=True)
        if not again or stop_signals:
            return code
        if node_rank > 0:  # the old scheduler must be gone first: a worker joining it is refused ("Repeated
            _wait_for_old_scheduler(cmd)  # registration node"); node 0's part ends after MindSpore's heartbeat (~30 s)


if __name__ == "__main__":
    sys.exit(main())
