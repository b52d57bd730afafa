"""Command-line plumbing shared by ``python -m ddpm_dist.train`` and every script in ``tools/``.

The project's contract for bad input: ONE line ``error: <message>`` on stderr and exit status 2, never a traceback
or argparse's multi-line usage block. ``Parser`` makes argparse follow it, ``fail`` prints such a line, and
``first_line`` turns an exception into the one line worth showing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")


def fail(message: str, code: int = 2) -> int:
    """Print ``error: <message>`` on stderr; return ``code`` for ``return fail(...)`` from a ``main``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


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
