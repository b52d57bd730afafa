"""Self-describing, atomic training checkpoints.

A checkpoint is one MindSpore ``.ckpt`` file (written with a CRC so corruption is detected on load) holding every
parameter of the train step - network weights, Adam moments and step, ``ema.*`` weights and ``ema.updates``, the
loss scale and its counter - plus metadata: ``meta.step``, ``meta.images_seen``, ``meta.world_size``, ``meta.config``
(the resolved config as YAML), ``meta.kind`` and the MindSpore and ddpm-dist versions.

Files go to ``<run>/checkpoints/step_<N>.ckpt`` via a temporary name, fsync and rename; then ``index.json`` (also
replaced atomically) lists the complete checkpoints, oldest first. ``latest`` reads the index only: a file that is
not listed - a save killed half-way - is never picked. The step is read from the file's metadata, never its name.

The index is untrusted input: only entries naming a plain ``step_<8 digits>.ckpt`` file inside the checkpoint
directory are ever read or deleted. An index that cannot be read (damaged, not a list, a bad entry) - or a missing
one beside checkpoint files - is rebuilt from the files themselves (each carries its step and a CRC), so a damaged
index can never send a run back to step 0 to overwrite its checkpoints; when no file verifies, ``CheckpointError``
names the index and the way out. Every temporary a save can leave (ours, MindSpore's ``.tmp``, the index's) is
removed when the save fails and before the next save starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from pathlib import Path

from ..cli_util import first_line
from ..files import fsync_dir, write_json_atomic

KIND_TRAIN = "ddpm-dist/train"
KIND_INFERENCE = "ddpm-dist/inference"
INDEX = "index.json"
_NAME = re.compile(r"step_\d{8}\.ckpt")  # the only file names an index entry may hold
_TEMPORARIES = (".step_*.partial.ckpt", ".step_*.partial.tmp", f".{INDEX}.partial-*")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def checkpoint_dir(out_dir: str) -> Path:
    return Path(out_dir) / "checkpoints"


def read_index(ckpt_dir: Path) -> list[dict]:
    """The complete checkpoints of ``ckpt_dir`` as ``[{"file": name, "step": int}]``, oldest first.

    Reads ``index.json``; rebuilds the list from the checkpoint files' own metadata (with a warning) when the index
    is damaged or missing beside checkpoint files. Raises CheckpointError when it can do neither.
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / INDEX
    problem = None
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            problem = _index_problem(entries)
        except (OSError, ValueError) as err:
            problem = f"unreadable ({first_line(err)})"
        if problem is None:
            return sorted(({"file": e["file"], "step": e["step"]} for e in entries), key=lambda e: e["step"])
    files = sorted(p for p in ckpt_dir.glob("step_*.ckpt") if _NAME.fullmatch(p.name)) if ckpt_dir.is_dir() else []
    if not files:
        return []
    rebuilt = _rebuild(files)
    if not rebuilt:
        raise CheckpointError(
            f"{path} is {problem or 'missing'} and none of the {len(files)} step_*.ckpt files beside it passes its "
            "CRC; move the checkpoints away to start afresh, or use a new run.out_dir"
        )
    warnings.warn(
        f"{path} is {problem or 'missing'}; rebuilt from {len(rebuilt)} checkpoint file(s)' own metadata", stacklevel=2
    )
    return rebuilt


def _index_problem(entries) -> str | None:
    """Why parsed index JSON is not a valid index, or None."""
    if not isinstance(entries, list):
        return "not a list of checkpoints"
    for e in entries:
        ok = isinstance(e, dict) and isinstance(e.get("file"), str) and _NAME.fullmatch(e["file"])
        if not ok or not isinstance(e.get("step"), int) or isinstance(e["step"], bool) or e["step"] < 0:
            return f"damaged (entry {json.dumps(e)[:80]} is not a step_<N>.ckpt file name with its step)"
    return None


def _rebuild(files: list[Path]) -> list[dict]:
    """Index entries for the files that pass their CRC and carry a training step, oldest first."""
    import mindspore as ms

    entries = []
    for f in files:
        try:
            params = ms.load_checkpoint(str(f), crc_check=True, choice_func=lambda n: n.startswith("meta."))
            meta = meta_of(params)
        except (ValueError, RuntimeError, OSError, TypeError):
            continue
        if meta.get("kind") == KIND_TRAIN and isinstance(meta.get("step"), int):
            entries.append({"file": f.name, "step": int(meta["step"])})
    return sorted(entries, key=lambda e: e["step"])


def _remove_temporaries(ckpt_dir: Path) -> None:
    for pattern in _TEMPORARIES:
        for stale in ckpt_dir.glob(pattern):
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_mindspore_log():
    """MindSpore logs a CRITICAL line of its own when a save fails; our CheckpointError is the one line instead."""
    from mindspore import log as ms_log

    logger = ms_log._get_logger()  # noqa: SLF001 - MindSpore offers no public switch for this one line
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def save(cell, ckpt_dir: Path, *, step: int, meta: dict, keep_last: int = 3, milestone_every: int = 0) -> Path:
    """Write ``cell``'s parameters and ``meta`` as the checkpoint of ``step``; prune old ones. Returns the path.

    On any error (disk full, unwritable directory) the temporary file is removed, the index is untouched, and a
    CheckpointError naming the directory is raised: the previous checkpoints stay intact.
    """
    import mindspore as ms

    import ddpm_dist

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / f"step_{step:08d}.ckpt"
    tmp = ckpt_dir / f".step_{step:08d}.partial.ckpt"  # MindSpore insists on the .ckpt suffix
    append = {
        "meta.kind": KIND_TRAIN,
        "meta.step": int(step),
        "meta.mindspore_version": ms.__version__,
        "meta.ddpm_dist_version": ddpm_dist.__version__,
    }
    append.update({f"meta.{k}": v for k, v in meta.items()})
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _remove_temporaries(ckpt_dir)  # left by a save that was killed
        entries = read_index(ckpt_dir)  # before writing: a damaged index is rebuilt while the files are all there
        with _quiet_mindspore_log():
            ms.save_checkpoint(cell, str(tmp), append_dict=append, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        entries = [e for e in entries if e["step"] != step] + [{"file": final.name, "step": int(step)}]
        entries.sort(key=lambda e: e["step"])
        kept, dropped = _retain(entries, keep_last=keep_last, milestone_every=milestone_every)
        write_json_atomic(ckpt_dir / INDEX, kept)  # first: an index never lists a file already deleted
        for e in dropped:
            (ckpt_dir / e["file"]).unlink(missing_ok=True)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        _remove_temporaries(ckpt_dir)
        raise CheckpointError(f"could not write checkpoint {final}: {first_line(err)}") from None
    return final


def _retain(entries: list[dict], *, keep_last: int, milestone_every: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the newest ``keep_last`` entries and the milestones are kept. Entries come from
    ``read_index``, so every file name is a plain ``step_<N>.ckpt``: nothing else can ever be deleted."""
    keep_set = {e["file"] for e in entries[-keep_last:]}
    kept, dropped = [], []
    for e in entries:
        milestone = milestone_every and e["step"] % milestone_every == 0
        (kept if e["file"] in keep_set or milestone else dropped).append(e)
    assert all(_NAME.fullmatch(e["file"]) for e in dropped)
    return kept, dropped


def load(path) -> dict:
    """Read a checkpoint into a name -> Parameter dict, verifying its CRC. Raises CheckpointError."""
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(str(path), crc_check=True)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({first_line(err)})") from None


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


def meta_of(params: dict) -> dict:
    """The ``meta.*`` entries of a loaded checkpoint as plain Python values."""
    out = {}
    for name, value in params.items():
        if name.startswith("meta."):
            v = value.asnumpy() if hasattr(value, "asnumpy") else value
            out[name[5:]] = v.item() if hasattr(v, "item") and getattr(v, "size", 0) == 1 else v
    return out


def latest(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """Newest complete, readable checkpoint listed in the index as (path, params); corrupt ones are skipped with a
    warning (falling back to the previous one). None when there is none."""
    for entry in reversed(read_index(ckpt_dir)):
        path = Path(ckpt_dir) / entry["file"]
        try:
            return path, load(path)
        except CheckpointError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    return None
