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

import io
import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def default_workers() -> int:
    """Decoding threads when none are asked for: the CPUs this process may use, at most 16."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(16, cpus))


class ImageDecoder:
    """Encoded images (paths or bytes) -> chunks of uint8 [n, size, size, channels] via :func:`fit_image`, for the
    readers that decode one image at a time (``folder``, ``lsun``).

    ``workers`` threads decode (PIL releases the GIL while it decodes and resizes); the results are taken in sample
    order, so the output and the counts do not depend on ``workers``. ``info`` (the reader's manifest extras) counts
    ``upscaled`` images (shorter side below ``size``) and ``skipped`` undecodable ones with up to five
    ``skipped_examples``; under ``strict`` an undecodable image is a DataError naming the first one in sample order."""

    def __init__(self, *, size: int, channels: int, strict: bool, info: dict, origin: str, workers: int = 1) -> None:
        self.size, self.channels, self.strict, self.info, self.origin = size, channels, strict, info, origin
        self.workers = workers
        info.update(upscaled=0, skipped=0, skipped_examples=[])

    def decode(self, file) -> tuple[np.ndarray | None, bool, str]:
        """One image: (pixels or None, whether it was upscaled, the error or ""). ``file``: a path or bytes.
        Touches no shared state (runs in the worker threads)."""
        from PIL import Image, ImageOps

        try:
            with Image.open(io.BytesIO(file) if isinstance(file, bytes) else file) as im:
                im = ImageOps.exif_transpose(im)
                fitted = fit_image(im, self.size, self.channels)
                return np.asarray(fitted).reshape(self.size, self.size, self.channels), min(im.size) < self.size, ""
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            return None, False, first_line(err)

    def chunks(self, items: Iterator[tuple[object, str, int]], limit: int | None) -> Chunks:
        """(path or bytes, name, label) in sample order -> chunks of up to ``ROWS_PER_WRITE`` decoded images, stopping
        after ``limit`` of them (None: all). ``name`` says which image of ``origin`` it is in messages and
        ``skipped_examples``. Items are read a chunk at a time, none past the limit; with threads the next chunk is
        decoded while the caller writes this one."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode") if self.workers > 1 else None
        mapper = pool.map if pool is not None else map  # pool.map submits at once; map decodes when iterated
        kept = 0

        def start() -> tuple[list, Iterator] | None:
            want = ROWS_PER_WRITE if limit is None else min(ROWS_PER_WRITE, limit - kept)
            batch = list(itertools.islice(items, want)) if want > 0 else []
            return (batch, mapper(self.decode, [b[0] for b in batch])) if batch else None

        try:
            pending = start()
            while pending is not None:
                images, labels = self._keep(*pending)
                kept += len(images)
                pending = start()
                if images:
                    yield np.stack(images), np.array(labels, np.int32)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)

    def _keep(self, batch: list, results: Iterator) -> tuple[list[np.ndarray], list[int]]:
        """The decoded images of ``batch`` and their labels, in order; counts the upscaled and the skipped ones."""
        images, labels = [], []
        for (_, name, label), (pixels, upscaled, error) in zip(batch, results, strict=True):
            if error:
                self._skip(name, error)
            else:
                self.info["upscaled"] += upscaled
                images.append(pixels)
                labels.append(label)
        return images, labels

    def _skip(self, name: str, error: str) -> None:
        if self.strict:
            raise DataError(f"unreadable image {name} in {self.origin} ({error})")
        self.info["skipped"] += 1
        if len(self.info["skipped_examples"]) < 5:
            self.info["skipped_examples"].append(name)
