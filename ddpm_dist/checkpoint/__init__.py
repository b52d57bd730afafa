"""Self-describing, atomic training checkpoints.

A checkpoint is one MindSpore ``.ckpt`` file (written with a CRC, verified by :func:`.io.read`) holding every
parameter of the train step - network weights, Adam moments and step, ``ema.*`` weights and ``ema.updates``, the
loss scale and its counter - plus metadata: ``meta.step``, ``meta.images_seen``, ``meta.world_size``, ``meta.config``
(the resolved config as YAML), ``meta.kind`` and the MindSpore and ddpm-dist versions.

Files go to ``<run>/checkpoints/step_<N>.ckpt`` via a temporary name, fsync and rename; then ``index.json`` (also
replaced atomically) lists the complete checkpoints, oldest first. ``latest`` reads the index only: a file that is
not listed - a save killed half-way - is never picked. The step is read from the file's metadata, never its name.

The index is untrusted input: only entries naming a plain ``step_<8 digits>.ckpt`` file inside the checkpoint
directory are ever read or deleted. An index that cannot be read (damaged, not a list, a bad entry), one that
contradicts the files (an empty list beside checkpoint files; an entry whose step is not its file name's step) - or a
missing one beside checkpoint files - is rebuilt from the files themselves (each carries its step and a CRC), so a
damaged index can never send a run back to step 0 to overwrite its checkpoints; when no file verifies,
``CheckpointError`` names the index and the way out. Every temporary a save can leave (ours, MindSpore's ``.tmp``, the
index's) is removed when the save fails and before the next save starts.

What may be overwritten or deleted, and what is never skipped:

- A checkpoint that exists but cannot be read for another reason than its content - permission denied, an I/O
  error - raises :class:`CheckpointUnreadable` (never "skipped as corrupt": the run stops, the files stay).
- ``latest`` falls back to an older checkpoint only when the newer ones are corrupt (CRC, truncation) *and* an older
  one loads; when none loads it raises, so a run never starts over on top of them.
- A save never deletes (retention) a checkpoint newer than the one it writes, and refuses to write at all while the
  index lists a newer checkpoint that loads (:func:`newer_checkpoints`): resuming an older step (another
  ``train.global_batch``, ``train.resume=<older file>``, ``train.resume=none``) can never overwrite newer work.

Asynchronous saves (``train.async_save``) go through the same :func:`save`: the trainer takes a snapshot
(:class:`HostCopy`: a host copy of every parameter, made at the step boundary) and hands it to a
:class:`~.background.BackgroundWriter` thread, so the rules above hold unchanged; a kill during that write leaves
what a kill during a synchronous save leaves (a temporary the next save removes, the previous checkpoints and index
intact).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import warnings
from pathlib import Path

from ..errors import first_line
from ..storage import fsync_dir, write_json_atomic
from .io import CheckpointError, CheckpointUnreadable, Contents, read

KIND_TRAIN = "ddpm-dist/train"
KIND_INFERENCE = "ddpm-dist/inference"
INDEX = "index.json"
_NAME = re.compile(r"step_\d{8}\.ckpt")  # the only file names an index entry may hold
_TEMPORARIES = (".step_*.partial.ckpt", ".step_*.partial.tmp", f".{INDEX}.partial-*")


def checkpoint_dir(out_dir: str) -> Path:
    return Path(out_dir) / "checkpoints"


def read_index(ckpt_dir: Path) -> list[dict]:
    """The complete checkpoints of ``ckpt_dir`` as ``[{"file": name, "step": int}]``, oldest first.

    Reads ``index.json``; rebuilds the list from the checkpoint files' own metadata (with a warning, once per
    process) when the index is damaged, contradicts the files, or is missing beside checkpoint files. Raises
    CheckpointError when it can do neither, CheckpointUnreadable when the index, the directory or a file to rebuild
    from cannot be read (permission, I/O error).
    """
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / INDEX
    files = stored_files(ckpt_dir)
    problem = None
    if path.is_file():
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            problem = _index_problem(entries) or _contradiction(entries, files)
        except ValueError as err:
            problem = f"unreadable ({first_line(err)})"
        except OSError as err:  # permission, I/O: not damage, and a rebuild could not write the index either
            raise CheckpointUnreadable(f"{path}: cannot read the checkpoint index ({err.strerror or err})") from None
        if problem is None:
            return sorted(({"file": e["file"], "step": e["step"]} for e in entries), key=lambda e: e["step"])
    if not files:
        return []
    rebuilt = _rebuild(files)
    if not rebuilt:
        raise CheckpointError(
            f"{path} is {problem or 'missing'} and none of the {len(files)} step_*.ckpt files beside it passes its "
            "CRC; move the checkpoints away to start afresh, or use a new run.out_dir"
        )
    warnings.warn(
        f"{path} is {problem or 'missing'}; rebuilt from {len(rebuilt)} checkpoint file(s)' own metadata", stacklevel=1
    )
    return rebuilt


def stored_files(ckpt_dir: Path) -> list[Path]:
    """The plain ``step_<8 digits>.ckpt`` files in ``ckpt_dir`` (listed in the index or not), by name. Raises
    CheckpointUnreadable when the directory exists but cannot be listed."""
    try:
        names = os.listdir(ckpt_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as err:
        raise CheckpointUnreadable(f"{ckpt_dir}: cannot list the checkpoints ({err.strerror or err})") from None
    return [Path(ckpt_dir) / n for n in sorted(names) if _NAME.fullmatch(n)]


def _index_problem(entries) -> str | None:
    """Why parsed index JSON is not a valid index, or None."""
    if not isinstance(entries, list):
        return "not a list of checkpoints"
    for e in entries:
        ok = isinstance(e, dict) and isinstance(e.get("file"), str) and _NAME.fullmatch(e["file"])
        if not ok or not isinstance(e.get("step"), int) or isinstance(e["step"], bool) or e["step"] < 0:
            return f"damaged (entry {json.dumps(e)[:80]} is not a step_<N>.ckpt file name with its step)"
    if len({e["file"] for e in entries}) != len(entries) or len({e["step"] for e in entries}) != len(entries):
        return "damaged (a file or a step is listed twice)"
    return None


def _contradiction(entries: list[dict], files: list[Path]) -> str | None:
    """How a well-formed index contradicts the files beside it, or None. A save always lists the file it wrote, as
    ``step_<its step>.ckpt``: an empty list beside checkpoint files, or an entry whose step is not its file name's,
    was not written by a save. (A file the index does not list is normal: a save killed before the index was written.)
    """
    if not entries and files:
        return f"an empty list beside {len(files)} step_*.ckpt file(s)"
    for e in entries:
        if e["file"] != _file_name(e["step"]):
            return f"contradicting its files (entry {json.dumps(e)[:80]}: that file holds another step)"
    return None


def _file_name(step: int) -> str:
    return f"step_{step:08d}.ckpt"


def _rebuild(files: list[Path]) -> list[dict]:
    """Index entries for the files that pass their CRC and carry a training step, oldest first. A file that cannot be
    read (permission, I/O error) raises CheckpointUnreadable; a corrupt one is left out."""
    entries = []
    for f in files:
        try:
            meta = read(f, meta_only=True).meta
        except CheckpointUnreadable:
            raise
        except CheckpointError:
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


# Tests only: seconds to sleep between writing a checkpoint and renaming it into place, so that a test can kill a
# (background) write deterministically half-way; "SECONDS@STEP" slows only the write of that step. Never set in a
# real run.
SLOW_WRITE_ENV = "DDPM_DIST_TEST_SLOW_WRITE"


class HostCopy:
    """Host buffers for snapshots of one Cell's parameters, kept and reused from one save to the next.

    :meth:`take` returns ``[{"name", "data": Tensor}]`` - what :func:`save` writes for the Cell itself: same names,
    values and dtypes - for a background write while training goes on. It must run at a step boundary:
    ``Parameter.asnumpy()`` on CPU is a *view* of the parameter's memory, which the compiled step updates in place
    (measured: a view taken before a step shows the step's update), so every array is copied here, before the next
    step runs. The buffers are reused, so the caller makes sure the write of the previous snapshot has finished
    (the trainer's BackgroundWriter does: one write at a time). Measured on the paper U-Net's 572 MB of state (2-core
    CPU): 0.63 s into freshly allocated arrays (page faults), 0.075 s into these warm buffers; ``Tensor.from_numpy``
    wraps them without another copy (``Tensor(array)`` copies again: 0.3 s per 200 MB).
    """

    def __init__(self) -> None:
        self._buffers: dict = {}

    def take(self, cell) -> list[dict]:
        import mindspore as ms
        import numpy as np

        out, seen = [], set()
        for _, param in cell.parameters_and_names():
            if param.name in seen:
                continue
            seen.add(param.name)
            src = param.asnumpy()
            buf = self._buffers.get(param.name)
            if buf is None or buf.shape != src.shape or buf.dtype != src.dtype:
                buf = self._buffers[param.name] = np.empty_like(src)
            np.copyto(buf, src)
            out.append({"name": param.name, "data": ms.Tensor.from_numpy(buf)})
        return out


def snapshot(cell) -> list[dict]:
    """A one-off host copy of every parameter of ``cell`` (see :class:`HostCopy`, which reuses its buffers)."""
    return HostCopy().take(cell)


def _test_slow_write(step: int) -> None:
    delay, _, only = os.environ.get(SLOW_WRITE_ENV, "").partition("@")
    if delay and (not only or int(only) == step):
        time.sleep(float(delay))


def save(cell, ckpt_dir: Path, *, step: int, meta: dict, keep_last: int = 3, milestone_every: int = 0) -> Path:
    """Write ``cell``'s parameters (a Cell, or its :func:`snapshot`) and ``meta`` as the checkpoint of ``step``; prune
    old ones. Returns the path. Safe to call from a background thread (one save at a time per directory).

    On any error (disk full, unwritable directory) the temporary file is removed, the index is untouched, and a
    CheckpointError naming the directory is raised: the previous checkpoints stay intact.
    """
    import mindspore as ms

    import ddpm_dist

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / _file_name(step)
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
        newer = newer_checkpoints(ckpt_dir, step, entries=entries)
        if newer:
            raise CheckpointError(
                f"refusing to write {final}: {ckpt_dir} holds {newer[-1]['file']} (step {newer[-1]['step']}), newer "
                "than this run's step; a run continues from the newest checkpoint or goes to a new run.out_dir"
            )
        with _quiet_mindspore_log():
            ms.save_checkpoint(cell, str(tmp), append_dict=append, crc_check=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _test_slow_write(step)
        os.replace(tmp, final)
        fsync_dir(ckpt_dir)
        entries = [e for e in entries if e["step"] != step] + [{"file": final.name, "step": int(step)}]
        entries.sort(key=lambda e: e["step"])
        kept, dropped = _retain(entries, keep_last=keep_last, milestone_every=milestone_every, saved_step=step)
        write_json_atomic(ckpt_dir / INDEX, kept)  # first: an index never lists a file already deleted
        for e in dropped:
            (ckpt_dir / e["file"]).unlink(missing_ok=True)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        _remove_temporaries(ckpt_dir)
        raise CheckpointError(f"could not write checkpoint {final}: {first_line(err)}") from None
    return final


def _retain(
    entries: list[dict], *, keep_last: int, milestone_every: int, saved_step: int
) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): the newest ``keep_last`` entries up to ``saved_step`` (the one just written), the milestones,
    and anything newer than ``saved_step`` (only a corrupt file can be there, see ``save``; it is never deleted here)
    are kept. Entries come from ``read_index``, so every file name is a plain ``step_<N>.ckpt``: nothing else can ever
    be deleted."""
    upto = [e for e in entries if e["step"] <= saved_step]
    keep_set = {e["file"] for e in upto[-keep_last:]}
    kept, dropped = [], []
    for e in entries:
        milestone = milestone_every and e["step"] % milestone_every == 0
        (kept if e["file"] in keep_set or milestone or e["step"] >= saved_step else dropped).append(e)
    assert all(_NAME.fullmatch(e["file"]) and e["step"] < saved_step for e in dropped)
    return kept, dropped


def newer_checkpoints(ckpt_dir: Path, step: int, *, entries: list[dict] | None = None) -> list[dict]:
    """Index entries newer than ``step`` that must not be overwritten: every one that loads, or that cannot be
    read (permission, I/O: it may be fine). Corrupt ones (a bad CRC, truncated, missing) are not listed - a run that
    fell back past them may write over them. Oldest first; usually empty, then nothing is read."""
    entries = read_index(ckpt_dir) if entries is None else entries
    keep = []
    for e in entries:
        if e["step"] <= step:
            continue
        try:
            read(Path(ckpt_dir) / e["file"])
        except CheckpointUnreadable:
            pass
        except CheckpointError:
            continue
        keep.append(e)
    return keep


def latest(ckpt_dir: Path) -> Contents | None:
    """Newest complete, readable checkpoint listed in the index, as :func:`~.io.read` returns it. A corrupt newer
    one is skipped with a warning when an older one loads; CheckpointUnreadable (permission, I/O error) is raised,
    never skipped; and when none of the listed checkpoints loads, CheckpointError says so (a run must not start over
    on top of them). None when there is no checkpoint at all."""
    entries = read_index(ckpt_dir)
    failures = []
    for entry in reversed(entries):
        try:
            found = read(Path(ckpt_dir) / entry["file"])
        except CheckpointUnreadable:
            raise
        except CheckpointError as err:
            failures.append(err)
            continue
        for err in failures:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
        return found
    if failures:
        raise CheckpointError(
            f"none of the {len(entries)} checkpoint(s) in {ckpt_dir} loads (newest: {failures[0]}); nothing was "
            "overwritten: move them away to start afresh, or use a new run.out_dir"
        )
    return None
