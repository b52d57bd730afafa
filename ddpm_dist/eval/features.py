"""Inception features of a set of uint8 images, computed in shards across the ranks and gathered
(``parallel.shards.sharded_map``): every rank ends with the features of all N images, in order. With one process it
is plain batching.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import FEATURE_DIM, NUM_LOGITS, EvalError


class FeatureError(EvalError):
    """Images the Inception network cannot take (dtype, shape, channels). The message is one line."""


def to_network_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] (C = 1 or 3) -> float32 [N, 3, H, W] in [0, 1]; gray images are repeated to RGB."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
        raise FeatureError(f"expected uint8 images [N, H, W, 1 or 3] (got {images.dtype} {list(images.shape)})")
    x = images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    return np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x


class FeatureExtractor:
    """``extractor(images) -> (pool float32 [N, 2048], logits float32 [N, 1008])`` on every rank.

    ``weights``: a checkpoint from ``tools/convert_inception.py``. One network is compiled per image size seen.
    Every rank must call it with the same images (the collectives pair up batch by batch).
    """

    def __init__(self, weights, *, batch_size: int):
        from .weights import read

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.weights = weights
        self.batch_size = batch_size
        self._arrays, self.meta = read(weights)  # fail early, before any sampling, on a missing or wrong file
        self._nets: dict = {}

    @property
    def fingerprint(self) -> str:
        """The sha256 of the pytorch-fid file the weights were converted from."""
        return str(self.meta.get("source_sha256", "unknown"))

    def _net(self, size: tuple[int, int]):
        if size not in self._nets:
            from .weights import network

            self._nets[size] = network(self._arrays, input_size=size, source=self.weights)
        return self._nets[size]

    def __call__(
        self, images: np.ndarray, *, progress: Callable[[int, int], None] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        import mindspore as ms

        from ddpm_dist.parallel.shards import sharded_map

        to_network_input(images[:1])  # check dtype and shape before any work
        n = len(images)
        if n < 1:
            raise FeatureError("no images to evaluate")
        net = self._net(tuple(images.shape[1:3]))

        def features(indices: np.ndarray, _batch: int):
            pool, logits = net(ms.Tensor(to_network_input(images[indices])))
            return ms.ops.concat((pool, logits), axis=1)

        out = np.zeros((n, FEATURE_DIM + NUM_LOGITS), np.float32)
        sharded_map(features, num_samples=n, batch_size=self.batch_size, out=out, after_batch=progress)
        return out[:, :FEATURE_DIM], out[:, FEATURE_DIM:]
