"""Sample grids people can read: nearest upscaling to >= 64 px per image and thin borders, in the PNGs and in
TensorBoard (one function, ``ddpm_dist.images.grid_image``), and the uint8 conversion of samples beside it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ddpm_dist.images import grid_image, save_grid_png, tile_grid, to_uint8
from ddpm_dist.logging import TensorBoard


def _images(n: int, c: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [n, c, size, size] in [-1, 1], the uint8 pixels they stand for)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (n, c, size, size), dtype=np.uint8)
    pixels[..., 0, 0] = 128  # a border-coloured pixel inside an image must not confuse the layout checks
    return pixels.astype(np.float32) / 127.5 - 1.0, pixels


@pytest.mark.parametrize("size, scale", [(8, 8), (16, 4), (32, 2), (28, 3), (64, 1), (96, 1)])
def test_each_image_is_upscaled_by_nearest_neighbour_to_at_least_64_px(size, scale):
    images, pixels = _images(5, 1, size)
    grid = grid_image(images)  # 3 per row, 2 rows
    cell = size * scale
    assert grid.shape == (2 * (cell + 1) + 1, 3 * (cell + 1) + 1, 1) and grid.dtype == np.uint8
    for k in range(5):
        r, q = divmod(k, 3)
        top, left = 1 + r * (cell + 1), 1 + q * (cell + 1)
        expected = np.kron(pixels[k, 0], np.ones((scale, scale), np.uint8))
        np.testing.assert_array_equal(grid[top : top + cell, left : left + cell, 0], expected)


def test_cells_are_separated_and_framed_by_a_thin_grey_border_and_empty_cells_stay_grey():
    images, _ = _images(3, 3, 16)
    grid = grid_image(images, nrow=2)  # 2 per row: the 4th cell is empty
    assert grid.shape == (2 * 65 + 1, 2 * 65 + 1, 3)
    for line in (0, 65, 130):
        assert (grid[line, :, :] == 128).all() and (grid[:, line, :] == 128).all()
    assert (grid[66:130, 66:130] == 128).all()
    assert not (grid[1:65, 1:65] == 128).all()


def test_values_are_clipped_and_rounded_like_uint8_conversion():
    images = np.array([-2.0, -1.0, 0.0, 1.0, 3.0], np.float32).reshape(1, 1, 1, 5).repeat(5, axis=2)
    grid = grid_image(images, min_cell=5)
    np.testing.assert_array_equal(grid[1, 1:6, 0], [0, 0, 128, 255, 255])


def test_uint8_samples_tile_to_the_grid_of_the_floats_they_stand_for():
    """tools/sample.py tiles its uint8 samples as they are: the grid it always drew from them via floats."""
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)  # every uint8 value
    floats = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    np.testing.assert_array_equal(tile_grid(pixels, nrow=3), grid_image(floats, nrow=3))
    rgb = pixels.repeat(3, axis=3)
    rgb[..., 1] = 255 - rgb[..., 1]
    np.testing.assert_array_equal(tile_grid(rgb), grid_image(rgb.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1))


def test_samples_become_uint8_nhwc_rounded_half_to_even_and_clipped():
    """to_uint8 (the sample files) rounds half to even, the grids round half up: float32 -0.4 scales to exactly 76.5."""
    x = np.array([-2.0, -1.0, 0.0, 1.0, 3.0, -0.4], np.float32).reshape(1, 1, 1, 6)
    x = np.concatenate([x, x[..., ::-1]], axis=1)  # [1, 2, 1, 6]: two channels
    images = to_uint8(x)
    assert images.shape == (1, 1, 6, 2) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[0, 0, :, 0], [0, 0, 128, 255, 255, 76])
    np.testing.assert_array_equal(images[0, 0, :, 1], [76, 255, 255, 128, 0, 0])
    assert grid_image(x[:, :1], min_cell=1, border=0)[0, 5, 0] == 77


def test_the_png_is_the_grid(tmp_path):
    images, _ = _images(64, 1, 16)
    save_grid_png(images, tmp_path / "g.png")
    png = np.asarray(Image.open(tmp_path / "g.png"))
    assert png.shape == (8 * 65 + 1, 8 * 65 + 1)  # 64 digits of 16x16: 521 px, not 128
    np.testing.assert_array_equal(png, grid_image(images)[:, :, 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no temporary file left


def test_tensorboard_shows_the_same_grid(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images, _ = _images(16, 3, 16)
    tb = TensorBoard(str(tmp_path), rank=0)
    tb.images("samples/ema", images, 7)
    tb.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    (event,) = acc.Images("samples/ema")
    assert event.step == 7 and (event.height, event.width) == (4 * 65 + 1, 4 * 65 + 1)
    import io

    shown = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(shown, grid_image(images))


def test_the_tensorboard_writer_does_not_load_pytorch_into_the_worker(tmp_path):
    """tensorboardX imports torch when it is installed (~4 s and a second OpenMP runtime per worker); the board hides
    it for that import, and torch stays importable afterwards."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed: nothing to hide")
    code = (
        "import sys; from ddpm_dist.logging import TensorBoard\n"
        f"board = TensorBoard({str(tmp_path)!r}, rank=0); board.scalars({{'a': 1.0}}, 1); board.close()\n"
        "print('torch' in sys.modules)\n"
        "import torch; print(torch.__name__)\n"
    )
    from train_helpers import env

    out = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "torch"]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
