"""Self-describing, atomic training checkpoints.

A checkpoint is one MindSpore ``.ckpt`` file (written with a CRC so corruption is detected on load) holding every
parameter of the train step - network weights, Adam moments and step, ``ema.*`` weights and ``ema.updates``, the
loss scale and its counter - plus metadata: ``meta.step``, ``meta.images_seen``, ``meta.world_size``, ``meta.config``
(the resolved config as YAML), ``meta.kind`` and the MindSpore and ddpm-dist versions.

Files go to ``<run>/checkpoints/step_<N>.ckpt`` via a temporary name, fsync and rename; then ``index.json`` (also
replaced atomically) lists the complete checkpoints, oldest first. ``latest`` reads the index only: a file that is
not listed - a save killed half-way - is never picked. The step is read from the file's metadata, never its name.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .files import fsync_dir, write_json_atomic

KIND_TRAIN = "ddpm-dist/train"
KIND_INFERENCE = "ddpm-dist/inference"
INDEX = "index.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file."""


def checkpoint_dir(out_dir: str) -> Path:
    return Path(out_dir) / "checkpoints"


def read_index(ckpt_dir: Path) -> list[dict]:
    path = Path(ckpt_dir) / INDEX
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return [e for e in entries if isinstance(e, dict) and "file" in e and "step" in e]
    except (OSError, ValueError):
        warnings.warn(f"{path}: unreadable checkpoint index; ignoring it", stacklevel=2)
        return []


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
        for stale in ckpt_dir.glob(".step_*.partial.ckpt"):  # left by a save that was killed
            stale.unlink(missing_ok=True)
        ms.save_checkpoint(cell, str(tmp), append_dict=append, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        entries = [e for e in read_index(ckpt_dir) if e["step"] != step] + [{"file": final.name, "step": int(step)}]
        entries.sort(key=lambda e: e["step"])
        entries = _prune(ckpt_dir, entries, keep_last=keep_last, milestone_every=milestone_every)
        write_json_atomic(ckpt_dir / INDEX, entries)
    except (OSError, RuntimeError, ValueError) as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write checkpoint {final}: {err}") from err
    return final


def _prune(ckpt_dir: Path, entries: list[dict], *, keep_last: int, milestone_every: int) -> list[dict]:
    keep = entries[-keep_last:]
    keep_set = {e["file"] for e in keep}
    kept = []
    for e in entries:
        milestone = milestone_every and e["step"] % milestone_every == 0
        if e["file"] in keep_set or milestone:
            kept.append(e)
        else:
            (ckpt_dir / e["file"]).unlink(missing_ok=True)
    return kept


def load(path) -> dict:
    """Read a checkpoint into a name -> Parameter dict, verifying its CRC. Raises CheckpointError."""
    import mindspore as ms

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(str(path), crc_check=True)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({first})") from None


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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"could not write {dst}: {first}") from None
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
