"""Command-line plumbing shared by ``python -m ddpm_dist.train`` and every script in ``tools/``.

The project's contract for bad input: ONE line ``error: <message>`` on stderr and exit status 2, never a traceback
or argparse's multi-line usage block. ``Parser`` makes argparse follow it, ``fail`` prints such a line, and
``first_line`` turns an exception into the one line worth showing. ``reports_exit`` wraps an entry point's ``main``
so that, as an msrun worker, it also tells the launcher its exit status and that line (``ddpm_dist/job_status.py``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable

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


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    for line in str(err).strip().splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__


def report(work: Callable[[], str], *, errors: tuple[type[BaseException], ...]) -> int:
    """The body of a one-shot tool's ``main``: quiet MindSpore (``device.prepare_env``) before ``work`` imports it,
    run ``work``, print the line it returns and return 0; an exception in ``errors`` becomes one ``error:`` line on
    stderr and status 2."""
    from .device import prepare_env

    prepare_env()
    try:
        line = work()
    except errors as err:
        return fail(first_line(err))
    print(line)
    return 0
