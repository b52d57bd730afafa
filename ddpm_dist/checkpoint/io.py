"""Checkpoint files: the one reader, the one strict loader, the one rule for the embedded config, the output checks.

- :func:`read`: a MindSpore ``.ckpt`` (its CRC verified) or a ``.safetensors`` file -> :class:`Contents`: the arrays
  (``name -> ndarray``, dtypes and shapes as stored) and the metadata (the ``meta.*`` entries as plain Python values,
  without the prefix). Every reader goes through it: the store (``latest``, ``newer_checkpoints``, rebuilding the
  index), the trainer's resume, inference checkpoints, the FID Inception weights and ``bench/output_hashes.py``.
- :func:`load_into`: arrays into a Cell, strictly: every parameter, nothing else, every shape, or nothing is loaded.
- :func:`embedded_config`: the config a checkpoint carries (``meta.config``), read by one rule (stated there).
- :func:`check_output` before any work, then :func:`write_weights`: an output path is refused when it exists (without
  ``overwrite``) or cannot be written; a weights file is written through a temporary file, fsync and rename.

Errors are :class:`CheckpointError`, one line naming the file; :class:`CheckpointUnreadable` when a file exists but
cannot be read (permission, I/O error): that is not corruption, so the store never skips such a file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..config import Config, ConfigError, from_dict
from ..errors import UserError, first_line
from ..storage import probe_writable

SUFFIXES = (".ckpt", ".safetensors")
EMBEDDED_SECTIONS = ("model", "diffusion", "data")  # what the weights are and what they make (see embedded_config)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


class CheckpointUnreadable(CheckpointError):
    """A checkpoint that exists but cannot be read (permission denied, an I/O error): not corrupt, so never skipped."""


@dataclass(frozen=True)
class Contents:
    """What a checkpoint file holds. ``arrays``: ``name -> ndarray`` of every non-meta entry (weights, optimizer and
    EMA state), dtypes and shapes as stored (empty when read with ``meta_only``); ``meta``: the ``meta.*`` entries as
    plain Python values under their names without ``meta.`` (``step``: int, ``config``: YAML text, ...)."""

    path: Path
    arrays: dict
    meta: dict


# ------------------------------------------------------------------------------------------------ reading
def read(path, *, meta_only: bool = False) -> Contents:
    """Read a ``.ckpt`` (CRC verified) or ``.safetensors`` checkpoint. ``meta_only``: skip the arrays (the CRC is still
    verified). Raises CheckpointError: not found, not a regular file, another suffix, corrupt (a bad CRC, truncated,
    not a checkpoint); CheckpointUnreadable: permission denied or an I/O error, before or while reading."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CheckpointError(f"{path}: not a checkpoint file")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as err:
        raise _unreadable(path, err) from None
    if path.suffix not in SUFFIXES:
        raise CheckpointError(f"{path}: expected a MindSpore .ckpt or a .safetensors file")
    problem = _access_problem(path, read_all=False)  # before MindSpore, which logs its own lines about it
    if problem is not None:
        raise _unreadable(path, problem)
    try:
        if path.suffix == ".safetensors":
            return _read_safetensors(path, meta_only=meta_only)
        return _read_ckpt(path, meta_only=meta_only)
    except CheckpointError as err:
        problem = _access_problem(path, read_all=True)  # an I/O error half-way is not corruption either
        if problem is not None:
            raise _unreadable(path, problem) from None
        raise err from None


def _read_ckpt(path: Path, *, meta_only: bool) -> Contents:
    import mindspore as ms

    choice = (lambda name: name.startswith("meta.")) if meta_only else None
    try:
        params = ms.load_checkpoint(str(path), crc_check=True, choice_func=choice)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({first_line(err)})") from None
    arrays = {k: v.asnumpy() for k, v in params.items() if not k.startswith("meta.") and hasattr(v, "asnumpy")}
    return Contents(path=path, arrays=arrays, meta=meta_of(params))


def _read_safetensors(path: Path, *, meta_only: bool) -> Contents:
    """safetensors has no CRC; its header is checked. Its metadata is text: ``meta.step`` is made an int again."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = {k[5:]: v for k, v in (f.metadata() or {}).items() if k.startswith("meta.")}
            arrays = {} if meta_only else {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
    if "step" in meta:
        meta["step"] = int(meta["step"])
    return Contents(path=path, arrays=arrays, meta=meta)


def meta_of(params: dict) -> dict:
    """The ``meta.*`` entries of MindSpore's ``load_checkpoint`` output as plain Python values, without the prefix."""
    out = {}
    for name, value in params.items():
        if name.startswith("meta."):
            v = value.asnumpy() if hasattr(value, "asnumpy") else value
            out[name[5:]] = v.item() if hasattr(v, "item") and getattr(v, "size", 0) == 1 else v
    return out


def _access_problem(path: Path, *, read_all: bool) -> OSError | None:
    """The OSError met opening ``path`` (and, with ``read_all``, reading it to the end), or None. Tells "cannot read
    the file" (permission, I/O error) apart from "the bytes are bad", which MindSpore reports alike."""
    try:
        with open(path, "rb") as f:
            while read_all and f.read(1 << 22):
                pass
    except FileNotFoundError:
        return None  # gone: reported as "not found" by the caller
    except OSError as err:
        return err
    return None


def _unreadable(path: Path, err: OSError) -> CheckpointUnreadable:
    denied = err.errno in (errno.EACCES, errno.EPERM)
    todo = "make it readable by this user (or run as its owner)" if denied else "check the storage"
    return CheckpointUnreadable(
        f"{path}: cannot read this checkpoint ({err.strerror or err}); it is not corrupt, so nothing is skipped or "
        f"overwritten: {todo}, then run again"
    )


# ------------------------------------------------------------------------------------------------ loading
def load_into(net, arrays: Mapping[str, np.ndarray], *, source) -> None:
    """Set every parameter of the Cell ``net`` from ``arrays`` (``name -> ndarray``; values copied, dtypes kept).

    Strict: when a parameter of ``net`` has no entry, an entry names no parameter of ``net``, or a shape differs,
    nothing is loaded and CheckpointError names ``source`` and the first names of each kind.
    """
    import mindspore as ms

    params = net.parameters_dict()
    missing = [name for name in params if name not in arrays]
    unexpected = [name for name in arrays if name not in params]
    shapes = [
        f"{name} {tuple(arrays[name].shape)}, the network's {tuple(p.shape)}"
        for name, p in params.items()
        if name in arrays and tuple(arrays[name].shape) != tuple(p.shape)
    ]
    kinds = (("missing parameters", missing), ("unexpected entries", unexpected), ("other shapes", shapes))
    problems = [f"{len(names)} {what} (e.g. {', '.join(names[:3])})" for what, names in kinds if names]
    if problems:
        raise CheckpointError(f"{source}: does not fit the network: {'; '.join(problems)}")
    values = {name: ms.Parameter(ms.Tensor(arrays[name]), name=name) for name in params}
    not_loaded, _ = ms.load_param_into_net(net, values, strict_load=True)
    if not_loaded:  # every name was checked above: an internal invariant
        raise CheckpointError(f"{source}: parameters not loaded: {not_loaded[:3]}")


# ------------------------------------------------------------------------------------------------ embedded config
def embedded_config(meta: dict, *, source) -> Config:
    """The config a checkpoint carries (``meta.config``, YAML), read by one rule for every reader - sampling,
    conversion, export and the trainer's resume check:

    - ``model``, ``diffusion`` and ``data`` (what the weights are and what they make) are read like a config file:
      a key this version does not know is an error naming the key and the file (weights read without an option this
      version cannot honour would be another network); a key the checkpoint lacks - written before the key existed -
      takes its default; a value out of range is an error.
    - The other sections (``train``, ``run``, ``eval``: how it was trained) are not read: the Config holds the
      defaults there. :func:`embedded_value` gives one of their values as written, for messages only.

    Raises CheckpointError (one line naming ``source``) when ``meta.config`` is missing, not YAML, or breaks the rule.
    """
    sections = _embedded_sections(meta, source=source)
    try:
        return from_dict(
            {k: v for k, v in sections.items() if k in EMBEDDED_SECTIONS},
            source=f"{source} (meta.config)",
            training=False,
        )
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def embedded_value(meta: dict, key: str, *, source):
    """The value of ``key`` (e.g. ``train.global_batch``) as written in ``meta.config``, None when it has none; not
    validated, so for messages only (see :func:`embedded_config`)."""
    section, _, name = key.partition(".")
    values = _embedded_sections(meta, source=source).get(section)
    return values.get(name) if isinstance(values, dict) else None


def _embedded_sections(meta: dict, *, source) -> dict:
    text = meta.get("config")
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"{source}: no embedded config (meta.config)")
    try:
        sections = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CheckpointError(f"{source}: unreadable embedded config ({first_line(err)})") from None
    if not isinstance(sections, dict):
        raise CheckpointError(f"{source}: unreadable embedded config (not a mapping of config sections)")
    return sections


# ------------------------------------------------------------------------------------------------ writing
def check_output(dst, *, overwrite: bool, directory: bool = False) -> Path:
    """Refuse the output path ``dst`` before any work is done: a file whose name does not end in ``.ckpt`` or
    ``.safetensors`` (unless ``directory``), one that exists (unless ``overwrite``; a ``directory`` output must then
    be a directory), or a place that cannot be written (a probe file is written beside it and removed: a full disk is
    found too). Returns ``dst`` as a Path; raises CheckpointError naming it."""
    dst = Path(dst)
    if not directory and dst.suffix not in SUFFIXES:
        raise CheckpointError(f"{dst}: the output name must end in .ckpt or .safetensors")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: exists; use --overwrite to replace it")
    if directory and dst.exists() and not dst.is_dir():
        raise CheckpointError(f"{dst}: exists and is not a directory")
    try:
        probe_writable(dst.parent)
    except OSError as err:
        raise CheckpointError(f"{dst}: cannot write there ({err.strerror or first_line(err)})") from None
    return dst


def write_weights(dst, arrays: dict, meta: dict) -> Path:
    """Write ``name -> ndarray`` weights plus ``meta.*`` entries to ``dst`` (``.ckpt``, CRC-checked, or
    ``.safetensors``, whose string metadata takes the meta entries) through a temporary file, fsync and rename: an
    error leaves no ``dst``. Raises CheckpointError."""
    import mindspore as ms

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")  # MindSpore insists on the suffix
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.suffix == ".safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, str(tmp), metadata={k: str(v) for k, v in meta.items()})
        else:
            params = [{"name": k, "data": ms.Tensor(v)} for k, v in arrays.items()]
            ms.save_checkpoint(params, str(tmp), append_dict=meta, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except (OSError, RuntimeError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {dst}: {first_line(err)}") from None
    return dst
