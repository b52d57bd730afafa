"""One checkpoint write at a time in a background thread (``train.async_save``).

The trainer takes a host snapshot (:class:`~ddpm_dist.checkpoint.HostCopy`) at the step boundary and submits the
store's own :func:`~ddpm_dist.checkpoint.save` of it; training goes on while the thread writes. Invariants:

- One write at a time: ``submit`` first waits for the previous write (:meth:`wait`), so saves land in step order and
  the store's rules (temporary -> CRC -> fsync -> rename -> index -> retention) run exactly as in a synchronous save.
- Never lost silently: a write that fails (disk full) keeps its exception; the next :meth:`poll` (every step
  boundary), :meth:`wait` or ``submit`` raises it in the training thread, which ends the run with the store's one
  line (exit 2, as a failed synchronous save).
- The thread is not a daemon: an exit on an error in the training thread still lets the interpreter finish the
  pending write (or the store removes its temporary when the write fails) before the process ends. Only a kill
  (SIGKILL, ``os._exit``) interrupts it, and leaves what a kill during a synchronous save leaves: a temporary the next
  save removes, the previous checkpoints and their index intact.

Why not MindSpore's ``save_checkpoint(async_save="thread")`` (mindspore/train/serialization.py, 2.10): it writes
``<name>.tmp`` and renames it in a thread that the caller cannot join except by thread name, and whose exception
is only logged - a full disk would be lost silently - so nothing can fsync, rename and update the index after it
completes, nor say it failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path


class BackgroundWriter:
    """Runs one ``write() -> Path`` at a time in a thread; see the module docstring for the rules."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._outcome: tuple[int, Path | None, float, BaseException | None] | None = None

    @property
    def pending(self) -> bool:
        """True from ``submit`` until the write's outcome was collected (by ``poll`` or ``wait``)."""
        return self._thread is not None

    def submit(self, write: Callable[[], Path], *, step: int) -> None:
        """Wait for the previous write (raising its error), then start ``write`` in the background."""
        self.wait()

        def run() -> None:
            t0 = time.perf_counter()
            try:
                path, error = write(), None
            except BaseException as err:  # noqa: BLE001 - handed to the training thread, never dropped
                path, error = None, err
            self._outcome = (step, path, time.perf_counter() - t0, error)

        self._outcome = None
        self._thread = threading.Thread(target=run, name=f"ddpm-dist checkpoint of step {step}", daemon=False)
        self._thread.start()

    def poll(self) -> tuple[int, Path, float] | None:
        """(step, path, seconds) of a write that has just finished, once; None while it runs or when none is pending.
        Raises the write's error. Cheap: call it at every step boundary."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self._collect()

    def wait(self) -> tuple[int, Path, float] | None:
        """Block until the pending write (if any) finished; (step, path, seconds) or None. Raises its error."""
        if self._thread is None:
            return None
        self._thread.join()
        return self._collect()

    def _collect(self) -> tuple[int, Path, float]:
        self._thread.join()
        outcome, self._thread, self._outcome = self._outcome, None, None
        step, path, seconds, error = outcome
        if error is not None:
            raise error
        return step, path, seconds
