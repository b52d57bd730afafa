"""Reference statistics for FID: from a prepared data set, an image npz or a statistics npz, cached by protocol.

A reference is one of
- a prepared data set (a directory with ``manifest.json``, see ``tools/prepare_data.py``): its images, in index order;
- an image npz: ``arr_0`` (or ``images``) uint8 [N, H, W, C], the layout ``tools/sample.py`` writes;
- a statistics npz with ``mu`` [2048] and ``sigma`` [2048, 2048] (pytorch-fid's ``--save-stats`` and the TTUR
  files): used as given; their protocol is whatever made them.

Statistics computed from images are cached in ``cache_dir`` under a key hashing the protocol (:data:`PROTOCOL`, the
sha256 of the pytorch-fid weights, the number of images), the numerics that computed them (:func:`numerics`: the
device and its float32 convolution precision - Ascend A2 runs them in HF32 unless turned off) and the reference's
content (the data set's file sha256s from its manifest, or the npz's own sha256), so a changed protocol, weights
file, device or data set never hits an old entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import first_line
from ..storage import sha256_file
from . import FEATURE_DIM, EvalError

PROTOCOL_VERSION = 1
PROTOCOL = {
    "version": PROTOCOL_VERSION,
    "network": "pytorch-fid FID Inception-v3 (TensorFlow 2015-12-05 graph), pool3 2048-d features, 1008 logits",
    "input": "uint8 RGB (gray repeated to 3 channels) / 255",
    "resize": "bilinear to 299x299, half-pixel centres, no antialiasing (as F.interpolate align_corners=False)",
    "statistics": "float64 mean and unbiased covariance",
}


class EvalReferenceError(EvalError):
    """A reference that cannot be read or used. The message is one line."""


@dataclass
class Reference:
    """``num`` images to compute statistics from (:meth:`load_images`), or given statistics (``mu``, ``sigma``)."""

    source: str
    kind: str  # "dataset", "images" or "stats"
    content_id: str
    num: int = 0
    images: np.ndarray | None = None  # a data set's are read on first use: a cache hit never reads them
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    manifest: dict | None = None

    @property
    def image_size(self) -> int | None:
        """Height (= width) of the reference images; None for statistics, whose resolution is not recorded."""
        if self.manifest is not None:
            return int(self.manifest["image_size"])
        return int(self.images.shape[1]) if self.images is not None else None

    def load_images(self) -> np.ndarray:
        """uint8 [num, H, W, C]. Raises EvalReferenceError."""
        if self.images is None and self.manifest is not None:
            from ddpm_dist.data import DataError, read_images

            try:
                self.images = read_images(self.manifest, limit=self.num)
            except DataError as err:
                raise EvalReferenceError(str(err)) from None
        if self.images is None:
            raise EvalReferenceError(f"{self.source}: holds statistics, not images")
        return self.images


def _unreadable(path, err: Exception) -> EvalReferenceError:
    return EvalReferenceError(f"{path}: not a readable npz ({first_line(err)})")


def load_images_npz(path, *, what: str = "samples") -> np.ndarray:
    """uint8 [N, H, W, C] from ``arr_0`` or ``images`` of an npz. Raises EvalReferenceError."""
    path = Path(path)
    if not path.is_file():
        raise EvalReferenceError(f"{what} not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in ("arr_0", "images") if k in data.files), None)
            if key is None:
                raise EvalReferenceError(f"{path}: no arr_0 or images array (has {sorted(data.files)[:5]})")
            images = data[key]
    except EvalReferenceError:
        raise
    except Exception as err:  # numpy and zipfile raise many types for a bad file; one line for the user
        raise _unreadable(path, err) from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise EvalReferenceError(
            f"{path}: {key} must be uint8 [N, H, W, 1 or 3] (got {images.dtype} {list(images.shape)})"
        )
    return images


def load_labels_npz(path, *, count: int) -> np.ndarray | None:
    """The class labels of a samples npz: ``arr_1`` int [count] (what tools/sample.py writes for a class-conditional
    model, the layout guided-diffusion's evaluator reads), as int64; None when there is no ``arr_1``. ``count``: the
    number of images in its ``arr_0``. Raises EvalReferenceError for labels that are not integers >= 0, one per image.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_1" not in data.files:
                return None
            labels = data["arr_1"]
    except Exception as err:  # numpy and zipfile raise many types for a bad file; one line for the user
        raise _unreadable(path, err) from None
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise EvalReferenceError(f"{path}: arr_1 (the class labels) must be integers [N] (got {labels.dtype} "
                                 f"{list(labels.shape)})")  # fmt: skip
    if len(labels) != count:
        raise EvalReferenceError(f"{path}: arr_1 holds {len(labels)} labels for {count} images in arr_0 (one each)")
    if labels.size and labels.min() < 0:
        raise EvalReferenceError(f"{path}: arr_1 holds label {int(labels.min())} (class labels are >= 0)")
    return labels.astype(np.int64)


def open_reference(source, *, limit: int | None = None) -> Reference:
    """Read a reference (see the module doc); ``limit``: use only its first ``limit`` images.
    Raises EvalReferenceError."""
    path = Path(source)
    if not path.exists():
        raise EvalReferenceError(f"reference not found: {source} (a prepared data set directory or an .npz)")
    if path.is_dir():
        from ddpm_dist.data import DataError, read_manifest

        try:
            manifest = read_manifest(str(path))
        except DataError as err:
            raise EvalReferenceError(str(err)) from None
        files = sorted(entry["sha256"] for entry in manifest["files"])
        content = hashlib.sha256(json.dumps(files).encode()).hexdigest()
        num = min(limit, manifest["count"]) if limit else manifest["count"]
        return Reference(str(path), "dataset", content, num=num, manifest=manifest)
    if path.suffix != ".npz":
        raise EvalReferenceError(f"{source}: a reference is a prepared data set directory or an .npz file")
    try:
        with np.load(path, allow_pickle=False) as data:
            has_stats = {"mu", "sigma"} <= set(data.files)
            if has_stats:
                mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except Exception as err:  # numpy and zipfile raise many types for a bad file; one line for the user
        raise _unreadable(source, err) from None
    if has_stats:
        if mu.shape != (FEATURE_DIM,) or sigma.shape != (FEATURE_DIM, FEATURE_DIM):
            raise EvalReferenceError(f"{source}: mu / sigma must be [{FEATURE_DIM}] / [{FEATURE_DIM}, {FEATURE_DIM}] "
                                 f"(got {list(mu.shape)} / {list(sigma.shape)})")  # fmt: skip
        return Reference(str(path), "stats", sha256_file(path), mu=mu, sigma=sigma)
    images = load_images_npz(path, what="reference")
    images = images[:limit] if limit else images
    return Reference(str(path), "images", sha256_file(path), num=len(images), images=images)


def numerics() -> str:
    """The device and float32 convolution precision statistics are computed with here, e.g. ``CPU conv fp32``."""
    import mindspore as ms

    from ..device import conv_precision

    return f"{ms.get_context('device_target')} conv {conv_precision()}"


def cache_key(ref: Reference, *, weights_sha256: str, numerics_id: str | None = None) -> str:
    """Hex key of the statistics of ``ref`` under the current protocol, weights and numerics (``numerics_id``,
    default :func:`numerics` of the current device)."""
    fields = {"protocol": PROTOCOL, "weights": weights_sha256, "content": ref.content_id, "num": ref.num,
              "numerics": numerics() if numerics_id is None else numerics_id}  # fmt: skip
    text = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    """``$DDPM_DIST_CACHE/fid``, else ``$XDG_CACHE_HOME/ddpm_dist/fid``, else ``~/.cache/ddpm_dist/fid``."""
    if os.environ.get("DDPM_DIST_CACHE"):
        return Path(os.environ["DDPM_DIST_CACHE"]) / "fid"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm_dist" / "fid"


def read_cached(cache_dir: Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) from the cache, or None if absent or unreadable (then it is recomputed)."""
    path = Path(cache_dir) / f"ref_{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (OSError, KeyError, ValueError):
        return None


def write_cached(cache_dir: Path, key: str, mu: np.ndarray, sigma: np.ndarray, *, info: dict) -> Path:
    """Store statistics atomically (temporary file, then rename); ``info`` is kept beside them as JSON."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"ref_{key}.npz"
    tmp = cache_dir / f".ref_{key}.partial-{os.getpid()}.npz"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, info=np.array(json.dumps(info, sort_keys=True)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
