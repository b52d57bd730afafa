"""Conversion to MindRecord: every source format read back pixel-exact, shards, atomic output, and bad inputs."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_fakes import concat, make_cifar, make_idx, make_image_folder, write_idx

from ddpm_dist.data import MANIFEST_NAME, DataError
from ddpm_dist.data.convert import convert, write_arrays
from ddpm_dist.data.pipeline import read_manifest, verify_checksums


def read_back(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [N, S, S, C], labels, index) in MindDataset row order, via the manifest."""
    import mindspore.dataset as ds

    m = read_manifest(str(out))
    s, c = m["image_size"], m["channels"]
    files = [str(out / f["name"]) for f in m["files"]]
    dataset = ds.MindDataset(files, columns_list=["image", "label", "index"], shuffle=False)
    images, labels, index = [], [], []
    for image, label, idx in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1):
        images.append(np.frombuffer(image.tobytes(), np.uint8).reshape(s, s, c))
        labels.append(int(label))
        index.append(int(idx))
    return np.stack(images), np.array(labels), np.array(index)


def assert_dataset(out: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    got_images, got_labels, got_index = read_back(out)
    np.testing.assert_array_equal(got_index, np.arange(len(images)))
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    m = read_manifest(str(out))
    assert m["count"] == len(images)
    assert (m["image_size"], m["channels"]) == images.shape[2:]
    verify_checksums(m)
    return m


def no_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ formats


@pytest.mark.parametrize("binary", [False, True], ids=["python", "binary"])
@pytest.mark.parametrize("as_tar", [False, True], ids=["folder", "tar"])
def test_cifar10_read_back_pixel_exact(tmp_path, binary, as_tar):
    src, arrays = make_cifar(tmp_path / "raw", binary=binary, as_tar=as_tar)
    m = convert(source="cifar10", input_path=str(src), output=str(tmp_path / "out"))
    images, labels = concat(arrays["train"])
    m = assert_dataset(tmp_path / "out", images, labels)
    assert m["source"] == "cifar10" and m["split"] == "train"
    assert m["source_format"] == ("cifar10-binary" if binary else "cifar10-python")
    assert m["files"][0]["sha256"] and m["index_files"][0]["sha256"]


def test_cifar10_test_split_and_parent_folder(tmp_path):
    _, arrays = make_cifar(tmp_path / "raw", binary=False)
    convert(source="cifar10", input_path=str(tmp_path / "raw"), output="out", split="test")  # parent of batches-py
    images, labels = concat(arrays["test"])
    assert read_manifest("out")["split"] == "test"
    assert_dataset(Path("out"), images, labels)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_idx_read_back_pixel_exact(tmp_path, gz):
    images, labels = make_idx(tmp_path / "mnist", n=7, gz=gz)
    convert(source="mnist", input_path=str(tmp_path / "mnist"), output="out")
    m = assert_dataset(Path("out"), images[..., None], labels)
    assert (m["image_size"], m["channels"], m["source_format"]) == (28, 1, "idx")


def test_idx_test_split(tmp_path):
    images, labels = make_idx(tmp_path / "mnist", n=4, gz=True, prefix="t10k")
    convert(source="mnist", input_path=str(tmp_path / "mnist"), output="out", split="test")
    assert_dataset(Path("out"), images[..., None], labels)


def test_resize_and_channel_conversion(tmp_path):
    make_idx(tmp_path / "mnist", n=5, gz=False)
    convert(source="mnist", input_path=str(tmp_path / "mnist"), output="out", image_size=32, channels=3)
    images, _, _ = read_back(Path("out"))
    assert images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])  # gray replicated to RGB


def test_image_folder(tmp_path):
    expected = make_image_folder(tmp_path / "imgs", size=8)
    m = convert(source="folder", input_path=str(tmp_path / "imgs"), output="out", image_size=8)
    images = np.stack([v[0] for v in expected.values()])
    labels = np.array([v[1] for v in expected.values()])
    assert_dataset(Path("out"), images, labels)
    assert m["skipped"] == 1 and m["skipped_examples"] == ["a/broken.png"]
    assert m["class_names"] == ["a", "b"] and m["num_classes"] == 2


def test_image_folder_flat_resize_crop_gray(tmp_path):
    from PIL import Image

    (tmp_path / "flat").mkdir()
    wide = np.zeros((16, 48, 3), np.uint8)
    wide[:, 16:32] = (200, 10, 10)  # the centre 16 columns are red, the sides blue
    wide[:, :16] = wide[:, 32:] = (0, 0, 255)
    Image.fromarray(wide).save(tmp_path / "flat" / "wide.png")
    Image.fromarray(np.repeat(wide, 2, axis=0).repeat(2, axis=1)).save(tmp_path / "flat" / "wide2x.png")
    convert(source="folder", input_path=str(tmp_path / "flat"), output="out", image_size=16, channels=1)
    images, labels, _ = read_back(Path("out"))
    assert images.shape == (2, 16, 16, 1) and labels.tolist() == [0, 0]
    red = round(0.299 * 200 + 0.587 * 10 + 0.114 * 10)  # PIL's L = ITU-R 601-2 luma
    np.testing.assert_array_equal(images[0], red)  # shorter side already 16: a pure centre crop
    assert np.abs(images[1, :, 2:-2].astype(int) - red).max() <= 1  # downscaled 2x, then cropped


def test_digits(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    m = convert(source="digits", input_path=None, output="out")
    assert (m["count"], m["image_size"], m["channels"]) == (1797, 16, 1)
    images, labels, index = read_back(Path("out"))
    assert images.shape == (1797, 16, 16, 1) and images.max() > 200 and images.min() == 0
    np.testing.assert_array_equal(labels, load_digits().target)
    np.testing.assert_array_equal(index, np.arange(1797))


def test_digits_are_upsampled_nearest_by_default_or_bicubic_on_request(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    source = np.clip(np.rint(load_digits().images * (255 / 16)), 0, 255).astype(np.uint8)
    m = convert(source="digits", input_path=None, output="near")
    assert m["upsample"] == "nearest"
    images, _, _ = read_back(Path("near"))
    np.testing.assert_array_equal(images[..., 0], source.repeat(2, axis=1).repeat(2, axis=2))  # 2x2 blocks
    m = convert(source="digits", input_path=None, output="cubic", upsample="bicubic")
    assert m["upsample"] == "bicubic"
    smooth, _, _ = read_back(Path("cubic"))
    assert len(np.unique(smooth)) > len(np.unique(images))  # bicubic makes values the source never had
    assert (smooth[..., 0].reshape(-1, 8, 2, 8, 2) != smooth[..., 0].reshape(-1, 8, 2, 8, 2)[:, :, :1, :, :1]).any()
    m = convert(source="digits", input_path=None, output="small", image_size=8)
    np.testing.assert_array_equal(read_back(Path("small"))[0][..., 0], source)
    with pytest.raises(DataError, match="unknown --upsample 'lanczos'"):
        convert(source="digits", input_path=None, output="x", upsample="lanczos")
    with pytest.raises(DataError, match="--upsample applies to --source digits only"):
        convert(source="mnist", input_path="in", output="y", upsample="nearest")
    assert not Path("x").exists() and not Path("y").exists()


def test_digits_fit_and_test_splits_are_the_digits_metrics_split(tmp_path):
    """--split fit / test: disjoint, together all 1797 digits, and test is exactly the metric's held-out 597 (its
    images at 8x8 and its labels, in the metric's order); train stays all 1797."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from ddpm_dist.eval.digits import split

    source = np.clip(np.rint(load_digits().images * (255 / 16)), 0, 255).astype(np.uint8)
    parts = {}
    for name in ("fit", "test"):
        m = convert(source="digits", input_path=None, output=name, image_size=8, split=name)
        assert m["split"] == name
        images, labels, index = read_back(Path(name))
        np.testing.assert_array_equal(index, np.arange(len(images)))
        parts[name] = (images[..., 0], labels)
    assert (len(parts["fit"][0]), len(parts["test"][0])) == (1200, 597)
    metric = split()
    np.testing.assert_array_equal(parts["test"][0], metric["heldout"])
    np.testing.assert_array_equal(parts["test"][1], metric["heldout_labels"])
    np.testing.assert_array_equal(parts["fit"][0], metric["train"])
    np.testing.assert_array_equal(parts["fit"][1], metric["train_labels"])
    order = np.random.default_rng(0).permutation(1797)  # the metric's documented split, written out independently
    idx = {"fit": order[:1200], "test": order[1200:]}
    assert np.intersect1d(idx["fit"], idx["test"]).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([idx["fit"], idx["test"]])), np.arange(1797))
    for name in ("fit", "test"):  # every row is the source image (and label) its index names
        np.testing.assert_array_equal(parts[name][0], source[idx[name]])
        np.testing.assert_array_equal(parts[name][1], load_digits().target[idx[name]])
    assert convert(source="digits", input_path=None, output="all", image_size=8)["count"] == 1797


def test_the_fit_split_is_for_digits_only(tmp_path):
    make_idx(tmp_path / "m", n=4, gz=False)
    with pytest.raises(DataError, match="--split fit applies to --source digits only"):
        convert(source="mnist", input_path=str(tmp_path / "m"), output="out", split="fit")
    with pytest.raises(DataError, match="unknown split 'val'"):
        convert(source="digits", input_path=None, output="out", split="val")
    assert_nothing_written(tmp_path)


def test_shards_hold_contiguous_indices(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    m = write_arrays("out", images, np.arange(10), shards=3)
    assert [f["count"] for f in m["files"]] == [4, 4, 2]
    assert [f["first_index"] for f in m["files"]] == [0, 4, 8]
    assert len(m["index_files"]) == 3
    assert_dataset(Path("out"), images, np.arange(10))
    assert sorted(os.listdir("out")) == sorted(
        [MANIFEST_NAME] + [f["name"] for f in m["files"]] + [f["name"] for f in m["index_files"]]
    )


def test_files_are_small(tmp_path):
    """MindRecord's default 32 MiB pages would make this 50 MB file (sparse): page sizes are set to fit."""
    write_arrays("out", np.zeros((20, 8, 8, 1), np.uint8))
    assert os.path.getsize(Path("out") / "data-00000.mindrecord") < 4 * 2**20


# ------------------------------------------------------------------------------------------------ output handling


def test_existing_output_needs_overwrite(tmp_path):
    first = np.zeros((3, 8, 8, 1), np.uint8)
    write_arrays("out", first)
    with pytest.raises(DataError, match="already exists.*--overwrite"):
        write_arrays("out", first + 1)
    write_arrays("out", first + 1, overwrite=True)
    np.testing.assert_array_equal(read_back(Path("out"))[0], first + 1)
    assert no_leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_a_data_set(tmp_path):
    Path("precious").mkdir()
    Path("precious/thesis.tex").write_text("x")
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_arrays("precious", np.zeros((3, 8, 8, 1), np.uint8), overwrite=True)
    assert Path("precious/thesis.tex").exists()


def test_existing_empty_folder_is_used(tmp_path):
    Path("out").mkdir()
    write_arrays("out", np.zeros((3, 8, 8, 1), np.uint8))
    assert read_manifest("out")["count"] == 3


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import ddpm_dist.data.convert as convert_module

    def broken_resize(images, size, channels):
        raise DataError("boom")

    monkeypatch.setattr(convert_module, "resize_array", broken_resize)
    with pytest.raises(DataError, match="boom"):
        write_arrays("deep/er/out", np.zeros((3, 8, 8, 1), np.uint8))
    assert sorted(os.listdir(tmp_path)) == []  # neither the output, its temporary, nor the parents made for it


# ------------------------------------------------------------------------------------------------ bad inputs


def assert_nothing_written(tmp_path: Path, out: str = "out") -> None:
    assert not (tmp_path / out).exists()
    assert no_leftovers(tmp_path) == []


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="input not found: .*nowhere"):
        convert(source="cifar10", input_path=str(tmp_path / "nowhere"), output="out")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("source", ["cifar10", "mnist"])
def test_unknown_format(tmp_path, source):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown format"):
        convert(source=source, input_path=str(tmp_path / "junk"), output="out")
    assert_nothing_written(tmp_path)


def test_unknown_format_idx_magic(tmp_path):
    make_idx(tmp_path / "m", n=3, gz=False)
    blob = bytearray((tmp_path / "m" / "train-images-idx3-ubyte").read_bytes())
    blob[3] = 0x09
    (tmp_path / "m" / "train-images-idx3-ubyte").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="unknown format: idx magic"):
        convert(source="mnist", input_path=str(tmp_path / "m"), output="out")
    assert_nothing_written(tmp_path)


def test_truncated_cifar_python_batch(tmp_path):
    src, _ = make_cifar(tmp_path / "raw", binary=False)
    batch = src / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3: corrupt or truncated CIFAR-10 batch"):
        convert(source="cifar10", input_path=str(src), output="out")
    assert_nothing_written(tmp_path)


def test_cifar_python_pickle_cannot_run_code(tmp_path):
    import pickle

    src, _ = make_cifar(tmp_path / "raw", binary=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (src / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        convert(source="cifar10", input_path=str(src), output="out")
    assert not Path("pwned").exists()


def test_truncated_cifar_binary_batch(tmp_path):
    src, _ = make_cifar(tmp_path / "raw", binary=True)
    batch = src / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_2.bin: truncated or corrupt"):
        convert(source="cifar10", input_path=str(src), output="out")
    assert_nothing_written(tmp_path)


def test_missing_cifar_batch(tmp_path):
    src, _ = make_cifar(tmp_path / "raw", binary=False)
    (src / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file data_batch_4"):
        convert(source="cifar10", input_path=str(src), output="out")


def test_truncated_idx(tmp_path):
    make_idx(tmp_path / "m", n=3, gz=True)
    path = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DataError, match="truncated idx file"):
        convert(source="mnist", input_path=str(tmp_path / "m"), output="out")
    assert_nothing_written(tmp_path)


def test_corrupt_gzip(tmp_path):
    make_idx(tmp_path / "m", n=3, gz=True)
    path = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        convert(source="mnist", input_path=str(tmp_path / "m"), output="out")


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty folder: no images"):
        convert(source="folder", input_path=str(tmp_path / "empty"), output="out", image_size=8)
    assert_nothing_written(tmp_path)


def test_folder_of_only_unreadable_images(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable images"):
        convert(source="folder", input_path=str(tmp_path / "bad"), output="out", image_size=8)
    assert_nothing_written(tmp_path)


def test_idx_label_count_mismatch(tmp_path):
    make_idx(tmp_path / "m", n=5, gz=True)
    write_idx(tmp_path / "m" / "train-labels-idx1-ubyte", np.zeros(4, np.uint8), gz=True)
    with pytest.raises(DataError, match="label count mismatch: 4 labels for 5 images"):
        convert(source="mnist", input_path=str(tmp_path / "m"), output="out")
    assert_nothing_written(tmp_path)


def test_cifar_label_count_mismatch(tmp_path):
    import pickle

    src, _ = make_cifar(tmp_path / "raw", binary=False)
    batch = pickle.loads((src / "data_batch_1").read_bytes(), encoding="bytes")
    batch[b"labels"] = batch[b"labels"][:-1]
    (src / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match="label count mismatch: 2 labels for 3 images"):
        convert(source="cifar10", input_path=str(src), output="out")
    assert_nothing_written(tmp_path)


def test_unreadable_image_under_strict(tmp_path):
    make_image_folder(tmp_path / "imgs", size=8)
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        convert(source="folder", input_path=str(tmp_path / "imgs"), output="out", image_size=8, strict=True)
    assert_nothing_written(tmp_path)


def test_folder_mixing_top_level_images_and_classes(tmp_path):
    make_image_folder(tmp_path / "imgs", size=8)
    (tmp_path / "imgs" / "stray.png").write_bytes((tmp_path / "imgs" / "a" / "x1.png").read_bytes())
    with pytest.raises(DataError, match="mixes images at the top level"):
        convert(source="folder", input_path=str(tmp_path / "imgs"), output="out", image_size=8)


def test_folder_needs_image_size(tmp_path):
    make_image_folder(tmp_path / "imgs", size=8)
    with pytest.raises(DataError, match="--image-size is required"):
        convert(source="folder", input_path=str(tmp_path / "imgs"), output="out")


# ------------------------------------------------------------------------------------------------ manifest


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="data set not found"):
        read_manifest("nowhere")
    Path("plain").mkdir()
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest("plain")
    m = write_arrays("out", np.zeros((3, 8, 8, 1), np.uint8))
    data = Path("out") / m["files"][0]["name"]
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="sha256 does not match"):
        verify_checksums(read_manifest("out"))
    data.write_bytes(bytes(blob[:-1]))
    with pytest.raises(DataError, match="truncated or changed copy"):
        read_manifest("out")
    data.unlink()
    with pytest.raises(DataError, match="is missing"):
        read_manifest("out")
    (Path("out") / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(DataError, match="corrupt manifest"):
        read_manifest("out")
    (Path("out") / MANIFEST_NAME).write_text(json.dumps({"format_version": 99}))
    with pytest.raises(DataError, match="format_version 99 is not supported"):
        read_manifest("out")


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(repo_root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "prepare_data.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_package_import_is_light(repo_root):
    code = (
        "import sys, ddpm_dist.data as d; assert d.DataError and d.MANIFEST_NAME; "
        "print(sorted(m for m in ('mindspore', 'PIL', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_missing_path_exits_2_with_one_line(tmp_path, repo_root):
    result = run_cli(repo_root, "--source", "cifar10", "--input", "nowhere", "--output", "out")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: input not found: nowhere"]
    assert_nothing_written(tmp_path)


def test_cli_truncated_batch_exits_2_with_one_line(tmp_path, repo_root):
    src, _ = make_cifar(tmp_path / "raw", binary=True)
    (src / "test_batch.bin").write_bytes(b"\x01" * 5000)
    result = run_cli(repo_root, "--source", "cifar10", "--input", str(src), "--split", "test", "--output", "out")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "test_batch.bin: truncated" in lines[0]
    assert_nothing_written(tmp_path)


def test_cli_digits_splits_and_a_bad_combination(tmp_path, repo_root):
    result = run_cli(repo_root, "--source", "digits", "--split", "test", "--output", "out")
    assert result.returncode == 0, result.stderr
    assert "wrote 597 images (16x16x1, digits test)" in result.stdout
    make_idx(tmp_path / "m", n=4, gz=False)
    bad = run_cli(repo_root, "--source", "mnist", "--input", str(tmp_path / "m"), "--split", "fit", "--output", "x")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "error: --split fit applies to --source digits only (choose train or test for mnist)"
    ]
    assert not (tmp_path / "x").exists() and no_leftovers(tmp_path) == []


def test_cli_converts(tmp_path, repo_root):
    make_idx(tmp_path / "m", n=4, gz=True)
    result = run_cli(repo_root, "--source", "mnist", "--input", str(tmp_path / "m"), "--output", "out", "--shards", "2")
    assert result.returncode == 0, result.stderr
    assert "wrote 4 images (28x28x1, mnist train)" in result.stdout
    assert len(read_manifest("out")["files"]) == 2
    again = run_cli(repo_root, "--source", "mnist", "--input", str(tmp_path / "m"), "--output", "out")
    assert again.returncode == 2 and again.stderr.splitlines() == [
        f"error: output {tmp_path / 'out'} already exists (pass --overwrite to replace it)"
    ]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--image-size", "0"], "--image-size must be in [1, 1024] (got 0)"),
        (["--image-size", "100000"], "--image-size must be in [1, 1024] (got 100000)"),
        (["--output", "/proc/x"], "output /proc/x: cannot write there"),
        (["--output", "{tmp}/file/x"], "cannot write there (Not a directory)"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_cli_bad_settings_exit_2_with_one_line_before_reading(tmp_path, repo_root, args, needle):
    (tmp_path / "file").write_text("not a directory")
    given = {"--source": "digits", "--output": "out"}
    extra = [a.format(tmp=tmp_path) for a in args]
    if extra[0] in given:
        given[extra[0]] = extra[1]
        extra = []
    result = run_cli(repo_root, *[x for kv in given.items() for x in kv], *extra)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert_nothing_written(tmp_path)
