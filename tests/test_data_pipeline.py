"""The training pipeline: sharding over world sizes, data-parallel equivalence, exact resume, manifest checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import ddpm_dist.data.pipeline as pipeline
from ddpm_dist.config import ConfigError
from ddpm_dist.data import DataError
from ddpm_dist.data.convert import write_arrays
from ddpm_dist.data.pipeline import (
    TrainData,
    build_train_data,
    check_manifest,
    epoch_permutation,
    read_manifest,
    sample_randomness,
)

N, SIZE, CHANNELS, T = 50, 8, 3, 100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """50 random 8x8 RGB images in 3 MindRecord files: (path, images uint8 [N, 8, 8, 3])."""
    images = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, CHANNELS), dtype=np.uint8)
    path = tmp_path_factory.mktemp("data") / "set"
    write_arrays(str(path), images, shards=3)
    return str(path), images


def make(path: str, **kw) -> TrainData:
    args = dict(
        path=path,
        global_batch=12,
        rank=0,
        world_size=1,
        seed=3,
        timesteps=T,
        random_flip=True,
        image_size=SIZE,
        channels=CHANNELS,
        num_parallel_workers=2,
    )
    return TrainData(**{**args, **kw})


def take(td: TrainData, n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return list(itertools.islice(iter(td), n))


def expected(td: TrainData, images: np.ndarray, step: int):
    """What rank td.rank should get at ``step``, built from the source images and the documented keys."""
    ids, g = td.batch_plan(step)
    x0 = images[ids].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1
    t, noise = [], []
    for i, gi in enumerate(g):
        flip, ti, ni = sample_randomness(seed=td.seed, g=int(gi), timesteps=T, shape=(CHANNELS, SIZE, SIZE))
        if flip and td.random_flip:
            x0[i] = x0[i, :, :, ::-1]
        t.append(ti)
        noise.append(ni)
    return x0, np.array(t, np.int32), np.stack(noise)


@pytest.fixture
def small_chunks(monkeypatch):
    """A new MindDataset every few steps, so chunk boundaries fall inside the tested range."""
    monkeypatch.setattr(pipeline, "_CHUNK_SAMPLES", 16)


# ------------------------------------------------------------------------------------------------ sharding plan


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_partition_each_epoch(data, world_size):
    path, _ = data
    gb = 24
    ranks = [make(path, global_batch=gb, rank=r, world_size=world_size) for r in range(world_size)]
    one = make(path, global_batch=gb)
    spe = one.steps_per_epoch
    assert spe == N // gb == 2 and ranks[0].per_rank_batch == gb // world_size
    for epoch in range(4):
        perm = epoch_permutation(seed=3, epoch=epoch, num_samples=N)
        seen = []
        for step in range(epoch * spe, (epoch + 1) * spe):
            parts = [td.batch_plan(step) for td in ranks]
            ids = [p[0] for p in parts]
            flat = np.concatenate(ids)
            assert len(set(flat.tolist())) == gb  # disjoint within the step
            full_ids, full_g = one.batch_plan(step)
            assert set(flat.tolist()) == set(full_ids.tolist())  # same samples whatever the world size
            for r in range(world_size):
                np.testing.assert_array_equal(ids[r], full_ids[r::world_size])
                np.testing.assert_array_equal(parts[r][1], full_g[r::world_size])
            seen.extend(flat.tolist())
        assert len(seen) == len(set(seen)) == spe * gb  # no repeats in the epoch
        assert set(seen) == set(perm[: spe * gb].tolist())  # everything but the dropped remainder


def test_order_depends_on_seed_and_epoch(data):
    path, _ = data
    a, b, c = make(path), make(path), make(path, seed=4)
    spe = a.steps_per_epoch
    np.testing.assert_array_equal(a.batch_plan(1)[0], b.batch_plan(1)[0])
    assert not np.array_equal(a.batch_plan(1)[0], c.batch_plan(1)[0])
    assert not np.array_equal(a.batch_plan(0)[0], a.batch_plan(spe)[0])  # reshuffled next epoch
    assert a.position(2 * spe + 1) == (2, 1)


# ------------------------------------------------------------------------------------------------ real pipeline


def test_batches_hold_the_planned_samples(data, small_chunks):
    path, images = data
    td = make(path, global_batch=12, rank=1, world_size=2)
    batches = take(td, 9)  # past 2 epoch boundaries (4 steps per epoch) and several chunks
    for step, (x0, t, noise) in enumerate(batches):
        ex0, et, enoise = expected(td, images, step)
        assert x0.dtype == noise.dtype == np.float32 and t.dtype == np.int32
        assert x0.shape == noise.shape == (6, CHANNELS, SIZE, SIZE) and t.shape == (6,)
        assert x0.flags.c_contiguous and -1 <= x0.min() and x0.max() <= 1
        np.testing.assert_array_equal(x0, ex0)
        np.testing.assert_array_equal(t, et)
        np.testing.assert_array_equal(noise, enoise)
    ts = np.concatenate([b[1] for b in batches])
    assert 0 <= ts.min() and ts.max() < T and len(set(ts.tolist())) > 20
    noise = np.concatenate([b[2] for b in batches])
    assert len({n.tobytes() for n in noise}) == len(noise)  # every sample its own noise
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05


def test_random_flip_off_changes_only_x0(data):
    path, images = data
    on, off = take(make(path), 2), take(make(path, random_flip=False), 2)
    ids = make(path).batch_plan(0)[0]
    np.testing.assert_array_equal(off[0][0], images[ids].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)
    assert not np.array_equal(on[0][0], off[0][0])
    for a, b in zip(on, off, strict=True):
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[2], b[2])


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_interleave_to_the_one_rank_batch(data, world_size):
    path, _ = data
    counts = [f["count"] for f in read_manifest(path)["files"]]
    assert counts == [17, 17, 16]  # the rows below come from all three shard files
    file_of = np.repeat(np.arange(3), counts)
    steps = 6  # 4 steps per epoch: crosses an epoch boundary
    assert len({f for s in range(steps) for f in file_of[make(path).batch_plan(s)[0]].tolist()}) == 3
    single = take(make(path, global_batch=12), steps)
    per_rank = [take(make(path, global_batch=12, rank=r, world_size=world_size), steps) for r in range(world_size)]
    for step in range(steps):
        for k in range(3):  # x0, t, noise
            merged = np.empty_like(single[step][k])
            for r in range(world_size):
                merged[r::world_size] = per_rank[r][step][k]
            np.testing.assert_array_equal(merged, single[step][k])
    assert not np.array_equal(per_rank[0][0][2], per_rank[1][0][2])  # ranks draw different noise


@pytest.mark.parametrize("start_step", [3, 5, 9])
def test_resume_yields_the_same_batches(data, small_chunks, start_step):
    path, _ = data
    uninterrupted = take(make(path, rank=1, world_size=2), start_step + 4)[start_step:]
    resumed = take(make(path, rank=1, world_size=2, start_step=start_step), 4)
    for a, b in zip(uninterrupted, resumed, strict=True):
        for k in range(3):
            np.testing.assert_array_equal(a[k], b[k])


def test_resume_with_another_world_size(data):
    path, _ = data
    two = [take(make(path, rank=r, world_size=2, start_step=0), 7)[5:] for r in range(2)]
    three = [take(make(path, rank=r, world_size=3, start_step=5), 2) for r in range(3)]
    for step in range(2):
        x2 = np.empty((12, CHANNELS, SIZE, SIZE), np.float32)
        x3 = np.empty_like(x2)
        for r in range(2):
            x2[r::2] = two[r][step][0]
        for r in range(3):
            x3[r::3] = three[r][step][0]
        np.testing.assert_array_equal(x2, x3)


def test_one_channel_digit_sized_batches(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (40, 16, 16, 1), dtype=np.uint8)
    write_arrays("gray", images)
    td = make("gray", global_batch=8, image_size=16, channels=1, random_flip=False)
    x0, t, noise = next(iter(td))
    np.testing.assert_array_equal(x0, images[td.batch_plan(0)[0]].transpose(0, 3, 1, 2) / np.float32(127.5) - 1)
    assert noise.shape == (8, 1, 16, 16)


# ------------------------------------------------------------------------------------------------ errors


def test_manifest_mismatch(data):
    path, _ = data
    m = read_manifest(path)
    check_manifest(m, image_size=SIZE, channels=CHANNELS, source="cfg.yaml")
    with pytest.raises(DataError, match=r"cfg.yaml: data.image_size: 32 does not match .*prepared with 8"):
        check_manifest(m, image_size=32, channels=CHANNELS, source="cfg.yaml")
    with pytest.raises(DataError, match=r"data.channels: 1 does not match .*--channels 1"):
        check_manifest(m, image_size=SIZE, channels=1, source="cfg.yaml")
    with pytest.raises(DataError, match="data.image_size"):
        make(path, image_size=16)


def test_global_batch_not_divisible(data):
    path, _ = data
    with pytest.raises(ConfigError, match="train.global_batch=12 is not divisible by the 8 workers"):
        make(path, global_batch=12, world_size=8)
    with pytest.raises(DataError, match="train.global_batch: 64 is larger than the data set"):
        make(path, global_batch=64)


def test_missing_data_set(tmp_path):
    with pytest.raises(DataError, match="data set not found"):
        make(str(tmp_path / "nothing"))


def test_build_train_data_from_config(data):
    from ddpm_dist.config import load_config

    path, _ = data
    overrides = [f"data.path={path}", "data.image_size=8", "data.channels=3", "train.global_batch=10", "run.seed=7",
                 "model.attn_resolutions=[4]"]  # fmt: skip
    cfg = load_config(None, overrides)
    td = build_train_data(cfg, rank=1, world_size=2, start_step=3)
    assert (td.per_rank_batch, td.steps_per_epoch, td.num_samples, td.seed) == (5, 5, N, 7)
    cfg.data.channels = 1
    with pytest.raises(DataError, match="myconf.yaml: data.channels"):
        build_train_data(cfg, rank=0, world_size=1, source="myconf.yaml")


def test_build_train_data_reads_and_checks_the_manifest_once(data, monkeypatch):
    from ddpm_dist.config import load_config
    from ddpm_dist.data import pipeline

    path, _ = data
    overrides = [f"data.path={path}", "data.image_size=8", "data.channels=3", "train.global_batch=10",
                 "model.attn_resolutions=[4]"]  # fmt: skip
    calls = []
    real_read, real_check = pipeline.read_manifest, pipeline.check_manifest
    monkeypatch.setattr(pipeline, "read_manifest", lambda p: calls.append("read") or real_read(p))
    monkeypatch.setattr(pipeline, "check_manifest", lambda m, **kw: calls.append("check") or real_check(m, **kw))
    td = build_train_data(load_config(None, overrides), rank=0, world_size=1, verify=True)
    assert calls == ["read", "check"] and td.num_samples == N


# ------------------------------------------------------------------------------------------------ open files


_LOW_FD_READERS = {
    "train": "from ddpm_dist.data.pipeline import TrainData; "
    "td = TrainData(path='twelve', global_batch=8, rank=0, world_size=1, seed=0, timesteps=10, random_flip=False, "
    "image_size=8, channels=3, num_parallel_workers=2); n = len(list(itertools.islice(iter(td), 3))); workers = 2",
    "eval": "import mindspore.dataset as ds; from ddpm_dist.data.pipeline import read_images, read_manifest; "
    "n = len(read_images(read_manifest('twelve'))); workers = ds.config.get_num_parallel_workers()",
}


@pytest.mark.parametrize("reader", sorted(_LOW_FD_READERS))
def test_a_low_open_file_limit_is_raised_before_reading(tmp_path, repo_root, reader):
    """12 files x (1 + 2 workers) descriptors do not fit a soft `ulimit -n 30`: MindSpore fails at the first batch
    ("failed to open files for reading mindrecord files") unless the reader raises the soft limit first - for
    training (TrainData) and for evaluation's reference images (read_images)."""
    import os
    import resource
    import subprocess
    import sys

    write_arrays("twelve", np.random.default_rng(0).integers(0, 256, (48, 8, 8, 3), dtype=np.uint8), shards=12)
    code = (
        "import itertools, resource; "
        + _LOW_FD_READERS[reader]
        + "; print(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0], workers)"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    env = {**os.environ, "PYTHONPATH": str(repo_root), "GLOG_v": "3"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (30, hard)),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    n, soft, workers = (int(v) for v in result.stdout.split())
    assert (n, soft) == ((3 if reader == "train" else 48), pipeline.open_files_needed(12, workers))


def test_an_open_file_limit_that_cannot_be_raised_is_one_line(monkeypatch):
    import resource

    calls = []
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: calls.append(limits))
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    pipeline.ensure_open_files(1000, 2, root="/data/bedroom")
    assert calls == [(3256, 4096)]
    pipeline.ensure_open_files(100, 2, root="/data/church")  # 556 fit under 1024: left alone
    assert calls == [(3256, 4096)]
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 2048))
    needle = r"^/data/bedroom: reading its 1000 files with data.num_parallel_workers=2 needs about 3256 open files, "
    with pytest.raises(DataError, match=needle + r".*hard limit 2048\); lower data.num_parallel_workers"):
        pipeline.ensure_open_files(1000, 2, root="/data/bedroom")
    assert len(calls) == 1
