"""Convert image data sets into MindRecord files plus ``manifest.json`` (see the :mod:`ddpm_dist.data` docstring).

Sources:

- ``cifar10``: the python version (``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py/``) or the binary
  version (``cifar-10-batches-bin/``, or its ``.tar.gz``), parsed with numpy/pickle (MindSpore's ``Cifar10Dataset``
  only reads complete 10,000-record files). The pickles are loaded with an unpickler that only builds numpy arrays.
- ``mnist``: MNIST / Fashion-MNIST idx files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (optionally ``.gz``).
- ``folder``: png/jpg/jpeg/webp files under a directory, recursively (hidden files and folders are ignored). The label
  is the index of the top-level sub-folder in sorted order, 0 when the images lie directly in the directory.
- ``lsun``: an LSUN category LMDB export (``church_outdoor_train_lmdb/``), label 0; see :mod:`ddpm_dist.data.lsun`.
- ``digits``: scikit-learn's 1797 UCI digits, see :mod:`ddpm_dist.data.digits`; split ``train`` (all), ``fit`` (the
  digits metric's 1200) or ``test`` (its 597 held-out images), the only source with a ``fit`` split.

Every image that is not already ``image_size`` x ``image_size`` is fitted by one rule, the paper's: crop the centered
square, resize it with Lanczos (see :mod:`ddpm_dist.data.decode`).

Output is atomic: everything is written into a hidden temporary directory next to ``output`` (the manifest last),
which is renamed into place when complete. A failure removes it; only a killed process can leave a
``.<name>.tmp-*`` directory, which holds no manifest and so is never mistaken for a data set.

Shards: file k holds a contiguous block of sample indices. Each file is written by its own ``FileWriter`` rather than by
one ``FileWriter(shard_num=K)``, because the latter splits every ``write_raw_data`` call across all K files, so that
``MindDataset``'s row order (files in order, rows in file order) is no longer the sample index; the pipeline relies on
row == index to sample by index.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import pickle
import secrets
import shutil
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddpm_dist.data import FORMAT_VERSION, MANIFEST_NAME, SOURCES, DataError
from ddpm_dist.data.decode import ROWS_PER_WRITE, Chunks, ImageDecoder, Source, default_workers, resize_array
from ddpm_dist.errors import first_line
from ddpm_dist.storage import probe_writable, sha256_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHARD_TARGET_BYTES = 256 * 2**20  # automatic shard count: about this much pixel data per file
MAX_SHARDS = 1000  # --shards
# The automatic count stops at 256 files (LSUN bedroom at 256 px: 256 files of ~2.3 GB): while it reads, MindDataset
# holds every file open 1 + num_parallel_workers times (measured), so 1000 files at 2 workers need ~3000 descriptors,
# three times the usual `ulimit -n` of 1024 (see pipeline.ensure_open_files).
AUTO_MAX_SHARDS = 256
MAX_IMAGE_SIZE = 1024  # larger is a typo, not a DDPM data set (minutes of resizing, gigabytes per shard)
# --------------------------------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, lists, dicts and strings, nothing else: a CIFAR batch cannot run code when loaded."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _parse_cifar_python(name: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:  # pickle raises many types on garbage (EOFError, UnpicklingError, ValueError, ...)
        raise DataError(f"{name}: corrupt or truncated CIFAR-10 batch ({first_line(err)})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (expected a dict, got {type(batch).__name__})")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{name}: not a CIFAR-10 batch (no 'data' array or no 'labels')")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{name}: corrupt CIFAR-10 batch: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{name}: label count mismatch: {labels.size} labels for {data.shape[0]} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _parse_cifar_binary(name: str, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    record = 1 + 3072
    if not blob or len(blob) % record:
        raise DataError(
            f"{name}: truncated or corrupt CIFAR-10 binary batch: {len(blob)} bytes is not a multiple of "
            f"{record}-byte records"
        )
    rows = np.frombuffer(blob, np.uint8).reshape(-1, record)
    return rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rows[:, 0]


def _cifar_batch_names(split: str, binary: bool) -> list[str]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [n + ".bin" for n in names] if binary else names


def _read_cifar_blobs(path: Path, split: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Locate the batch files (tar archive, the batches directory, or its parent); return (format, [(name, bytes)])."""
    if path.is_file():
        try:
            with tarfile.open(path) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                binary = "data_batch_1.bin" in members or "test_batch.bin" in members
                if not binary and "data_batch_1" not in members and "test_batch" not in members:
                    raise DataError(f"unknown format: {path} holds no CIFAR-10 batches (data_batch_1 ... test_batch)")
                blobs = []
                for name in _cifar_batch_names(split, binary):
                    if name not in members:
                        raise DataError(f"{path}: CIFAR-10 archive has no {name}")
                    blobs.append((f"{path}:{name}", tar.extractfile(members[name]).read()))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataError(f"{path}: not a readable CIFAR-10 archive ({first_line(err)})") from None
        return ("cifar10-binary" if binary else "cifar10-python"), blobs
    for folder, binary in (
        (path, False),
        (path, True),
        (path / "cifar-10-batches-py", False),
        (path / "cifar-10-batches-bin", True),
    ):
        names = _cifar_batch_names(split, binary)
        first = _cifar_batch_names("train", binary)[0], _cifar_batch_names("test", binary)[0]
        if not any((folder / n).is_file() for n in first):
            continue
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DataError(f"{folder}: missing CIFAR-10 batch file {missing[0]}")
        blobs = [(str(folder / n), (folder / n).read_bytes()) for n in names]
        return ("cifar10-binary" if binary else "cifar10-python"), blobs
    raise DataError(
        f"unknown format: {path} holds neither CIFAR-10 python batches (cifar-10-batches-py/) "
        f"nor binary batches (cifar-10-batches-bin/)"
    )


def read_cifar10(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """Return (images uint8 [N, 32, 32, 3] HWC, labels int32 [N] in [0, 10), format name)."""
    fmt, blobs = _read_cifar_blobs(Path(path), split)
    parse = _parse_cifar_binary if fmt == "cifar10-binary" else _parse_cifar_python
    parts = [parse(name, blob) for name, blob in blobs]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: corrupt CIFAR-10 data: labels outside 0..9 (found {labels.min()}..{labels.max()})")
    return np.ascontiguousarray(images), labels.astype(np.int32), fmt


# --------------------------------------------------------------------------------------------------- MNIST idx

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    try:
        blob = path.read_bytes()
        if path.suffix == ".gz":
            blob = gzip.decompress(blob)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: corrupt or truncated gzip file ({first_line(err)})") from None
    header = 4 + 4 * ndim
    if len(blob) < header:
        raise DataError(f"{path}: truncated idx file ({len(blob)} bytes)")
    magic = int.from_bytes(blob[:4], "big")
    if magic != 0x800 + ndim:
        raise DataError(f"{path}: unknown format: idx magic {magic:#010x}, expected {0x800 + ndim:#010x}")
    shape = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "corrupt"
        raise DataError(f"{path}: {what} idx file: {len(blob)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(blob, np.uint8, offset=header).reshape(shape)


def read_idx(path: str, split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """MNIST / Fashion-MNIST: return (images uint8 [N, H, W, 1], labels int32 [N], format name)."""
    folder = Path(path)
    prefix = _IDX_PREFIX[split]
    images_file = _find_idx(folder, prefix, "images")
    if images_file is None:
        raise DataError(
            f"unknown format: {folder} holds no {prefix}-images-idx3-ubyte[.gz] (MNIST / Fashion-MNIST idx files)"
        )
    labels_file = _find_idx(folder, prefix, "labels")
    if labels_file is None:
        raise DataError(f"{folder}: missing {prefix}-labels-idx1-ubyte[.gz] next to {images_file.name}")
    images = _read_idx(images_file, 3)
    labels = _read_idx(labels_file, 1)
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_file}: label count mismatch: {labels.shape[0]} labels for {images.shape[0]} images "
            f"in {images_file.name}"
        )
    if images.shape[0] == 0:
        raise DataError(f"{images_file}: holds no images")
    return images[..., None], labels.astype(np.int32), "idx"


# --------------------------------------------------------------------------------------------------- folder


def _scan_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Sorted (file, label) pairs and the class names (empty for a flat folder)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    if not found:
        raise DataError(f"empty folder: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    found.sort(key=lambda p: p.relative_to(root).parts)  # sample order: relative paths, sorted part by part
    rel = [p.relative_to(root) for p in found]
    classes = sorted({r.parts[0] for r in rel if len(r.parts) > 1})
    if classes and any(len(r.parts) == 1 for r in rel):
        top = next(r for r in rel if len(r.parts) == 1)
        raise DataError(f"{root}: mixes images at the top level ({top}) with class sub-folders; use one or the other")
    label_of = {c: i for i, c in enumerate(classes)}
    return [(p, label_of[r.parts[0]] if classes else 0) for p, r in zip(found, rel, strict=True)], classes


def read_folder(
    path: str, *, image_size: int, channels: int, strict: bool = False, limit: int | None = None, workers: int = 1
) -> Source:
    """Stream the images of a folder (see the module docstring), the first ``limit`` readable ones if given, decoded
    by ``workers`` threads. Unreadable images are skipped and counted in ``info['skipped']`` (raise DataError under
    ``strict``)."""
    root = Path(path)
    files, classes = _scan_folder(root)
    info: dict = {"num_classes": max(1, len(classes)), "class_names": classes}
    decoder = ImageDecoder(size=image_size, channels=channels, strict=strict, info=info, origin=str(root),
                           workers=workers)  # fmt: skip
    items = ((file, str(file.relative_to(root)), label) for file, label in files)
    count = len(files) if limit is None else min(limit, len(files))
    return Source(count_hint=count, image_size=image_size, channels=channels, chunks=decoder.chunks(items, limit),
                  info=info)  # fmt: skip


# --------------------------------------------------------------------------------------------------- writing


def _array_source(images: np.ndarray, labels: np.ndarray, *, image_size: int, channels: int, info: dict) -> Source:
    def chunks() -> Chunks:
        for start in range(0, images.shape[0], ROWS_PER_WRITE):
            part = resize_array(images[start : start + ROWS_PER_WRITE], image_size, channels)
            yield np.ascontiguousarray(part), labels[start : start + ROWS_PER_WRITE].astype(np.int32)

    return Source(count_hint=images.shape[0], image_size=image_size, channels=channels, chunks=chunks(), info=info)


def write_arrays(
    output: str,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    source: str = "arrays",
    shards: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Write in-memory uint8 [N, H, W, C] images (H == W, C in 1, 3) as a prepared data set; return its manifest.

    For synthetic data (tests, benchmarks) and for readers of other formats."""
    images = np.asarray(images)
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1] != images.shape[2]
        or images.shape[3] not in (1, 3)
    ):
        raise DataError(f"images must be uint8 [N, S, S, 1 or 3], got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise DataError("images: no images")
    info: dict = {}
    if labels is None:  # no labels: the label column holds zeros and the manifest says 0 classes
        labels = np.zeros(images.shape[0], np.int32)
        info["num_classes"] = 0
    else:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],):
            raise DataError(f"label count mismatch: {labels.size} labels for {images.shape[0]} images")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= 2**31:
            raise DataError(f"labels must be integers in [0, 2^31) (got {labels.dtype}, min {labels.min()})")
        labels = labels.astype(np.int32)
        info["num_classes"] = int(labels.max()) + 1
    src = _array_source(images, labels, image_size=images.shape[1], channels=images.shape[3], info=info)
    meta = {"source": source, "split": "train", "input": None, "source_format": "arrays"}
    return write_dataset(output, src, shards=shards, overwrite=overwrite, meta=meta)


def auto_shards(count: int, image_bytes: int) -> int:
    """About SHARD_TARGET_BYTES of pixels per file, at most AUTO_MAX_SHARDS files, at least one sample per file."""
    return max(1, min(AUTO_MAX_SHARDS, count, math.ceil(count * image_bytes / SHARD_TARGET_BYTES)))


def _pow2ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def _page_sizes(per_file: int, image_bytes: int) -> tuple[int, int]:
    """MindRecord page and header sizes that fit the file. The defaults (32 MiB pages, 16 MiB header) make even a tiny
    file ~50 MB long (sparse on disk, but not once copied by tools that do not keep holes)."""
    page = min(256 * 2**20, max(2**20, _pow2ceil(2 * image_bytes + 4096)))
    pages = 2 * (math.ceil(per_file * (image_bytes + 64) / page) + 1)  # raw and blob pages
    header = min(128 * 2**20, max(2**20, _pow2ceil(64 * 1024 + 1024 * pages)))
    return page, header


Progress = Callable[
    [int, int], None
]  # (images written so far, the count expected: an upper bound for streamed sources)


def _write_shards(folder: Path, src: Source, shards: int, progress: Progress | None = None) -> list[dict]:
    """Write ``src`` into ``shards`` files of consecutive indices; return their manifest entries (without checksums).
    ``progress`` is called after every chunk."""
    from mindspore.mindrecord import FileWriter

    schema = {"image": {"type": "bytes"}, "label": {"type": "int32"}, "index": {"type": "int64"}}
    per_file = math.ceil(src.count_hint / shards)
    page_size, header_size = _page_sizes(per_file, src.image_size**2 * src.channels)
    entries: list[dict] = []
    writer, index = None, 0

    def close() -> None:
        writer.commit()
        entries[-1]["count"] = index - entries[-1]["first_index"]

    for images, labels in src.chunks:
        if images.shape[1:] != (src.image_size, src.image_size, src.channels) or images.dtype != np.uint8:
            raise AssertionError(f"reader produced {images.dtype} {images.shape}")  # internal invariant
        row = 0
        while row < images.shape[0]:
            if writer is None or index - entries[-1]["first_index"] >= per_file:
                if writer is not None:
                    close()
                name = f"data-{len(entries):05d}.mindrecord"
                writer = FileWriter(str(folder / name), shard_num=1, overwrite=False)
                writer.set_page_size(page_size)
                writer.set_header_size(header_size)
                writer.add_schema(schema, "ddpm-dist images")
                entries.append({"name": name, "first_index": index})
            take = min(images.shape[0] - row, per_file - (index - entries[-1]["first_index"]))
            writer.write_raw_data(
                [
                    {"image": images[row + i].tobytes(), "label": int(labels[row + i]), "index": index + i}
                    for i in range(take)
                ]
            )
            row += take
            index += take
        if progress is not None:
            progress(index, src.count_hint)
    if writer is not None:
        close()
    return entries


def _check_output(out: Path, overwrite: bool) -> None:
    _check_writable(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError(f"output {out} already exists (pass --overwrite to replace it)")
    if not (out / MANIFEST_NAME).is_file():
        raise DataError(f"refusing to overwrite {out}: it has no {MANIFEST_NAME}, so it is not a prepared data set")


def _check_writable(out: Path) -> None:
    """An unwritable output fails before any reading."""
    try:
        probe_writable(out.parent)
    except OSError as err:
        raise DataError(f"output {out}: cannot write there ({err.strerror or first_line(err)})") from None


def write_dataset(
    output: str, src: Source, *, shards: int | None, overwrite: bool, meta: dict, progress: Progress | None = None
) -> dict:
    """Write ``src`` as MindRecord + manifest into ``output`` atomically; return the manifest. ``progress(done,
    expected)`` after every chunk of images written."""
    out = Path(output).absolute()
    _check_output(out, overwrite)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{token}"
    tmp.mkdir()
    try:
        image_bytes = src.image_size**2 * src.channels
        nshards = auto_shards(src.count_hint, image_bytes) if shards is None else min(shards, src.count_hint)
        entries = _write_shards(tmp, src, nshards, progress)
        count = sum(e["count"] for e in entries)
        if count == 0:
            raise DataError(f"no readable images in {meta.get('input')} ({src.info.get('skipped', 0)} unreadable)")
        index_files = []
        for entry in entries:
            entry["bytes"] = (tmp / entry["name"]).stat().st_size
            entry["sha256"] = sha256_file(tmp / entry["name"])
            db = tmp / (entry["name"] + ".db")
            index_files.append({"name": db.name, "bytes": db.stat().st_size, "sha256": sha256_file(db)})
        manifest = {
            "format_version": FORMAT_VERSION,
            **meta,
            "count": count,
            "image_size": src.image_size,
            "channels": src.channels,
            "fields": {"image": "bytes: uint8 HWC pixels", "label": "int32", "index": "int64: 0..count-1"},
            **src.info,
            "files": entries,
            "index_files": index_files,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with open(tmp / MANIFEST_NAME, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _check_output(out, overwrite)  # again: something may have appeared meanwhile
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # innermost first: only the folders this call made, and only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    return manifest


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists() or not any(out.iterdir()):
        os.replace(tmp, out)  # an empty directory can be replaced by a rename
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- entry point

_NATIVE = {"cifar10": (32, 3), "mnist": (28, 1), "digits": (16, 1), "folder": (None, 3), "lsun": (None, 3)}
_STREAMED = ("folder", "lsun")  # decoded one image at a time: --limit applies
# train | test; digits also fit (its train is all 1797, fit + test the digits metric's 1200 + 597: data/digits.py)
SPLIT_NAMES = ("train", "fit", "test")


def convert(
    *,
    source: str,
    input_path: str | None,
    output: str,
    image_size: int | None = None,
    channels: int | None = None,
    split: str = "train",
    shards: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    upsample: str | None = None,
    limit: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> dict:
    """Convert ``source`` data at ``input_path`` into a prepared data set at ``output``; return its manifest.

    ``image_size`` / ``channels`` default to the source's own (CIFAR-10 32/3, MNIST 28/1, digits 16/1; folders and
    LSUN need ``image_size`` and default to 3 channels); anything else is center-cropped to a square and resized
    (:func:`ddpm_dist.data.decode.fit_image`) and converted (RGB <-> L). ``shards`` defaults to about 256 MiB of
    pixels per file. ``upsample`` (digits only): ``nearest`` (default) or ``bicubic`` resizing of the 8x8 sources,
    recorded in the manifest. ``limit`` (folder, lsun): only the first ``limit`` readable images, in path / key order,
    recorded in the manifest. ``workers`` (folder, lsun): decoding threads (default: the CPUs available, at most 16);
    the output does not depend on it. ``progress(done, expected)`` is called after every chunk written. Raises
    DataError on bad input.
    """
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r} (choose {', '.join(SOURCES)})")
    if split not in SPLIT_NAMES:
        raise DataError(f"unknown split {split!r} (choose {', '.join(SPLIT_NAMES)})")
    native_size, native_channels = _NATIVE[source]
    image_size = native_size if image_size is None else image_size
    channels = native_channels if channels is None else channels
    if image_size is None:
        raise DataError(f"--image-size is required for --source {source}")
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(f"--image-size must be in [1, {MAX_IMAGE_SIZE}] (got {image_size})")
    if channels not in (1, 3):
        raise DataError(f"--channels must be 1 or 3 (got {channels})")
    if shards is not None and not 1 <= shards <= MAX_SHARDS:
        raise DataError(f"--shards must be in 1..{MAX_SHARDS} (got {shards})")
    _check_streaming(source, limit=limit, workers=workers)
    _check_output(Path(output).absolute(), overwrite)  # fail before any slow reading
    if upsample is not None and source != "digits":
        raise DataError(f"--upsample applies to --source digits only (got --source {source})")
    input_path, upsample = _check_input(source, input_path=input_path, split=split, upsample=upsample)
    meta = {"source": source, "split": split, "input": input_path}
    if source == "digits":
        meta["upsample"] = upsample
    if limit is not None:
        meta["limit"] = limit
    src, meta["source_format"] = _open_source(source, input_path=input_path, image_size=image_size, channels=channels,
                                              split=split, strict=strict, upsample=upsample, limit=limit,
                                              workers=workers or default_workers())  # fmt: skip
    return write_dataset(output, src, shards=shards, overwrite=overwrite, meta=meta, progress=progress)


def _check_streaming(source: str, *, limit: int | None, workers: int | None) -> None:
    """DataError for ``--limit`` / ``--workers`` out of range or given for a source that is not decoded image by
    image."""
    for flag, value, low in (("--limit", limit, 1), ("--workers", workers, 1)):
        if value is None:
            continue
        if source not in _STREAMED:
            raise DataError(f"{flag} applies to --source {' or '.join(_STREAMED)} only (got --source {source})")
        if value < low:
            raise DataError(f"{flag} must be at least {low} (got {value})")
    if workers is not None and workers > 256:
        raise DataError(f"--workers must be at most 256 (got {workers})")


def _check_input(source: str, *, input_path: str | None, split: str, upsample: str | None):
    """(absolute input path or None for digits, digits' upsampling mode or None); DataError on a bad combination."""
    if source != "digits":
        if split not in ("train", "test"):
            raise DataError(f"--split {split} applies to --source digits only (choose train or test for {source})")
        if not input_path:
            raise DataError(f"--input is required for --source {source}")
        if not Path(input_path).exists():
            raise DataError(f"input not found: {input_path}")
        return str(Path(input_path).absolute()), None
    from ddpm_dist.data.digits import DEFAULT_UPSAMPLE, UPSAMPLE_MODES
    from ddpm_dist.data.digits import SPLITS as DIGITS_SPLITS

    if input_path:
        raise DataError(
            f"--input does not apply to --source digits (the digits are embedded; got --input {input_path})"
        )
    if split not in DIGITS_SPLITS:
        raise DataError(f"unknown digits split {split!r} (choose {', '.join(DIGITS_SPLITS)})")
    upsample = upsample or DEFAULT_UPSAMPLE
    if upsample not in UPSAMPLE_MODES:
        raise DataError(f"unknown --upsample {upsample!r} (choose {', '.join(UPSAMPLE_MODES)})")
    return None, upsample


def _open_source(
    source: str,
    *,
    input_path: str | None,
    image_size: int,
    channels: int,
    split: str,
    strict: bool,
    upsample: str | None,
    limit: int | None,
    workers: int,
) -> tuple[Source, str]:
    """(the reader of ``source``, its ``source_format`` for the manifest)."""
    if source == "folder":
        folder = read_folder(input_path, image_size=image_size, channels=channels, strict=strict, limit=limit,
                             workers=workers)  # fmt: skip
        return folder, "image-folder"
    if source == "lsun":
        from ddpm_dist.data.lsun import read_lsun

        lsun = read_lsun(input_path, image_size=image_size, channels=channels, strict=strict, limit=limit,
                         workers=workers)  # fmt: skip
        return lsun, "lmdb"
    readers: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, str]]] = {
        "cifar10": lambda: read_cifar10(input_path, split),
        "mnist": lambda: read_idx(input_path, split),
        "digits": lambda: _read_digits(image_size, upsample, split),
    }
    images, labels, fmt = readers[source]()
    info: dict = {"num_classes": int(labels.max()) + 1 if labels.size else 0}
    if source == "cifar10":
        info["class_names"] = list(CIFAR10_CLASSES)
    return _array_source(images, labels, image_size=image_size, channels=channels, info=info), fmt


def _read_digits(image_size: int, upsample: str, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    from ddpm_dist.data.digits import load_digits_images

    images, labels = load_digits_images(image_size=image_size, upsample=upsample, split=split)
    return images, labels, "sklearn-digits"
