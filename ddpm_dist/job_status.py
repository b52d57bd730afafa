"""How a worker tells ``launch/run_8p.sh`` how it ended, and what the job's exit status means.

The exit status of every entry point, and of the whole job through msrun and across nodes, means one thing:

    0   done, or stopped on request (SIGTERM, Ctrl-C) after saving - or before any step had been trained
    2   the user's input is wrong (config, data, checkpoint, flags): never worth a retry
    any other value: a fault (a worker crashed or was killed, a timeout, a lost node): worth a retry

msrun itself exits 1 whenever a worker fails, and only after waiting for its scheduler (16-58 s, or CLUSTER_TIMEOUT
when a worker dies during start-up), so the launcher (``ddpm_dist/supervisor.py``) learns each worker's outcome
here instead. It exports ``DDPM_STATUS_DIR`` (a fresh directory per launch) to msrun, which passes it on to the
workers; a worker (``MS_ROLE=MS_WORKER``) writes one small JSON file there, ``rank_<RANK_ID>.json``, atomically:

    {"rank": 1, "pid": 4242, "time": T, "state": "training"}                    the stop handler is installed
    {"rank": 1, "pid": 4242, "time": T, "state": "exited", "code": 2, "line": "error: ..."}  main returned or raised

(``time``: seconds since the epoch). Outside a launcher (no ``DDPM_STATUS_DIR``) nothing is written. A failed write
is ignored: the launcher then falls back to msrun's own report of the worker's exit code and the worker's log.
``launch/run_mpi.sh`` forwards ``DDPM_STATUS_DIR`` to mpirun's ranks too (``rank_<OMPI_COMM_WORLD_RANK>.json``): it
reads them after a fault for its restart decision (``python -m ddpm_dist.restarts``); only ranks on its own node
write where it reads, unless the directory is on a shared file system.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

STATUS_DIR_VAR = "DDPM_STATUS_DIR"

EXIT_DONE = 0
EXIT_INPUT = 2
EXIT_FAULT = 1  # a fault with no more specific code (a worker's uncaught exception, msrun's own failure)


def signal_exit_code(signum: int) -> int:
    """The fault code of a process killed by signal ``signum``: 128 + signum, as a shell reports it (137 SIGKILL)."""
    return 128 + signum


def _record_path() -> Path | None:
    where = os.environ.get(STATUS_DIR_VAR)
    if not where:
        return None
    role = os.environ.get("MS_ROLE")
    if role is not None:  # msrun: its scheduler (MS_SCHED) runs the same script and is not a worker
        if role != "MS_WORKER":
            return None
        name = os.environ.get("RANK_ID")
    else:  # mpirun (launch/run_mpi.sh): every process it starts is a rank
        name = os.environ.get("OMPI_COMM_WORLD_RANK")
        if name is None:
            return None
    return Path(where) / f"rank_{name or f'pid{os.getpid()}'}.json"


def active() -> bool:
    """True in a worker started by a launcher that reads the records (run_8p.sh's msrun, run_mpi.sh's mpirun)."""
    return _record_path() is not None


def write(state: str, **fields) -> None:
    """Record this worker's ``state`` (and e.g. ``code``, ``line``) for the launcher; never raises."""
    path = _record_path()
    if path is None:
        return
    rank = path.stem.removeprefix("rank_")  # RANK_ID (msrun) or OMPI_COMM_WORLD_RANK (mpirun); "pid<N>" if unknown
    record = {
        "rank": int(rank) if rank and rank.isdigit() else None,
        "pid": os.getpid(),
        "time": time.time(),
        "state": state,
        **fields,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def read_all(status_dir: str | Path) -> dict[int, dict]:
    """pid -> the newest record of every worker that wrote one into ``status_dir`` (unreadable files skipped)."""
    out = {}
    for path in Path(status_dir).glob("rank_*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            out[int(record["pid"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out
