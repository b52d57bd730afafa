"""Hang detection: a rank whose training makes no progress for ``run.step_timeout`` seconds ends itself.

A stopped process is already caught by MindSpore's cluster heartbeat (~35 s); a process that is alive but stuck - a
read on dead shared storage, a collective that never completes - is not, and would hold every other rank. The
trainer calls :meth:`Watchdog.beat` after every step; a daemon thread (MindSpore releases the GIL while a compiled
graph runs, measured: a 10 ms ticker keeps ticking through a 0.7 s step) checks that the time since the last beat
stays under the timeout. Graph compilation (before the first beat), checkpoint writes, sample grids and evaluations
are not hangs: the trainer runs them inside :meth:`Watchdog.paused`.

The timeout is either a number of seconds or ``auto``: ``max(floor, factor x the median step time)``, measured from
the steps after the first (the compile), so a 0.2 s step on a card and a 3 s step on a CPU both get a bound that a
healthy run never reaches; before a step time is known only a fixed timeout applies.

On a hang the worker prints one line naming the rank, the step and the time without progress, and ends with
:data:`EXIT_HANG` (a fault: the launcher restarts the job when ``MAX_RESTARTS`` allows).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

PEER_GRACE = 1.5  # the timeout's factor for a rank inside the train step (see Watchdog.stepping)
EXIT_HANG = 124  # as GNU timeout(1) reports a command it had to stop: a fault, never the user's input (2)


class Watchdog:
    """Ends this process (``on_hang``) when no :meth:`beat` comes for the timeout, outside :meth:`paused` blocks.

    Args:
        timeout: seconds, or None for ``auto`` (``max(floor, factor x median step time)``); 0 disables.
        rank: this worker's rank, for the message.
        floor, factor: of the automatic timeout.
        on_hang: called with the one-line message (default: print it on stderr and ``os._exit(EXIT_HANG)``).
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        *,
        timeout: float | None,
        rank: int,
        floor: float = 300.0,
        factor: float = 50.0,
        on_hang: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.fixed = timeout
        self.rank = rank
        self.floor, self.factor = float(floor), float(factor)
        self.on_hang = on_hang or _exit_hung
        self.clock = clock
        self.step = None  # the last step that finished; None before the first beat
        self._last = clock()
        self._paused = 0
        self._in_step = False
        self._resumed_since_beat = True  # the interval before the first beat (compile) is never a step time
        self._intervals: deque[float] = deque(maxlen=50)
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = None

    @property
    def enabled(self) -> bool:
        return self.fixed is None or self.fixed > 0

    def timeout(self) -> float | None:
        """The bound in force now: the fixed one, or the automatic one once a step time is known (else None)."""
        if self.fixed is not None:
            return float(self.fixed) if self.fixed > 0 else None
        if not self._intervals:
            return None
        return max(self.floor, self.factor * statistics.median(self._intervals))

    def start(self) -> Watchdog:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ddpm-watchdog", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._done.set()

    def beat(self, step: int) -> None:
        """Step ``step`` finished. The interval since the previous beat is a step time (not after the first beat,
        which follows the graph compile, and not across a paused block)."""
        with self._lock:
            now = self.clock()
            if self.step is not None and not self._resumed_since_beat:
                self._intervals.append(now - self._last)
            self.step, self._last, self._resumed_since_beat = step, now, False

    @contextlib.contextmanager
    def stepping(self):
        """The compiled step (its all-reduce): a rank waiting there for a stuck peer gets ``PEER_GRACE`` x the
        timeout, so that the stuck rank - in its data read, say - is the one that reports first and is named."""
        self._in_step = True
        try:
            yield
        finally:
            self._in_step = False

    @contextlib.contextmanager
    def paused(self):
        """A block that may take long without being a hang (checkpoint, grid, evaluation); the clock restarts after
        it."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                self._last = self.clock()
                self._resumed_since_beat = True

    def call_paused(self, fn, *args):
        """``fn(*args)`` inside :meth:`paused`; its result."""
        with self.paused():
            return fn(*args)

    def check(self) -> str | None:
        """The hang message if the timeout has passed without progress, else None (called by the thread)."""
        with self._lock:
            bound = self.timeout()
            if self._paused or self.step is None or bound is None:
                return None
            idle = self.clock() - self._last
            if idle <= bound * (PEER_GRACE if self._in_step else 1.0):
                return None
            how = f"run.step_timeout={self.fixed:g}" if self.fixed else f"run.step_timeout=auto: {bound:.0f}s"
            return (
                f"rank {self.rank}: no progress for {idle:.0f}s after step {self.step} ({how}), stuck in "
                f"{_main_thread_at()}; a stuck data read or collective (a rank waiting for a stuck peer is stuck "
                "in the train step) - ending this worker so that the job can be restarted"
            )

    def _run(self) -> None:
        while not self._done.wait(self._poll_interval()):
            message = self.check()
            if message is not None:
                self.on_hang(message)
                return

    def _poll_interval(self) -> float:
        bound = self.timeout()
        return 1.0 if bound is None else min(max(bound / 10.0, 0.2), 10.0)


def _main_thread_at() -> str:
    """Where the main thread is now: its innermost frame as ``function (file:line)``."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return "an unknown place"
    import os

    return f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})"


def _exit_hung(message: str) -> None:
    """Print the line, record it for the launcher (cause ``hang``: it sees the fault at once, not when msrun notices
    the exit), and end the process without clean-up: the main thread is stuck."""
    import os

    from .. import job_status

    print(f"error: {message}", file=sys.stderr, flush=True)
    job_status.write("exited", code=EXIT_HANG, line=f"error: {message}", cause="hang")
    os._exit(EXIT_HANG)
