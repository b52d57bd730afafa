"""Decode, crop and resize images for the converters: the one preprocessing rule, and the chunks readers hand over.

Every image that is not already ``image_size`` x ``image_size`` is fitted by one rule, :func:`fit_image`, for every
source of :mod:`ddpm_dist.data.convert`: convert to ``channels``, crop the largest centered square (side = the shorter
side, the odd pixel of the excess at the right / bottom), then resize that square to ``image_size`` with Lanczos
(PIL's antialiasing filter). This is the DDPM
paper's LSUN preprocessing: its TPU code reads LSUN from TFRecords made by StyleGAN2's ``dataset_tool.py
create_lsun``, which crops ``img[(h - c) // 2 : (h + c) // 2, (w - c) // 2 : (w + c) // 2]`` with ``c = min(h, w)``
and resizes with ``PIL.Image.ANTIALIAS`` (= LANCZOS). Its CelebA-HQ came from tensorflow_datasets' ``celeb_a_hq/256``
(square images: no crop; those were box-downsampled from 1024 by the progressive-GAN tools, so a 1024 -> 256 Lanczos
resize here differs from them by a few levels per pixel). improved-diffusion instead halves with a box filter while
the shorter side is >= 2x the size, resizes bicubic and crops last: not what DDPM trained on. LSUN's images have a
shorter side of 256, so at 256 px LSUN is a pure crop. An image smaller than ``image_size`` (shorter side) is upscaled
by the same rule, as StyleGAN2's tool does; the readers count those in the manifest's ``upscaled``. CIFAR-10 / MNIST
resizes (``--image-size`` other than 32 / 28) use the same rule (their images are square: a resize only).

numpy and PIL only (PIL imported when an image is first fitted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ddpm_dist.data import DataError
from ddpm_dist.errors import first_line

ROWS_PER_WRITE = 1000  # images per chunk a reader yields (one FileWriter.write_raw_data call)

Chunks = Iterator[tuple[np.ndarray, np.ndarray]]  # (uint8 [n, H, W, C], int32 [n])


@dataclass
class Source:
    """What a reader hands to the writer: chunks of images of one size, and what goes into the manifest."""

    count_hint: int  # exact for arrays; for folders / LMDBs the candidates (an upper bound), at most --limit
    image_size: int
    channels: int
    chunks: Chunks
    info: dict = field(default_factory=dict)  # extra manifest keys; a reader may fill it while it is being iterated


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centered square of a ``width`` x ``height`` image: PIL box (left, top, right, bottom).

    The side is ``min(width, height)``; the excess of the longer side is split with the extra pixel (odd excess) on the
    right / bottom, as StyleGAN2's ``create_lsun`` slices ``[(h - c) // 2 : (h + c) // 2]``."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def fit_image(image, size: int, channels: int):
    """PIL image -> ``size`` x ``size`` with ``channels``: the centered square (:func:`center_square`), resized with
    Lanczos (PIL's antialiasing filter) when its side is not ``size``; up as well as down."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.crop(center_square(*image.size))
        if image.size != (size, size):
            image = image.resize((size, size), Image.LANCZOS)
    return image


def resize_array(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> uint8 [N, size, size, channels]; returned unchanged when it already fits."""
    if images.shape[1:] == (size, size, channels):
        return images
    from PIL import Image

    out = np.empty((images.shape[0], size, size, channels), np.uint8)
    for i, img in enumerate(images):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(fit_image(pil, size, channels)).reshape(size, size, channels)
    return out


class ImageDecoder:
    """Encoded images (files or bytes) -> uint8 [size, size, channels] via :func:`fit_image`, for the readers that
    decode one image at a time (``folder``, ``lsun``).

    ``info`` (the reader's manifest extras) counts ``upscaled`` images (shorter side below ``size``) and ``skipped``
    undecodable ones with up to five ``skipped_examples``; under ``strict`` an undecodable image is a DataError."""

    def __init__(self, *, size: int, channels: int, strict: bool, info: dict, origin: str) -> None:
        self.size, self.channels, self.strict, self.info, self.origin = size, channels, strict, info, origin
        info.update(upscaled=0, skipped=0, skipped_examples=[])

    def __call__(self, file, name: str) -> np.ndarray | None:
        """``file``: a path or a binary file object; ``name`` says which image of ``origin`` (the input) it is, in
        messages and ``skipped_examples``. None if skipped."""
        from PIL import Image, ImageOps

        try:
            with Image.open(file) as im:
                im = ImageOps.exif_transpose(im)
                if min(im.size) < self.size:
                    self.info["upscaled"] += 1
                fitted = fit_image(im, self.size, self.channels)
                return np.asarray(fitted).reshape(self.size, self.size, self.channels)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            if self.strict:
                raise DataError(f"unreadable image {name} in {self.origin} ({first_line(err)})") from None
            self.info["skipped"] += 1
            if len(self.info["skipped_examples"]) < 5:
                self.info["skipped_examples"].append(name)
            return None


def stream_chunks(images: Iterator[tuple[np.ndarray | None, int]], limit: int | None) -> Chunks:
    """(image or None for a skipped one, label) pairs -> chunks of up to ``ROWS_PER_WRITE`` kept images, stopping
    after ``limit`` of them (None: all). Lazy: nothing past the limit is decoded."""
    kept: list[tuple[np.ndarray, int]] = []
    total = 0
    for image, label in images:
        if limit is not None and total >= limit:
            break
        if image is None:
            continue
        kept.append((image, label))
        total += 1
        if len(kept) == ROWS_PER_WRITE:
            yield np.stack([k[0] for k in kept]), np.array([k[1] for k in kept], np.int32)
            kept = []
    if kept:
        yield np.stack([k[0] for k in kept]), np.array([k[1] for k in kept], np.int32)
