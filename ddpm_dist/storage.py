"""Durable files: atomic writes (temporary, fsync, rename), directory fsync, content hashes and the writability probe
run before anything is written. No MindSpore, no PyTorch."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's content, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so a rename inside it survives a crash (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` through a temporary file beside ``path``, fsync and rename: readers see the old file or the new
    one, never a partial one, and an error (e.g. a full disk) leaves no temporary file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # a write error (a full disk) names no file by itself: name the one being written
        raise OSError(err.errno, f"could not write {path}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_json_atomic(path: str | Path, data) -> None:
    """``data`` as indented JSON, written like ``write_text_atomic``."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


PROBE_BYTES = 1 << 20


def probe_writable(path: str | Path, *, nbytes: int = PROBE_BYTES) -> None:
    """Raise OSError unless a directory could be created at ``path`` (or inside it, if it is a directory) and
    ``nbytes`` written into it: a probe directory holding one fsynced file of ``nbytes`` is made and removed in the
    nearest existing ancestor, so nothing is left behind either way. The write finds a full disk (where ``mkdir``
    alone still succeeds); its error names the directory probed."""
    path = Path(path).absolute()
    base = next(p for p in (path, *path.parents) if p.exists())
    if not base.is_dir():
        raise NotADirectoryError(20, "Not a directory", str(base))
    probe = base / f".write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    probe.mkdir()
    try:
        with open(probe / "probe", "wb") as f:
            f.write(bytes(nbytes))
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, f"{err.strerror or err} (writing {nbytes >> 10} KiB into {base})") from None
    finally:
        (probe / "probe").unlink(missing_ok=True)
        probe.rmdir()
