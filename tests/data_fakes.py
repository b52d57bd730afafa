"""Tiny fake data sets in the real on-disk formats (CIFAR-10 python and binary, idx, image folders) for the data tests.

Each writer returns the arrays it wrote so a test can compare the converted data pixel by pixel.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def _images(rng: np.random.Generator, n: int, size: int, channels: int) -> np.ndarray:
    return rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def cifar_arrays(n_per_batch: int = 3, seed: int = 0) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{'train': 5 x (images uint8 [n, 32, 32, 3], labels int [n]), 'test': 1 x (...)}."""
    rng = np.random.default_rng(seed)
    batch = lambda: (_images(rng, n_per_batch, 32, 3), rng.integers(0, 10, n_per_batch))  # noqa: E731
    return {"train": [batch() for _ in range(5)], "test": [batch()]}


def _cifar_python_blob(images: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # CHW planes, as in the real files
    batch = {
        b"batch_label": name.encode(),
        b"data": np.ascontiguousarray(data),
        b"labels": [int(v) for v in labels],
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(batch, protocol=2)


def _cifar_binary_blob(images: np.ndarray, labels: np.ndarray) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    return np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1).tobytes()


def _cifar_files(arrays: dict, binary: bool) -> dict[str, bytes]:
    files = {}
    for split, batches in arrays.items():
        for i, (images, labels) in enumerate(batches):
            name = f"data_batch_{i + 1}" if split == "train" else "test_batch"
            if binary:
                files[name + ".bin"] = _cifar_binary_blob(images, labels)
            else:
                files[name] = _cifar_python_blob(images, labels, name)
    if binary:
        files["batches.meta.txt"] = b"airplane\nautomobile\n"
    else:
        files["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]}, protocol=2)
    return files


def make_cifar(root: Path, *, binary: bool = False, as_tar: bool = False, n_per_batch: int = 3, seed: int = 0):
    """Write ``cifar-10-batches-{py,bin}/`` (or ``cifar-10-{python,binary}.tar.gz``) under ``root``.

    Returns (path to pass as --input, arrays as from :func:`cifar_arrays`)."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = cifar_arrays(n_per_batch, seed)
    folder = "cifar-10-batches-bin" if binary else "cifar-10-batches-py"
    files = _cifar_files(arrays, binary)
    if as_tar:
        path = root / ("cifar-10-binary.tar.gz" if binary else "cifar-10-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in files.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path, arrays
    (root / folder).mkdir(exist_ok=True)
    for name, blob in files.items():
        (root / folder / name).write_bytes(blob)
    return root / folder, arrays


def concat(batches: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write a uint8 array in idx format (magic 0x0000080N, big-endian dims)."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + np.ascontiguousarray(array, np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


def make_idx(root: Path, *, n: int = 7, gz: bool = True, prefix: str = "train", size: int = 28, seed: int = 0):
    """Write ``{prefix}-images-idx3-ubyte[.gz]`` and ``{prefix}-labels-idx1-ubyte[.gz]`` in ``root``.

    Returns (images uint8 [n, size, size], labels uint8 [n])."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return images, labels


def make_image_folder(root: Path, *, size: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """Class folders ``a/`` and ``b/`` (nested sub-folder in ``b``), png, jpg and webp files, one corrupt png.

    Returns {relative path: (RGB uint8 [size, size, 3] as PIL decodes the file, label)} for the readable images,
    in the converter's order (sorted by folder walk)."""
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, int]] = {}
    plan = [("a/x1.png", 0), ("a/x2.jpg", 0), ("b/deep/y1.png", 1), ("b/y2.webp", 1), ("b/y3.PNG", 1)]
    for rel, label in plan:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".png": "PNG", ".jpg": "JPEG", ".webp": "WEBP"}[path.suffix.lower()]
        options = {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(_images(rng, 1, size, 3)[0]).save(path, fmt, **options)
        with Image.open(path) as im:
            out[rel] = (np.asarray(im.convert("RGB")), label)
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "a" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(_images(rng, 1, size, 3)[0]).save(root / ".hidden" / "skip.png")
    order = ["a/x1.png", "a/x2.jpg", "b/deep/y1.png", "b/y2.webp", "b/y3.PNG"]  # os.walk: files, then sub-folders
    return {rel: out[rel] for rel in order}


# Non-square sizes (width, height) and formats for the LSUN / folder crop tests: even and odd excess on either side,
# one square, one smaller than the 24 px the tests convert to (upscaled), one already 24 on its shorter side.
CROP_CASES = [((40, 24), "WEBP"), ((24, 37), "JPEG"), ((33, 33), "WEBP"), ((50, 29), "JPEG"), ((16, 21), "WEBP"),
              ((27, 64), "JPEG"), ((61, 48), "PNG")]  # fmt: skip


def encoded_images(cases=CROP_CASES, seed: int = 0) -> list[tuple[bytes, np.ndarray, str]]:
    """[(encoded bytes, RGB uint8 [H, W, 3] as PIL decodes those bytes, format)] for ``cases`` of ((w, h), format).

    Smooth-ish random content (noise on a gradient) so that a crop shifted by one pixel gives other pixels."""
    rng = np.random.default_rng(seed)
    out = []
    for (w, h), fmt in cases:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (xx + yy) * 127 // (w + h - 2)], -1)
        pixels = np.clip(base + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        options = {"lossless": True} if fmt == "WEBP" else {"quality": 90} if fmt == "JPEG" else {}
        Image.fromarray(pixels).save(buf, fmt, **options)
        blob = buf.getvalue()
        with Image.open(io.BytesIO(blob)) as im:
            out.append((blob, np.asarray(im.convert("RGB")), fmt))
    return out


def make_lmdb(root: Path, values: dict[bytes, bytes]) -> Path:
    """An LMDB directory (data.mdb, lock.mdb) holding ``values`` (key -> value), as LSUN's exports are laid out."""
    import lmdb

    root.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(root), map_size=64 * 2**20)
    with env.begin(write=True) as txn:
        for key, value in values.items():
            txn.put(key, value)
    env.close()
    return root


def lsun_key(i: int) -> bytes:
    """An LSUN-like image id: 40 hex characters (a sha1), whose sorted order is not the order of ``i``."""
    import hashlib

    return hashlib.sha1(str(i).encode()).hexdigest().encode()
