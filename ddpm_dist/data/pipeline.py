"""The training input pipeline: a prepared data set (MindRecord + manifest) -> infinite (x0, t, noise) batches.

Sharding (identical on every rank, whatever the world size):

- Epoch ``e`` has one global permutation of the N sample indices, from ``np.random.default_rng([seed, 0, e])``.
- ``steps_per_epoch = N // global_batch``. The last ``N % global_batch`` positions of each epoch's permutation are
  dropped, so no sample is repeated within an epoch and every step has a full global batch (a different permutation
  each epoch drops different samples). ``MindDataset(num_shards=W, shard_id=r)`` instead gives every shard
  ceil(N / W) samples by wrapping around (or ``padded_sample`` padding), repeating some samples; we do not use its
  sharding, only its reader with an explicit index list.
- Global step ``s`` is epoch ``e, j = divmod(s, steps_per_epoch)`` and covers permutation positions
  ``[j * GB, (j + 1) * GB)``; rank ``r`` takes the positions ``p`` with ``p % world_size == r``. So the union of the
  ranks' batches of a step is the same set of samples for any world size, and rank ``r``'s rows are rows
  ``r::world_size`` of the one-rank batch.
- The sample at global position ``g = e * N + p`` draws its flip, ``t`` and ``noise`` from
  ``np.random.default_rng([seed, 1, g])``: identical for any world size and after a resume, different for every sample.
  A class-conditional model (``model.num_classes`` K > 0) also gets the sample's label, replaced by K ("no label")
  when the same generator's next uniform draw is below ``train.label_dropout`` (so an unconditional run draws exactly
  what it always did, and the dropped samples are as independent of the world size and resumes as t and the noise).

Resume: ``start_step`` is the number of global steps already done; the iterator then yields exactly the batches an
uninterrupted run yields from that step on. A different world size resumes exactly too, as long as ``global_batch``
is unchanged (the batches depend on the global step only). After changing ``global_batch`` the trainer continues at
the checkpoint's own step (never going back, which would overwrite newer checkpoints): the batches are then those of
the new ``global_batch`` at that step, so the sample order differs from a run that kept one batch size.

Set-up checks (one DataError line each, before any training): the manifest and its files (:func:`read_manifest`),
the record count of every file against the manifest (an edited count would send MindSpore past the end of a file),
``num_parallel_workers`` against the CPUs MindSpore's pipeline accepts, the open-file limit against the descriptors
the reader will hold (:func:`ensure_open_files`). A data set removed while training runs is a DataError at the next
chunk, naming the missing file.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_dist.config import per_worker_batch
from ddpm_dist.data import FORMAT_VERSION, MANIFEST_NAME, DataError
from ddpm_dist.errors import first_line
from ddpm_dist.storage import sha256_file

_CHUNK_SAMPLES = 1 << 16  # one MindDataset reads up to this many of the rank's samples (possibly across epochs)


# --------------------------------------------------------------------------------------------------- manifest


def read_manifest(path: str) -> dict:
    """Read and check ``manifest.json`` of a prepared data set (``path`` is its directory or the manifest itself).

    Returns the manifest with an added ``root`` (absolute directory). Raises DataError if it is missing or corrupt, or
    if a listed file is missing or has the wrong size. Checksums are not verified here (see :func:`verify_checksums`).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data set not found: {path} (prepare one with tools/prepare_data.py)")
    file = p / MANIFEST_NAME if p.is_dir() else p
    root = file.parent.resolve()
    if not file.is_file():
        raise DataError(f"{path}: no {MANIFEST_NAME}: not a prepared data set (or its conversion did not finish)")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{file}: corrupt manifest ({first_line(err)})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{file}: corrupt manifest (not a JSON object)")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{file}: format_version {version!r} is not supported (expected {FORMAT_VERSION}); reconvert")
    for key, ok in (
        ("count", lambda v: isinstance(v, int) and v > 0),
        ("image_size", lambda v: isinstance(v, int) and v > 0),
        ("channels", lambda v: v in (1, 3)),
        ("source", lambda v: isinstance(v, str)),
        ("files", lambda v: isinstance(v, list) and len(v) > 0),
        ("index_files", lambda v: isinstance(v, list)),
    ):
        if key not in manifest or not ok(manifest[key]):
            raise DataError(f"{file}: corrupt manifest ({key} is missing or invalid)")
    total = 0
    for entry in manifest["files"] + manifest["index_files"]:
        if not isinstance(entry, dict) or not {"name", "bytes", "sha256"} <= set(entry):
            raise DataError(f"{file}: corrupt manifest (bad file entry {entry!r})")
        f = root / entry["name"]
        if Path(entry["name"]).name != entry["name"]:
            raise DataError(f"{file}: corrupt manifest (file name {entry['name']!r} is not a plain name)")
        if not f.is_file():
            raise DataError(f"{root}: file {entry['name']} listed in {MANIFEST_NAME} is missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"{f}: {size} bytes, {MANIFEST_NAME} says {entry['bytes']} (truncated or changed copy?)")
    for entry in manifest["files"]:
        if entry.get("first_index") != total or not isinstance(entry.get("count"), int):
            raise DataError(f"{file}: corrupt manifest (file {entry['name']} does not continue the index)")
        total += entry["count"]
    if total != manifest["count"]:
        raise DataError(f"{file}: corrupt manifest (files hold {total} samples, count says {manifest['count']})")
    return {**manifest, "root": str(root)}


def check_record_counts(manifest: dict) -> None:
    """Compare every data file's record count (read from its MindRecord header) with ``manifest.json``; DataError
    names the file. :func:`read_manifest` checks that the manifest adds up, not that the files hold what it says."""
    import mindspore.dataset as ds

    root = Path(manifest["root"])
    for entry in manifest["files"]:
        try:
            # a list: this file only (a single name would load every file of its MindRecord group)
            reader = ds.MindDataset([str(root / entry["name"])], columns_list=["index"], shuffle=False)
            records = reader.get_dataset_size()
        except RuntimeError as err:
            raise DataError(f"{root / entry['name']}: not a readable MindRecord file ({first_line(err)})") from None
        if records != entry["count"]:
            raise DataError(
                f"{root / entry['name']}: holds {records} records, {MANIFEST_NAME} says {entry['count']} "
                "(an edited manifest or a changed file?); reconvert the data set"
            )


def missing_files(manifest: dict) -> list[str]:
    """Names of the manifest's data and index files that are no longer there."""
    root = Path(manifest["root"])
    return [e["name"] for e in manifest["files"] + manifest["index_files"] if not (root / e["name"]).is_file()]


def max_parallel_workers() -> int:
    """The largest ``num_parallel_workers`` MindSpore's data pipeline accepts here (its own check: the CPU count)."""
    from multiprocessing import cpu_count

    return cpu_count()


_SPARE_FILES = 256  # descriptors left for everything else: MindSpore's own, logs, checkpoints, sockets


def open_files_needed(num_files: int, num_parallel_workers: int) -> int:
    """File descriptors a reader of ``num_files`` MindRecord files needs: MindDataset holds each file open once plus
    once per worker while it reads (measured with 100 files: 200 descriptors at 1 worker, 300 at 2), plus spares."""
    return num_files * (1 + num_parallel_workers) + _SPARE_FILES


def ensure_open_files(num_files: int, num_parallel_workers: int, *, root: str) -> None:
    """Raise this process's soft ``RLIMIT_NOFILE`` to :func:`open_files_needed` when it is lower and the hard limit
    allows (what ``ulimit -n`` does); DataError when the hard limit is too low. Without this, a data set of 1000 files
    read with 2 workers under the common ``ulimit -n 1024`` fails inside MindSpore ("failed to open files for reading
    mindrecord files") at the first batch."""
    import resource

    need = open_files_needed(num_files, num_parallel_workers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise DataError(
            f"{root}: reading its {num_files} files with data.num_parallel_workers={num_parallel_workers} needs about "
            f"{need} open files, more than this process may open (ulimit -n, hard limit {hard}); lower "
            "data.num_parallel_workers, reconvert with fewer --shards, or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def verify_checksums(manifest: dict) -> None:
    """Recompute the sha256 of every file listed in a manifest from :func:`read_manifest`; DataError on a mismatch."""
    root = Path(manifest["root"])
    for entry in manifest["files"] + manifest["index_files"]:
        if sha256_file(root / entry["name"]) != entry["sha256"]:
            raise DataError(f"{root / entry['name']}: sha256 does not match {MANIFEST_NAME} (corrupt copy?)")


def manifest_classes(manifest: dict) -> int:
    """The number of classes a prepared data set's labels span (labels 0..K-1), or 0 if it has no labels: a flat
    folder, an LSUN export, or arrays written without labels (their label column holds zeros)."""
    source = manifest.get("source")
    if source == "folder":
        return len(manifest.get("class_names") or [])
    if source == "lsun":
        return 0
    return int(manifest.get("num_classes") or 0)


def check_labels(manifest: dict, *, num_classes: int, source: str) -> None:
    """A class-conditional model (``num_classes`` K > 0) needs a data set whose labels lie in 0..K-1; DataError
    naming ``model.num_classes`` otherwise. Nothing to check for an unconditional model."""
    if num_classes <= 0:
        return
    root = manifest.get("root", "the data set")
    prefix = f"{source}: " if source else ""
    have = manifest_classes(manifest)
    if have == 0:
        raise DataError(
            f"{prefix}model.num_classes: {num_classes} needs a labelled data set, and {root} has no labels "
            f"({manifest.get('source')} data; class folders, cifar10, mnist or digits have them); set "
            "model.num_classes=0 for an unconditional model"
        )
    if have > num_classes:
        raise DataError(
            f"{prefix}model.num_classes: the data set {root} has labels 0..{have - 1}, outside 0..{num_classes - 1}; "
            f"set model.num_classes={have}"
        )


def check_manifest(manifest: dict, *, image_size: int, channels: int, source: str) -> None:
    """Check the data settings against a manifest; DataError names ``data.image_size`` / ``data.channels``.

    ``source`` names where the settings came from (e.g. the config file) and prefixes the message, as in
    :mod:`ddpm_dist.config`; no prefix if empty."""
    root = manifest.get("root", "the data set")
    prefix = f"{source}: " if source else ""
    for key, want, have, flag in (
        ("data.image_size", image_size, manifest["image_size"], "--image-size"),
        ("data.channels", channels, manifest["channels"], "--channels"),
    ):
        if want != have:
            raise DataError(
                f"{prefix}{key}: {want} does not match the data set {root} (prepared with {have}); "
                f"set {key}={have} or reconvert with {flag} {want}"
            )


def read_images(manifest: dict, *, limit: int | None = None) -> np.ndarray:
    """The first ``limit`` (default: all) images of a prepared data set, in index order: uint8 [N, H, W, C].

    ``manifest`` comes from :func:`read_manifest`. For evaluation (reference statistics), not training. Raises
    DataError on a record of the wrong size or out of order."""
    import mindspore.dataset as ds

    count = manifest["count"] if limit is None else min(limit, manifest["count"])
    s, c = manifest["image_size"], manifest["channels"]
    files = [str(Path(manifest["root"]) / entry["name"]) for entry in manifest["files"]]
    ensure_open_files(len(files), ds.config.get_num_parallel_workers(), root=manifest["root"])
    out = np.empty((count, s, s, c), np.uint8)
    dataset = ds.MindDataset(files, columns_list=["image", "index"], shuffle=False, num_samples=count)
    n = 0
    for row in dataset.create_dict_iterator(output_numpy=True, num_epochs=1):
        image = row["image"]
        if image.dtype.itemsize != s * s * c or int(row["index"]) != n:
            raise DataError(f"{manifest['root']}: record {n} is not a {s}x{s}x{c} image in index order; reconvert")
        out[n] = np.frombuffer(image.tobytes(), np.uint8).reshape(s, s, c)
        n += 1
    if n != count:
        raise DataError(f"{manifest['root']}: read {n} images, the manifest promises {count}")
    return out


# --------------------------------------------------------------------------------------------------- sampling


def epoch_permutation(*, seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The global order of sample indices in ``epoch``: int64 [num_samples], the same on every rank.

    Keys are tagged (0 here, 1 for per-sample draws): SeedSequence pads short keys with zeros, so the untagged
    ``[seed, epoch]`` would equal ``[seed, epoch, 0]``, i.e. the key of some sample."""
    return np.random.default_rng([seed, 0, epoch]).permutation(num_samples)


def sample_randomness(
    *, seed: int, g: int, timesteps: int, shape: tuple[int, ...], label_dropout: float | None = None
) -> tuple:
    """(flip, t in [0, timesteps), noise float32 ``shape`` ~ N(0, 1)) of the sample at global position ``g``; with
    ``label_dropout`` (class-conditional models) also ``drop``: True if the sample's label is to be dropped."""
    rng = np.random.default_rng([seed, 1, g])
    flip = bool(rng.random() < 0.5)
    t = int(rng.integers(0, timesteps))
    noise = rng.standard_normal(shape, dtype=np.float32)
    if label_dropout is None:
        return flip, t, noise
    return flip, t, noise, bool(rng.random() < label_dropout)


class TrainData:
    """Infinite per-rank training batches ``(x0, t, noise)``, ``(x0, t, noise, y)`` for a class-conditional model
    (``num_classes`` K > 0); see the module docstring for the sharding rules.

    - ``x0``: float32 [B, C, H, W] in [-1, 1] (randomly flipped left-right if ``random_flip``)
    - ``t``: int32 [B] in [0, timesteps)
    - ``noise``: float32 [B, C, H, W] ~ N(0, 1)
    - ``y``: int32 [B] in [0, K]: the labels, K ("no label") for the share ``label_dropout`` of samples

    with ``B = per_rank_batch = global_batch // world_size``. ``num_parallel_workers`` threads read the records and
    finish the batches in the background while the training step runs (numpy's normal draws hold the GIL, so more
    workers add overlap rather than throughput: ~11k CIFAR-size images/s per process on one core).
    """

    def __init__(
        self,
        *,
        path: str,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        timesteps: int,
        random_flip: bool,
        image_size: int,
        channels: int,
        num_parallel_workers: int,
        start_step: int = 0,
        source: str = "",
        num_classes: int = 0,
        label_dropout: float = 0.0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
        per_worker_batch(global_batch, world_size)  # ConfigError unless it divides
        if seed < 0:
            raise DataError(f"run.seed: must be >= 0 (got {seed})")
        if timesteps < 1:
            raise DataError(f"diffusion.timesteps: must be >= 1 (got {timesteps})")
        if start_step < 0:
            raise DataError(f"start_step: must be >= 0 (got {start_step})")
        if num_parallel_workers < 1:
            raise DataError(f"data.num_parallel_workers: must be >= 1 (got {num_parallel_workers})")
        if num_parallel_workers > max_parallel_workers():
            raise DataError(
                f"data.num_parallel_workers: {num_parallel_workers} exceeds the {max_parallel_workers()} CPUs of this "
                "machine (MindSpore's data pipeline accepts at most one worker per CPU)"
            )
        self.manifest = read_manifest(path)
        check_manifest(self.manifest, image_size=image_size, channels=channels, source=source)
        self._init_labels(num_classes, label_dropout, source)
        self.num_samples: int = self.manifest["count"]
        if global_batch > self.num_samples:
            raise DataError(
                f"train.global_batch: {global_batch} is larger than the data set ({self.num_samples} images in {path})"
            )
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.per_rank_batch: int = global_batch // world_size
        self.steps_per_epoch: int = self.num_samples // global_batch
        self.seed = seed
        self.timesteps = timesteps
        self.random_flip = random_flip
        self.image_size = image_size
        self.channels = channels
        self.start_step = start_step
        self.num_parallel_workers = num_parallel_workers
        root = Path(self.manifest["root"])
        self.files = [str(root / f["name"]) for f in self.manifest["files"]]
        ensure_open_files(len(self.files), num_parallel_workers, root=str(root))
        self._perm_cache: dict[int, np.ndarray] = {}

    def _init_labels(self, num_classes: int, label_dropout: float, source: str) -> None:
        check_labels(self.manifest, num_classes=num_classes, source=source)
        if not 0.0 <= label_dropout < 1.0:
            raise DataError(f"train.label_dropout: must be in [0, 1) (got {label_dropout})")
        self.num_classes = num_classes
        self.label_dropout = label_dropout

    def _check_files_present(self) -> None:
        """DataError naming the first file of the data set that is gone (deleted or moved while training ran)."""
        gone = missing_files(self.manifest)
        if gone:
            raise DataError(
                f"{self.manifest['root']}: {gone[0]} is gone (the data set was deleted or moved during training); "
                "restore it and run the same command again to resume from the last checkpoint"
            )

    def position(self, step: int) -> tuple[int, int]:
        """Global step -> (epoch, step in epoch)."""
        return divmod(step, self.steps_per_epoch)

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(min(self._perm_cache))
            perm = epoch_permutation(seed=self.seed, epoch=epoch, num_samples=self.num_samples)
            self._perm_cache[epoch] = perm
        return perm

    def batch_plan(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batch of global ``step``: (sample indices int64 [B], global positions g int64 [B])."""
        epoch, j = self.position(step)
        p = j * self.global_batch + self.rank + self.world_size * np.arange(self.per_rank_batch, dtype=np.int64)
        return self._permutation(epoch)[p], epoch * self.num_samples + p

    def _finish(
        self, plan: tuple[np.ndarray, np.ndarray], images: np.ndarray, index: np.ndarray, label: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Raw records of one batch -> (x0, t, noise[, y]). Runs in MindDataset's batch worker threads."""
        sample_ids, positions = plan
        if not np.array_equal(index.reshape(-1), sample_ids):  # internal invariant: the file rows are the indices
            raise DataError(f"{self.manifest['root']}: records are not in index order; reconvert the data set")
        b, s, c = self.per_rank_batch, self.image_size, self.channels
        if images.dtype.itemsize != s * s * c:
            raise DataError(f"{self.manifest['root']}: a record holds {images.dtype.itemsize} bytes, not {s}x{s}x{c}")
        pixels = np.frombuffer(images.tobytes(), np.uint8).reshape(b, s, s, c)
        x0 = pixels.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        np.divide(x0, 127.5, out=x0)
        np.subtract(x0, 1.0, out=x0)
        t = np.empty(b, np.int32)
        noise = np.empty((b, c, s, s), np.float32)
        if not self.num_classes:
            for i, g in enumerate(positions.tolist()):
                flip, t[i], noise[i] = sample_randomness(seed=self.seed, g=g, timesteps=self.timesteps, shape=(c, s, s))
                if flip and self.random_flip:
                    x0[i] = x0[i, :, :, ::-1]
            return x0, t, noise
        y = label.reshape(-1).astype(np.int32)
        if y.min() < 0 or y.max() >= self.num_classes:  # the manifest promised otherwise: a damaged or edited set
            raise DataError(
                f"{self.manifest['root']}: a record has label {int(y.min() if y.min() < 0 else y.max())}, outside "
                f"0..{self.num_classes - 1} (model.num_classes); reconvert the data set"
            )
        for i, g in enumerate(positions.tolist()):
            flip, t[i], noise[i], drop = sample_randomness(
                seed=self.seed, g=g, timesteps=self.timesteps, shape=(c, s, s), label_dropout=self.label_dropout
            )
            if flip and self.random_flip:
                x0[i] = x0[i, :, :, ::-1]
            if drop:
                y[i] = self.num_classes
        return x0, t, noise, y

    def _batch_map(self, plans: list[tuple[np.ndarray, np.ndarray]]) -> Callable:
        def finish(images, index, label, info):  # MindDataset checks that the parameters match input_columns + info
            return self._finish(plans[info.get_batch_num()], np.stack(images), np.stack(index), np.stack(label))

        return finish

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield this rank's batches from global step ``start_step`` on, forever.

        One MindDataset per chunk of steps: SubsetSampler lists the chunk's sample indices in order, and the batch's
        ``per_batch_map`` (``num_parallel_workers`` threads, overlapping the training step) decodes, flips and draws
        t and noise, finding its step from the batch number."""
        import mindspore.dataset as ds

        # MindDataset refuses a SubsetSampler list longer than the data set, hence min(..., num_samples).
        steps_per_chunk = max(1, min(_CHUNK_SAMPLES, self.num_samples) // self.per_rank_batch)
        step = self.start_step
        while True:
            self._check_files_present()
            plans = [self.batch_plan(s) for s in range(step, step + steps_per_chunk)]

            outputs = ["x0", "t", "noise", "y"] if self.num_classes else ["x0", "t", "noise"]
            dataset = ds.MindDataset(
                self.files,
                columns_list=["image", "index", "label"],
                sampler=ds.SubsetSampler(np.concatenate([p[0] for p in plans]).tolist()),
                num_parallel_workers=self.num_parallel_workers,
            ).batch(
                self.per_rank_batch,
                drop_remainder=True,
                per_batch_map=self._batch_map(plans),
                input_columns=["image", "index", "label"],
                output_columns=outputs,
                num_parallel_workers=self.num_parallel_workers,
            )
            batches = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1, do_copy=False)
            try:
                count = 0
                for batch in _reraise_missing(batches, self._check_files_present):
                    count += 1
                    yield tuple(batch)
                if count != steps_per_chunk:  # internal invariant
                    raise RuntimeError(f"MindDataset gave {count} batches, expected {steps_per_chunk}")
            finally:
                batches.stop()
            step += steps_per_chunk


def _reraise_missing(batches, check: Callable[[], None]) -> Iterator:
    """``batches``, where a MindSpore error caused by a data file that disappeared becomes that file's DataError."""
    it = iter(batches)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except RuntimeError:
            check()
            raise
        yield item


def build_train_data(
    cfg: Any, *, rank: int, world_size: int, start_step: int = 0, source: str | None = None, verify: bool = False
):
    """TrainData from a :class:`ddpm_dist.config.Config` (which checks ``cfg.data`` against the manifest it reads;
    ``source`` names the config in its errors); with ``verify`` the files' sha256 too (about 1 s per GB), so a damaged
    shard is one line before training starts, not a MindSpore traceback at the first batch; then every file's record
    count against the manifest (:func:`check_record_counts`)."""
    data = TrainData(
        path=cfg.data.path,
        global_batch=cfg.train.global_batch,
        rank=rank,
        world_size=world_size,
        seed=cfg.run.seed,
        timesteps=cfg.diffusion.timesteps,
        random_flip=cfg.data.random_flip,
        image_size=cfg.data.image_size,
        channels=cfg.data.channels,
        start_step=start_step,
        num_parallel_workers=cfg.data.num_parallel_workers,
        source=source or "config",
        num_classes=cfg.model.num_classes,
        label_dropout=cfg.train.label_dropout,
    )
    if verify:
        verify_checksums(data.manifest)
    check_record_counts(data.manifest)  # after the checksums: a damaged file is named as such, not as a bad count
    return data


__all__ = [
    "TrainData",
    "build_train_data",
    "check_labels",
    "check_manifest",
    "check_record_counts",
    "ensure_open_files",
    "epoch_permutation",
    "manifest_classes",
    "read_manifest",
    "sample_randomness",
    "verify_checksums",
]
