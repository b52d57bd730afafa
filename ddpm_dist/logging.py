"""Rank-aware console output and the TensorBoard writer. Only rank 0 prints progress or writes events."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

from .errors import UserError
from .images import grid_image


def info(msg: str, *, rank: int = 0) -> None:
    """One line to stdout from rank 0 only (other ranks stay quiet)."""
    if rank == 0:
        print(msg, flush=True)


def warn(msg: str, *, rank: int | None = None) -> None:
    """One line to stderr from any rank: ``warning: <msg>``, or ``warning: rank <rank>: <msg>`` when ``rank`` is given
    (pass it in a distributed run, where every worker may warn)."""
    where = "" if rank is None else f"rank {rank}: "
    print(f"warning: {where}{msg}", file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressLine:
    """One concise line per log interval: step, loss, lr, scale, images/s and ETA."""

    def __init__(self, *, total_steps: int, start_step: int, rank: int):
        self.total = total_steps
        self.rank = rank
        self.t0 = time.perf_counter()
        self.start = start_step

    def __call__(self, step: int, scalars: dict) -> None:
        if self.rank != 0:
            return
        done = step - self.start
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done > 0 else 0.0
        parts = [f"step {step}/{self.total}", f"loss {scalars.get('train/loss', float('nan')):.4f}"]
        if "train/lr" in scalars:
            parts.append(f"lr {scalars['train/lr']:.2e}")
        if "train/loss_scale" in scalars:
            parts.append(f"scale {scalars['train/loss_scale']:.0f}")
        if "perf/images_per_sec" in scalars:
            parts.append(f"{scalars['perf/images_per_sec']:.1f} img/s")
        if scalars.get("train/skipped_steps"):
            parts.append(f"skipped {scalars['train/skipped_steps']:.0f}")
        parts.append(f"eta {format_duration(eta)}")
        print(" | ".join(parts), flush=True)


class TensorBoardError(UserError, RuntimeError):
    """The events file cannot be written (e.g. the disk is full); one line naming the directory."""


def _import_summary_writer():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX's writer module imports torch whenever it is installed, only to accept torch tensors as values. In a
    MindSpore worker that costs ~4 s of start-up and loads a second framework with its own OpenMP runtime into the
    process. We pass numpy values only, so torch is hidden for the duration of the import (``sys.modules[name] = None``
    makes ``import name`` raise ImportError, which tensorboardX handles), unless the process imported it already.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class TensorBoard:
    """tensorboardX writer under ``<out_dir>/tb`` on rank 0, made at the first write; a no-op elsewhere.

    tensorboardX writes from a thread of its own, so a full disk would end in tracebacks from that thread and again
    at exit. Here a write error of that thread is recorded instead (see ``_watch_writer_thread``), the next call
    raises one TensorBoardError, and ``close`` never raises.
    """

    def __init__(self, out_dir: str, *, rank: int):
        self.writer = None
        self.logdir = Path(out_dir) / "tb"
        self.error: OSError | None = None
        self._pending = rank == 0  # the writer (and <out_dir>/tb) is made at the first write, not here: a run that
        # fails during set-up leaves no directory behind

    def _open(self) -> None:
        self._pending = False
        SummaryWriter = _import_summary_writer()
        _watch_writer_thread(self)
        try:
            # A long queue: with the default (10) a full queue behind a writer thread that died would block forever.
            self.writer = SummaryWriter(logdir=str(self.logdir), flush_secs=30, max_queue=100_000)
        except OSError as err:
            raise TensorBoardError(f"could not write TensorBoard events to {self.logdir}: {err}") from None

    def _call(self, fn, *args, **kwargs) -> None:
        if self._pending:
            self._open()
        if self.writer is None:
            return
        try:
            if self.error is None:
                fn(*args, **kwargs)
        except OSError as err:
            self.error = err
        if self.error is not None:
            err, self.error = self.error, None
            self.close()
            raise TensorBoardError(f"could not write TensorBoard events to {self.logdir}: {err}") from None

    def scalars(self, values: dict, step: int) -> None:
        for tag, value in values.items():
            self._call(lambda t, v: self.writer.add_scalar(t, float(v), step), tag, value)

    def images(self, tag: str, images: np.ndarray, step: int, *, nrow: int | None = None) -> None:
        """``images``: float32 [N, C, H, W] in [-1, 1], shown as one grid of ``nrow`` per row (see
        ``images.grid_image``)."""
        self._call(lambda: self.writer.add_image(tag, grid_image(images, nrow=nrow), step, dataformats="HWC"))

    def text(self, tag: str, value: str, step: int = 0) -> None:
        self._call(lambda: self.writer.add_text(tag, value, step))

    def flush(self) -> None:
        self._call(lambda: self.writer.flush())

    def close(self) -> None:
        """Close the writer; never raises (a write error was reported by the call that met it)."""
        self._pending = False
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            writer.close()
        except OSError:
            # tensorboardX's atexit hook would retry the failed flush and print a traceback: mark its writers closed.
            # Its event queue is a multiprocessing.Queue whose reader (the writer thread) is dead: events still in the
            # queue's pipe would make the interpreter wait for them at exit forever, so that wait is cancelled.
            for file_writer in (getattr(writer, "all_writers", None) or {}).values():
                event_writer = getattr(file_writer, "event_writer", None)
                if event_writer is None:
                    continue
                queue = getattr(event_writer, "_event_queue", None)
                if queue is not None:
                    queue.cancel_join_thread()
                event_writer._closed = True


_WATCHED: list = []


def _watch_writer_thread(board: TensorBoard) -> None:
    """Route an OSError raised in tensorboardX's writer thread to ``board.error`` instead of a traceback.

    Installed once per process (on rank 0, when the first writer is made); other threads and other errors go to
    the previous hook unchanged."""
    _WATCHED[:] = [board]
    if getattr(threading.excepthook, "_ddpm_dist", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if issubclass(args.exc_type, OSError) and type(args.thread).__name__ == "_EventLoggerThread" and _WATCHED:
            _WATCHED[0].error = args.exc_value
            return
        previous(args)

    hook._ddpm_dist = True
    threading.excepthook = hook
