"""One writer per run directory: an exclusive ``flock`` on ``<run.out_dir>/.lock``.

The writing process (rank 0: the only one that writes ``run.out_dir``) holds the lock for the run's life. The OS
releases it when the process ends, however it ends (exit, exception, SIGKILL, OOM killer), so a stale lock cannot
block the next run; the file itself stays (it holds the last holder's pid and host, for the message a second run
prints). A second run into the same directory gets :class:`RunDirInUse` (one line, exit 2) before it reads or
writes anything there. Without a lock two runs overwrote each other's ``step_N`` files and one died on the other's
temporary file.

``flock`` locks are per open file: they work between processes on one machine, and on network file systems whose
client forwards them (NFSv4, Lustre with ``flock``). Where the file system refuses locks the run goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from ..logging import warn
from . import CheckpointError

LOCK_NAME = ".lock"


class RunDirInUse(CheckpointError):
    """Another live process holds the run directory's lock; the message names the directory and the holder."""


class RunLock:
    """The lock of ``out_dir`` (not taken until :meth:`acquire`)."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self, *, create: bool) -> bool:
        """Take the lock; True when held afterwards. With ``create=False`` a missing run directory is left alone
        (False): nothing is created before the run's set-up checks passed. Raises RunDirInUse."""
        if self._file is not None:
            return True
        if not create and not self.out_dir.is_dir():
            return False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the run's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                f.close()
                warn(f"cannot lock {self.path} ({err.strerror}); make sure no other run writes to {self.out_dir}")
                return False
            f.seek(0)
            holder = f.read().strip() or "a process that has not written its pid yet"
            f.close()
            raise RunDirInUse(
                f"run.out_dir {self.out_dir} is in use by another run ({holder}); wait for it to end or stop it, "
                "or use another run.out_dir"
            ) from None
        try:  # who holds it, for a second run's message; best effort (a full disk is reported by the set-up probe)
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
        except OSError:
            pass
        self._file = f
        return True

    def release(self) -> None:
        """Give the lock up (also done by the OS when the process ends)."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
