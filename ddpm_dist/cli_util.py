"""Command-line plumbing shared by ``python -m ddpm_dist.train`` and every script in ``tools/`` and ``bench/``.

The project's contract for bad input: ONE line ``error: <message>`` on stderr and exit status 2, never a traceback
or argparse's multi-line usage block. ``Parser`` makes argparse follow it, ``fail`` prints such a line, and
``run_main`` runs the body of every entry point's ``main``, turning the user errors (``errors.UserError``, and
``OSError``: a path the user named) into such a line. ``reports_exit`` wraps an entry point's ``main`` so that, as an
msrun worker, it also tells the launcher its exit status and that line (``ddpm_dist/job_status.py``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable

from .errors import INPUT_ERRORS, first_line
from .job_status import EXIT_FAULT

_LAST_ERROR: list[str] = []  # the newest line ``fail`` printed, for ``reports_exit``
_LAST_CAUSE: list[str] = []  # its cause, when the caller named one (the launcher's record; e.g. "nonfinite_loss")


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        sys.exit(fail(message))


def fail(message: str, code: int = 2, *, cause: str = "") -> int:
    """Print ``error: <message>`` on stderr; return ``code`` for ``return fail(...)`` from a ``main``. ``cause``
    goes into the launcher's record of this worker (``ddpm_dist/job_status.py``)."""
    line = f"error: {message}"
    _LAST_ERROR[:] = [line]
    _LAST_CAUSE[:] = [cause] if cause else []
    print(line, file=sys.stderr, flush=True)
    return code


def reports_exit(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate an entry point's ``main`` (returning an exit status): under the launcher, the worker records how it
    ended - the status, and the ``error:`` line ``fail`` printed (or the uncaught exception's first line) - so the
    launcher can end the job at once with that line and status (``ddpm_dist/job_status.py``). An uncaught exception
    is a fault (status 1): under the launcher its traceback is printed (into the worker's log) before the record is
    written, and the worker exits 1; elsewhere it propagates unchanged."""
    from . import job_status

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        _LAST_ERROR.clear()
        _LAST_CAUSE.clear()
        code, line = job_status.EXIT_FAULT, ""
        try:
            code = main(*args, **kwargs)
            return code
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else job_status.EXIT_FAULT)
            raise
        except BaseException as exc:
            if not job_status.active():
                raise
            # the launcher ends the job as soon as the record below appears: the traceback goes to the log first
            traceback.print_exc()
            sys.stderr.flush()
            line = f"error: {type(exc).__name__}: {first_line(exc)} (a fault; the traceback is in this worker's log)"
            raise SystemExit(code) from None
        finally:
            if code and not line:
                line = _LAST_ERROR[-1] if _LAST_ERROR else ""
            cause = {"cause": _LAST_CAUSE[-1]} if code and _LAST_CAUSE else {}
            job_status.write("exited", code=int(code or 0), line=line, **cause)

    return wrapped


"""What every entry point reports as bad input (exit 2): the library's user errors and the OS's refusal of a path the
user named (not found, no permission, a full disk)."""


def run_main(
    body: Callable[[], int | None],
    *,
    quiet_mindspore: bool = False,
    also_input: tuple[type[BaseException], ...] = (),
    one_line_faults: tuple[type[BaseException], ...] = (),
) -> int:
    """Run the body of an entry point's ``main`` and return its exit status: ``body()``'s (None counts as 0), or 2
    after one ``error:`` line on stderr for an exception in :data:`INPUT_ERRORS` (its ``cause``, if any, goes to the
    launcher's record). Every other exception propagates: a fault, with its traceback.

    ``quiet_mindspore``: set MindSpore's environment defaults (``device.prepare_env``) before ``body`` imports it.
    ``also_input``: further exception types this entry point treats as bad input (e.g. ``ValueError`` from parsing a
    file the user named). ``one_line_faults``: faults whose message says it all (a benchmark's ``BenchError``): one
    ``error:`` line and status 1, no traceback; they take precedence over the input errors."""
    if quiet_mindspore:
        from .device import prepare_env

        prepare_env()
    try:
        code = body()
    except one_line_faults as err:
        return fail(first_line(err), EXIT_FAULT)
    except (*INPUT_ERRORS, *also_input) as err:
        return fail(first_line(err), cause=getattr(err, "cause", ""))
    return 0 if code is None else code


def progress_bar(disable: bool, *, desc: str, unit: str = "step") -> Callable[[int, int], None]:
    """``update(done, total)`` drawing a tqdm bar on stderr (created on the first call, closed when done == total);
    a no-op with ``disable`` (e.g. on ranks other than 0, or ``--no-progress``)."""
    state: dict = {}

    def update(done: int, total: int) -> None:
        if disable:
            return
        if "bar" not in state:
            from tqdm import tqdm

            state["bar"] = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        state["bar"].update(done - state["bar"].n)
        if done == total:
            state["bar"].close()

    return update
