"""Sample pixels and the files that show them: float samples to uint8, readable grids, atomic PNGs.

Two roundings, each the one its outputs have always had (changing either would change saved pixels):

- :func:`to_uint8` rounds half to even (``np.rint``): the sample arrays - ``samples.npz``, the images a metric scores.
- :func:`grid_image` rounds float images half up (``+ 0.5``, then truncation): the training run's EMA grids, in
  their PNGs and in TensorBoard. The two differ only where ``(x + 1) * 127.5`` is a half integer in float32.

A grid of samples that are already uint8 (``tools/sample.py``'s ``grid.png``) is :func:`tile_grid` of those pixels
as they are. numpy and PIL only: no MindSpore, no console.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (round((x + 1) * 127.5), clipped)."""
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def tile_grid(cells: np.ndarray, *, nrow: int | None = None, min_cell: int = 64, border: int = 1) -> np.ndarray:
    """One readable grid of ``cells`` (uint8 [N, H, W, C]): uint8 [rows, cols, C].

    Each image is upscaled by nearest neighbour with the smallest integer factor that makes it at least ``min_cell``
    pixels on its longer side (a 16x16 digit becomes 64x64; 64 px and larger stay as they are), and the cells are
    separated and framed by ``border`` pixels of mid grey (128), which stands out on black and on white backgrounds.
    ``nrow`` images per row (default: ceil(sqrt(N))).
    """
    n, h, w, c = cells.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    scale = max(1, -(-min_cell // max(h, w)))
    ch, cw = h * scale, w * scale
    cells = cells.repeat(scale, axis=1).repeat(scale, axis=2)
    grid = np.full((ncol * (ch + border) + border, nrow * (cw + border) + border, c), 128, np.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        top, left = border + r * (ch + border), border + q * (cw + border)
        grid[top : top + ch, left : left + cw] = cells[k]
    return grid


def grid_image(images: np.ndarray, *, nrow: int | None = None, min_cell: int = 64, border: int = 1) -> np.ndarray:
    """:func:`tile_grid` of ``images`` (float32 [N, C, H, W] in [-1, 1], rounded half up to uint8): uint8
    [rows, cols, C]."""
    cells = (np.clip((images + 1.0) / 2.0, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return tile_grid(cells.transpose(0, 2, 3, 1), nrow=nrow, min_cell=min_cell, border=border)


def write_png(pixels: np.ndarray, path) -> None:
    """Write ``pixels`` (uint8 [H, W, C], C = 1 or 3) as a PNG at ``path``, atomically (a temporary file beside it,
    then a rename)."""
    from PIL import Image

    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)


def save_grid_png(images: np.ndarray, path, *, nrow: int | None = None) -> None:
    """Write ``images`` (float32 [N, C, H, W] in [-1, 1]) as one PNG grid (:func:`grid_image`), atomically."""
    write_png(grid_image(images, nrow=nrow), path)
