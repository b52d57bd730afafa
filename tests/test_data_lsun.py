"""LSUN LMDB and image-folder conversion: the center-square crop + Lanczos resize checked against the crop box computed
here, key order, shards, --limit, skipped values, the pipeline's r::W rows across shard files, and bad inputs."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fakes import CROP_CASES, encoded_images, lsun_key, make_lmdb
from PIL import Image
from test_data_convert import read_back

from ddpm_dist.data import DataError
from ddpm_dist.data.convert import auto_shards, convert
from ddpm_dist.data.decode import center_square
from ddpm_dist.data.pipeline import TrainData, read_manifest, verify_checksums

pytest.importorskip("lmdb")

SIZE = 24


def expected_fit(rgb: np.ndarray, size: int) -> np.ndarray:
    """The paper's preprocessing, computed independently: the centered square by integer arithmetic (StyleGAN2's
    ``create_lsun`` slices), then PIL's Lanczos resize when its side is not ``size``."""
    h, w = rgb.shape[:2]
    c = min(h, w)
    square = rgb[(h - c) // 2 : (h + c) // 2, (w - c) // 2 : (w + c) // 2]
    assert square.shape[:2] == (c, c)
    if c == size:
        return square
    return np.asarray(Image.fromarray(square).resize((size, size), Image.LANCZOS))


def nothing_left(parent: Path, out: str = "out") -> bool:
    return not (parent / out).exists() and not [p for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 14 encoded images (7 shapes x 2 seeds) as an LMDB (sha1 keys) and as a flat folder (files named so that
    the folder's sorted order is the LMDB's key order). Returns (lmdb dir, folder, decoded RGB arrays in key order)."""
    root = tmp_path_factory.mktemp("sources")
    items = encoded_images(seed=0) + encoded_images(seed=1)
    keyed = sorted(((lsun_key(i), item) for i, item in enumerate(items)), key=lambda kv: kv[0])
    lmdb_dir = make_lmdb(root / "church_outdoor_train_lmdb", {key: item[0] for key, item in reversed(keyed)})
    folder = root / "folder"
    folder.mkdir()
    for key, (blob, _, fmt) in keyed:
        (folder / f"{key.decode()}.{ {'WEBP': 'webp', 'JPEG': 'jpg', 'PNG': 'png'}[fmt] }").write_bytes(blob)
    return lmdb_dir, folder, [item[1] for _, item in keyed]


@pytest.fixture(scope="module")
def converted(sources, tmp_path_factory):
    """{source: (output dir, manifest)}: both sources converted at 24 px into 3 shard files."""
    lmdb_dir, folder, _ = sources
    out = tmp_path_factory.mktemp("converted")
    result = {}
    for source, path in (("lsun", lmdb_dir), ("folder", folder)):
        m = convert(source=source, input_path=str(path), output=str(out / source), image_size=SIZE, shards=3)
        result[source] = (out / source, m)
    return result


# ------------------------------------------------------------------------------------------------ crop + resize


def test_center_square_box():
    assert center_square(50, 29) == (10, 0, 39, 29)  # odd excess 21: 10 columns off the left, 11 off the right
    assert center_square(24, 37) == (0, 6, 24, 30)
    assert center_square(40, 24) == (8, 0, 32, 24)
    assert center_square(33, 33) == (0, 0, 33, 33)


@pytest.mark.parametrize("source", ["lsun", "folder"])
def test_conversion_matches_the_independent_crop_and_resize(sources, converted, source):
    _, _, decoded = sources
    out, m = converted[source]
    images, labels, index = read_back(out)
    expected = np.stack([expected_fit(rgb, SIZE) for rgb in decoded])
    assert images.shape == (len(decoded), SIZE, SIZE, 3) and m["count"] == len(decoded)
    np.testing.assert_array_equal(index, np.arange(len(decoded)))
    np.testing.assert_array_equal(labels, 0)
    np.testing.assert_array_equal(images, expected)
    # the crop box matters: a square taken from the top-left corner gives other pixels for every non-square image
    corner = np.stack([expected_fit(rgb[: min(rgb.shape[:2]), : min(rgb.shape[:2])], SIZE) for rgb in decoded])
    moved = [i for i, rgb in enumerate(decoded) if rgb.shape[0] != rgb.shape[1]]
    assert all(not np.array_equal(images[i], corner[i]) for i in moved) and len(moved) == 12
    assert m["upscaled"] == 2 and m["skipped"] == 0  # the 16 x 21 image, once per seed
    assert [f["count"] for f in m["files"]] == [5, 5, 4]
    verify_checksums(read_manifest(str(out)))


def test_lsun_manifest(converted, sources):
    _, m = converted["lsun"]
    assert (m["source"], m["source_format"], m["image_size"], m["channels"]) == ("lsun", "lmdb", SIZE, 3)
    assert m["input"] == str(sources[0]) and m["num_classes"] == 1 and m["lmdb_entries"] == 14
    assert "limit" not in m


def test_gray_output_and_a_pure_crop(sources, tmp_path):
    """--channels 1: the gray conversion comes first; the 40 x 24 image at 24 px is a crop without resampling."""
    lmdb_dir, _, decoded = sources
    m = convert(source="lsun", input_path=str(lmdb_dir), output="gray", image_size=24, channels=1, shards=1)
    images, _, _ = read_back(Path("gray"))
    assert m["channels"] == 1 and len(m["files"]) == 1
    for i, rgb in enumerate(decoded):
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        np.testing.assert_array_equal(images[i, ..., 0], expected_fit(gray, 24))
    pure = [i for i, rgb in enumerate(decoded) if rgb.shape[:2] == (24, 40)]
    gray = np.asarray(Image.fromarray(decoded[pure[0]]).convert("L"))
    np.testing.assert_array_equal(images[pure[0], ..., 0], gray[:, 8:32])


# ------------------------------------------------------------------------------------------------ pipeline


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_pipeline_rows_are_r_mod_w_across_shard_files(converted, sources, world_size):
    out, m = converted["lsun"]
    expected = np.stack([expected_fit(rgb, SIZE) for rgb in sources[2]])
    make = lambda r, w: TrainData(path=str(out), global_batch=8, rank=r, world_size=w, seed=5, timesteps=10,  # noqa: E731
                                  random_flip=False, image_size=SIZE, channels=3, num_parallel_workers=1)  # fmt: skip
    steps = 3  # 1 step per epoch (14 // 8): three epochs, three permutations
    single = list(itertools.islice(iter(make(0, 1)), steps))
    ranks = [list(itertools.islice(iter(make(r, world_size)), steps)) for r in range(world_size)]
    file_of = np.repeat(np.arange(len(m["files"])), [f["count"] for f in m["files"]])
    for step in range(steps):
        ids = make(0, 1).batch_plan(step)[0]
        np.testing.assert_array_equal(single[step][0], expected[ids].transpose(0, 3, 1, 2) / np.float32(127.5) - 1)
        assert len(set(file_of[ids].tolist())) > 1  # the batch reads several shard files
        for r in range(world_size):
            for k in range(3):  # x0, t, noise
                np.testing.assert_array_equal(ranks[r][step][k], single[step][k][r::world_size])


# ------------------------------------------------------------------------------------------------ limit, skips


def test_limit_takes_the_first_readable_images_in_key_order(tmp_path):
    items = encoded_images(CROP_CASES[:4])
    keys = [b"k0", b"k1", b"k2", b"k3", b"k4"]
    values = {keys[0]: items[0][0], keys[1]: b"not an image", keys[2]: items[1][0], keys[3]: items[2][0],
              keys[4]: items[3][0]}  # fmt: skip
    make_lmdb(tmp_path / "db", values)
    m = convert(source="lsun", input_path=str(tmp_path / "db"), output="out", image_size=16, limit=3)
    images, _, _ = read_back(Path("out"))
    np.testing.assert_array_equal(images, np.stack([expected_fit(items[i][1], 16) for i in range(3)]))
    assert (m["count"], m["limit"], m["skipped"], m["skipped_examples"]) == (3, 3, 1, ["k1"])
    m = convert(source="lsun", input_path=str(tmp_path / "db"), output="all", image_size=16)
    assert m["count"] == 4 and m["skipped"] == 1
    with pytest.raises(DataError, match=r"unreadable image k1 in .*db \(cannot identify image file"):
        convert(source="lsun", input_path=str(tmp_path / "db"), output="strict", image_size=16, strict=True)
    assert nothing_left(tmp_path, "strict")


def test_folder_limit(sources, tmp_path):
    _, folder, decoded = sources
    m = convert(source="folder", input_path=str(folder), output="out", image_size=SIZE, limit=5)
    images, _, _ = read_back(Path("out"))
    assert m["count"] == 5 and m["limit"] == 5
    assert m["upscaled"] == sum(min(rgb.shape[:2]) < SIZE for rgb in decoded[:5])
    np.testing.assert_array_equal(images, np.stack([expected_fit(rgb, SIZE) for rgb in decoded[:5]]))


def test_shard_counts(sources, tmp_path):
    lmdb_dir, _, _ = sources
    for shards, counts in ((1, [14]), (4, [4, 4, 4, 2]), (14, [1] * 14), (20, [1] * 14)):
        m = convert(source="lsun", input_path=str(lmdb_dir), output=f"s{shards}", image_size=8, shards=shards)
        assert [f["count"] for f in m["files"]] == counts
        assert len([p for p in os.listdir(f"s{shards}") if p.endswith(".mindrecord")]) == len(counts)


def test_default_shard_counts_of_the_256_px_data_sets():
    """The figures in docs/data.md: about 256 MiB of pixels per file, at most 256 files."""
    image_bytes = 256 * 256 * 3
    assert auto_shards(126_227, image_bytes) == 93  # LSUN church_outdoor train
    assert auto_shards(3_033_042, image_bytes) == 256  # LSUN bedroom train: capped, ~2.3 GB per file
    assert auto_shards(30_000, image_bytes) == 22  # CelebA-HQ
    assert auto_shards(100_000, image_bytes) == 74  # a 100k-image --limit subset


# ------------------------------------------------------------------------------------------------ bad inputs


def test_not_an_lmdb(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"not an LMDB export: .*photos holds no data.mdb"):
        convert(source="lsun", input_path=str(tmp_path / "photos"), output="out", image_size=8)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(os.urandom(20000))
    with pytest.raises(DataError, match=r"not an LMDB export: .*junk/data.mdb cannot be opened"):
        convert(source="lsun", input_path=str(tmp_path / "junk"), output="out", image_size=8)
    (tmp_path / "church_outdoor_train_lmdb.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match=r"is a file: give the LMDB directory .*unzip"):
        convert(source="lsun", input_path=str(tmp_path / "church_outdoor_train_lmdb.zip"), output="out", image_size=8)
    assert nothing_left(tmp_path)


def test_empty_lmdb_and_only_undecodable_values(tmp_path):
    make_lmdb(tmp_path / "empty", {})
    with pytest.raises(DataError, match=r"empty LMDB: .*empty holds no images"):
        convert(source="lsun", input_path=str(tmp_path / "empty"), output="out", image_size=8)
    make_lmdb(tmp_path / "bad", {b"a": b"garbage", b"b": b""})
    with pytest.raises(DataError, match=r"no readable images in .*bad \(2 unreadable\)"):
        convert(source="lsun", input_path=str(tmp_path / "bad"), output="out", image_size=8)
    assert nothing_left(tmp_path)


def test_lsun_settings(sources, tmp_path):
    lmdb_dir, _, _ = sources
    for kwargs, needle in (
        ({}, "--image-size is required for --source lsun"),
        ({"image_size": 0}, r"--image-size must be in \[1, 1024\] \(got 0\)"),
        ({"image_size": 8, "limit": 0}, r"--limit must be at least 1 \(got 0\)"),
    ):
        with pytest.raises(DataError, match=needle):
            convert(source="lsun", input_path=str(lmdb_dir), output="out", **kwargs)
    with pytest.raises(DataError, match="--limit applies to --source folder or lsun only"):
        convert(source="cifar10", input_path=str(lmdb_dir), output="out", limit=5)
    assert nothing_left(tmp_path)


def test_missing_lmdb_package_is_one_line(sources, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)
    with pytest.raises(DataError, match=r"^--source lsun needs the lmdb package: pip install lmdb$"):
        convert(source="lsun", input_path=str(sources[0]), output="out", image_size=8)


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    tool = str(repo_root / "tools" / "prepare_data.py")
    return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True, timeout=120, env=env)


def test_cli_converts_an_lsun_export(sources, repo_root, tmp_path):
    lmdb_dir, _, decoded = sources
    ok = run_cli(repo_root, "--source", "lsun", "--input", str(lmdb_dir), "--output", "church", "--image-size", "24",
                 "--shards", "2", "--limit", "10")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    upscaled = sum(min(rgb.shape[:2]) < 24 for rgb in decoded[:10])
    assert upscaled > 0  # the message names them
    assert ok.stdout.strip() == (
        f"wrote 10 images (24x24x3, lsun train) to church in 2 file(s); upscaled {upscaled} smaller than 24 px"
    )
    images, _, _ = read_back(Path("church"))
    np.testing.assert_array_equal(images, np.stack([expected_fit(rgb, 24) for rgb in decoded[:10]]))
    bad = run_cli(repo_root, "--source", "lsun", "--input", str(tmp_path), "--output", "out", "--image-size", "24")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [f"error: not an LMDB export: {tmp_path} holds no data.mdb "
                                       "(expected e.g. church_outdoor_train_lmdb/)"]  # fmt: skip
    assert not Path("out").exists()


def test_decoding_threads_change_nothing(tmp_path):
    """The same output, counts and first --strict error with 1 and 3 decoding threads (results are taken in order)."""
    items = encoded_images() + encoded_images(seed=3)
    values = {f"k{i:02d}".encode(): blob for i, (blob, _, _) in enumerate(items)}
    values[b"k03"] = values[b"k09"] = b"\xff\xd8 truncated jpeg"
    make_lmdb(tmp_path / "db", values)
    runs = {}
    for workers in (1, 3):
        m = convert(source="lsun", input_path=str(tmp_path / "db"), output=f"w{workers}", image_size=20,
                    workers=workers)  # fmt: skip
        runs[workers] = (read_back(Path(f"w{workers}"))[0], m["skipped_examples"], m["upscaled"], m["count"])
        with pytest.raises(DataError, match=r"unreadable image k03 in "):
            convert(source="lsun", input_path=str(tmp_path / "db"), output="s", image_size=20, strict=True,
                    workers=workers)  # fmt: skip
    np.testing.assert_array_equal(runs[1][0], runs[3][0])
    assert runs[1][1:] == runs[3][1:] == (["k03", "k09"], 2, 12)
    with pytest.raises(DataError, match=r"--workers must be at least 1 \(got 0\)"):
        convert(source="lsun", input_path=str(tmp_path / "db"), output="x", image_size=20, workers=0)
    with pytest.raises(DataError, match="--workers applies to --source folder or lsun only"):
        convert(source="mnist", input_path=str(tmp_path / "db"), output="x", workers=2)


def test_progress_is_reported_per_chunk(sources, monkeypatch):
    import ddpm_dist.data.decode as decode

    monkeypatch.setattr(decode, "ROWS_PER_WRITE", 4)
    calls = []
    m = convert(source="lsun", input_path=str(sources[0]), output="out", image_size=8, limit=10,
                progress=lambda done, expected: calls.append((done, expected)))  # fmt: skip
    assert m["count"] == 10 and calls == [(4, 10), (8, 10), (10, 10)]
