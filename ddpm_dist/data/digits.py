"""The embedded default data set: scikit-learn's copy of the UCI handwritten digits (1797 images, 8x8, 10 classes).

It ships inside scikit-learn, so a fresh machine can train without a download. scikit-learn is imported here only, on
call: it is a dependency of the quickstart (``pip install 'ddpm-dist[quickstart]'``), not of the package.
"""

from __future__ import annotations

import numpy as np

from ddpm_dist.data import DataError

DEFAULT_IMAGE_SIZE = 16


def load_digits_images(*, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [1797, image_size, image_size, 1] in 0..255, labels int32 [1797] in 0..9).

    The 0..16 source values are scaled to 0..255 and upsampled with a smooth (bicubic) resize, so a small U-Net on CPU
    sees soft strokes rather than 2x2 blocks.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError(
            "the digits data set needs scikit-learn: pip install 'ddpm-dist[quickstart]' (or pip install scikit-learn)"
        ) from None
    from PIL import Image

    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # [N, 8, 8]
    if image_size == small.shape[1]:
        images = small
    else:
        size = (image_size, image_size)
        images = np.stack([np.asarray(Image.fromarray(img, mode="L").resize(size, Image.BICUBIC)) for img in small])
    return images[..., None], digits.target.astype(np.int32)
