"""The embedded default data set: scikit-learn's copy of the UCI handwritten digits (1797 images, 8x8, 10 classes).

It ships inside scikit-learn, so a fresh machine can train without a download. scikit-learn is imported here only, on
call: it is a dependency of the quickstart (``pip install 'ddpm-dist[quickstart]'``), not of the package.

Splits (``tools/prepare_data.py --split``): ``train`` is all 1797 images (the quickstart's data); ``fit`` and ``test``
are the digits metric's fixed split (:mod:`ddpm_dist.eval.digits`, which takes it from here): a permutation of the
1797 indices by ``numpy.random.default_rng(SPLIT_SEED)``, whose first ``NUM_FIT`` (1200) are ``fit`` (the images the
metric's classifier trains on) and whose other 597 are ``test`` (the metric's held-out reference), each in that
permutation's order. A model trained on ``fit`` has never seen the digits it is scored against nor the ``test`` images
its likelihood is measured on.
"""

from __future__ import annotations

import numpy as np

from ddpm_dist.data import DataError

DEFAULT_IMAGE_SIZE = 16
UPSAMPLE_MODES = ("nearest", "bicubic")
DEFAULT_UPSAMPLE = "nearest"
SPLIT_SEED = 0
NUM_FIT = 1200
SPLITS = ("train", "fit", "test")  # all 1797 | the metric's 1200 | the metric's 597 held-out


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


def split_indices(count: int) -> dict[str, np.ndarray]:
    """{"train": all of 0..count-1 in order, "fit": the first NUM_FIT of the permutation by SPLIT_SEED, "test": the
    rest of it} as int64 index arrays into :func:`source_digits` (count: 1797)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    return {"train": np.arange(count), "fit": order[:NUM_FIT], "test": order[NUM_FIT:]}


def load_digits_images(
    *, image_size: int = DEFAULT_IMAGE_SIZE, upsample: str = DEFAULT_UPSAMPLE, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, image_size, image_size, 1] in 0..255, labels int32 [N] in 0..9) of ``split`` (see
    the module docstring: train N = 1797, fit 1200, test 597).

    The 8x8 sources (:func:`source_digits`) are resized with ``upsample``: ``nearest`` (the default) repeats each
    pixel, so the images hold exactly the information of the source (at 16x16: 2x2 blocks); ``bicubic`` smooths, which
    adds blur and ringing the source never had (measured: a bicubic training set is several times further from real
    held-out digits in the digits metric than a nearest one, see docs/evaluation.md).
    """
    if upsample not in UPSAMPLE_MODES:
        raise DataError(f"unknown upsampling {upsample!r} (choose {', '.join(UPSAMPLE_MODES)})")
    if split not in SPLITS:
        raise DataError(f"unknown digits split {split!r} (choose {', '.join(SPLITS)})")
    from PIL import Image

    small, labels = source_digits()
    keep = split_indices(len(small))[split]
    small, labels = small[keep], labels[keep]
    if image_size == small.shape[1]:
        images = small
    else:
        size = (image_size, image_size)
        resample = Image.NEAREST if upsample == "nearest" else Image.BICUBIC
        images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize(size, resample)) for img in small])
    return images[..., None], labels
