"""The embedded default data set: scikit-learn's copy of the UCI handwritten digits (1797 images, 8x8, 10 classes).

It ships inside scikit-learn, so a fresh machine can train without a download. scikit-learn is imported here only, on
call: it is a dependency of the quickstart (``pip install 'ddpm-dist[quickstart]'``), not of the package.
"""

from __future__ import annotations

import numpy as np

from ddpm_dist.data import DataError

DEFAULT_IMAGE_SIZE = 16
UPSAMPLE_MODES = ("nearest", "bicubic")
DEFAULT_UPSAMPLE = "nearest"


def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The raw data set: (images uint8 [1797, 8, 8] in 0..255, labels int32 [1797] in 0..9), in scikit-learn's order.

    The 0..16 source values are scaled to 0..255 and rounded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits data set needs scikit-learn: pip install 'ddpm-dist[quickstart]' (or pip install scikit-learn)"
        ) from None
    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return small, digits.target.astype(np.int32)


def load_digits_images(
    *, image_size: int = DEFAULT_IMAGE_SIZE, upsample: str = DEFAULT_UPSAMPLE
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [1797, image_size, image_size, 1] in 0..255, labels int32 [1797] in 0..9).

    The 8x8 sources (:func:`source_digits`) are resized with ``upsample``: ``nearest`` (the default) repeats each
    pixel, so the images hold exactly the information of the source (at 16x16: 2x2 blocks); ``bicubic`` smooths, which
    adds blur and ringing the source never had (measured: a bicubic training set is several times further from real
    held-out digits in the digits metric than a nearest one, see docs/evaluation.md).
    """
    if upsample not in UPSAMPLE_MODES:
        raise DataError(f"unknown upsampling {upsample!r} (choose {', '.join(UPSAMPLE_MODES)})")
    from PIL import Image

    small, labels = source_digits()
    if image_size == small.shape[1]:
        images = small
    else:
        size = (image_size, image_size)
        resample = Image.NEAREST if upsample == "nearest" else Image.BICUBIC
        images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize(size, resample)) for img in small])
    return images[..., None], labels
