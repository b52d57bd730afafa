"""The project's one error vocabulary. Imports nothing of ddpm_dist, so every module may import it.

:class:`UserError` is the base of every exception that means "what the user gave us cannot work": a flag, a config
key, a data set, a checkpoint, a weights file, or the place they chose to write (a full disk, a read-only folder),
or a device whose kernels cannot run this. A retry would meet it again, so every entry point turns it into one line
``error: <first line of the message>`` on stderr and exit status 2 (``cli_util.run_main``; the codes are listed in
``job_status``). Anything else that escapes is a fault: a traceback, any other non-zero status.

The library's error classes (``ConfigError``, ``DataError``, ``CheckpointError``, ``EvalError``, ...) subclass it
and keep their old built-in base (``ValueError`` or ``RuntimeError``) so existing ``except`` clauses still match.
"""

from __future__ import annotations


class UserError(Exception):
    """The user's input (or the environment they chose) is wrong; the message's first line says what and where.

    ``cause``: a short tag for the launcher's record of a worker that ended on this error (``job_status``);
    ``""`` for none."""

    cause: str = ""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message that says something (a letter or digit: MindSpore's errors open with
    a rule of dashes, and list their points as ``- ...``), or its type name when none does."""
    for line in str(err).strip().splitlines():
        text = line.strip()
        text = text[2:].strip() if text.startswith("- ") else text
        if any(ch.isalnum() for ch in text):
            return text
    return type(err).__name__


# What every entry point turns into one ``error:`` line and exit 2 (``cli_util.run_main``): the user's input, or the
# place they chose to write (an OSError: a full disk, a read-only folder, a missing file).
INPUT_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError)
