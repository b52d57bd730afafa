"""Class-conditional training and classifier-free guidance (model.num_classes): labels from the data set, label
dropout keyed by (seed, global position), the guided network, labelled sampling and its invariances, and the
refusals. One conditional training (1 process) serves the resume, grid and sampling checks; one 2-worker msrun run
checks that the world size does not change what is trained."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from PIL import Image
from test_resume import _assert_same_state
from train_helpers import ROOT, TINY, env, final_state, free_port, run_msrun, run_train, worker_logs

from ddpm_dist.data import DataError
from ddpm_dist.data.convert import write_arrays
from ddpm_dist.data.pipeline import TrainData, manifest_classes, read_manifest
from ddpm_dist.diffusion.guidance import Guided, NoLabel, grid_labels, sample_labels

pytestmark = pytest.mark.usefixtures("cpu_graph")

SAMPLE = str(ROOT / "tools" / "sample.py")
TRAIN = str(ROOT / "ddpm_dist" / "train" / "__main__.py")
# norm_groups 4: with one channel per GroupNorm group (the tiny net's 16 channels in 16 groups) the normalisation
# removes any per-channel shift, so the class (and timestep) embedding would get no gradient
COND = ["model.num_classes=10", "model.norm_groups=4", "model.dropout=0", "train.label_dropout=0.25",
        "train.ckpt_every=3", "run.log_every=3"]  # fmt: skip


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """64 random 8x8 images with labels 0..9 (n mod 10), as a prepared data set; and an unlabelled copy."""
    root = tmp_path_factory.mktemp("cond_data")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    write_arrays(str(root / "labelled"), images, np.arange(64) % 10)
    write_arrays(str(root / "plain"), images)
    return root


def _data(path, *, rank=0, world=1, start=0, num_classes=10, dropout=0.25, batch=16) -> TrainData:
    return TrainData(path=str(path), global_batch=batch, rank=rank, world_size=world, seed=5, timesteps=100,
                     random_flip=True, image_size=8, channels=1, num_parallel_workers=1, start_step=start,
                     num_classes=num_classes, label_dropout=dropout)  # fmt: skip


def _take(data, n):
    it = iter(data)
    return [next(it) for _ in range(n)]


# ---------------------------------------------------------------- data and label dropout (no network)
def test_labels_and_their_dropout_are_keyed_by_global_position_for_any_world_size_and_resume(labelled):
    one = _data(labelled / "labelled")
    steps = _take(one, 8)  # 2 epochs of 4 steps
    drops = 0
    for step, (_, t, noise, y) in enumerate(steps):
        ids, positions = one.batch_plan(step)
        for i, (idx, g) in enumerate(zip(ids.tolist(), positions.tolist(), strict=True)):
            rng = np.random.default_rng([5, 1, g])  # the documented key: flip, t, noise, then the drop draw
            rng.random()
            assert t[i] == rng.integers(0, 100)
            np.testing.assert_array_equal(noise[i], rng.standard_normal((1, 8, 8), dtype=np.float32))
            dropped = rng.random() < 0.25
            assert y[i] == (10 if dropped else idx % 10)
            drops += dropped
    assert 16 <= drops <= 48  # of 128 draws at p = 0.25 (expected 32)
    plain = _take(_data(labelled / "labelled", num_classes=0), 8)  # unconditional: the same x0, t, noise
    for a, b in zip(plain, steps, strict=True):
        assert len(a) == 3
        for u, v in zip(a, b[:3], strict=True):
            np.testing.assert_array_equal(u, v)
    for world in (2, 4):
        for rank in range(world):
            for a, b in zip(_take(_data(labelled / "labelled", rank=rank, world=world), 8), steps, strict=True):
                for u, v in zip(a, b, strict=True):
                    np.testing.assert_array_equal(u, v[rank::world])
    for a, b in zip(_take(_data(labelled / "labelled", start=5), 3), steps[5:], strict=True):  # a resume at step 5
        for u, v in zip(a, b, strict=True):
            np.testing.assert_array_equal(u, v)


def test_a_conditional_model_refuses_data_without_labels_or_with_more_classes(labelled):
    assert manifest_classes(read_manifest(str(labelled / "plain"))) == 0
    assert manifest_classes(read_manifest(str(labelled / "labelled"))) == 10
    with pytest.raises(DataError, match="model.num_classes: 10 needs a labelled data set"):
        _data(labelled / "plain")
    with pytest.raises(DataError, match=r"labels 0..9, outside 0..4; set model.num_classes=10"):
        _data(labelled / "labelled", num_classes=5)
    _data(labelled / "plain", num_classes=0)  # unconditional: labels not needed
    with pytest.raises(DataError, match="labels must be integers"):
        write_arrays(str(labelled / "bad"), np.zeros((2, 8, 8, 1), np.uint8), np.array([0, -1]))
    assert not (labelled / "bad").exists()


def test_training_on_unlabelled_data_is_one_line_exit_2_and_writes_nothing(labelled, tmp_path):
    res = run_train("--config", TINY, f"data.path={labelled / 'plain'}", f"run.out_dir={tmp_path / 'run'}",
                    "model.num_classes=10")  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.num_classes" in lines[0] and "no labels" in lines[0], lines
    assert not (tmp_path / "run").exists()
    res = run_train("--config", TINY, "--dry-run", "model.num_classes=-1")
    assert res.returncode == 2 and "model.num_classes: must be >= 0" in res.stderr


# ---------------------------------------------------------------- guidance (no training)
class _Linear(nn.Cell):
    """A stand-in conditional network: out = x * (1 + y) + t / 100, channels doubled if ``learned``."""

    def __init__(self, learned=False):
        super().__init__()
        self.learned = learned

    def construct(self, x, t, y):
        out = x * (1.0 + y.astype(x.dtype).reshape(-1, 1, 1, 1)) + t.astype(x.dtype).reshape(-1, 1, 1, 1) / 100.0
        if self.learned:
            return ops.concat((out, -out * y.astype(x.dtype).reshape(-1, 1, 1, 1)), axis=1)
        return out


def test_guidance_mixes_the_conditional_and_no_label_outputs():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 2, 4, 4)).astype(np.float32))
    t = Tensor(np.array([5, 50, 99], np.int32))
    y = Tensor(np.array([0, 3, 7], np.int32))
    net = _Linear()
    cond = net(x, t, y).asnumpy()
    uncond = net(x, t, Tensor(np.full(3, 10, np.int32))).asnumpy()
    assert np.abs(cond - uncond).mean() > 1
    np.testing.assert_array_equal(Guided(net, num_classes=10, channels=2, scale=1.0)(x, t, y).asnumpy(), cond)
    np.testing.assert_array_equal(Guided(net, num_classes=10, channels=2, scale=0.0)(x, t, y).asnumpy(), uncond)
    for s in (1.5, 3.0):
        got = Guided(net, num_classes=10, channels=2, scale=s)(x, t, y).asnumpy()
        np.testing.assert_allclose(got, uncond + s * (cond - uncond), rtol=1e-5, atol=1e-5)
    learned = _Linear(learned=True)
    full = learned(x, t, y).asnumpy()
    got = Guided(learned, num_classes=10, channels=2, scale=2.0)(x, t, y).asnumpy()
    np.testing.assert_allclose(got[:, :2], 2 * cond - uncond, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, 2:], full[:, 2:])  # the variance of the conditional pass
    with pytest.raises(ValueError, match="guidance scale"):
        Guided(net, num_classes=10, channels=2, scale=-1.0)
    np.testing.assert_array_equal(NoLabel(net, num_classes=10)(x, t).asnumpy(), uncond)  # what the NLL evaluates


def test_sample_labels_and_class_grids():
    np.testing.assert_array_equal(sample_labels("balanced", num_classes=3, num_samples=7), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(sample_labels("all-7", num_classes=10, num_samples=3), [7, 7, 7])
    np.testing.assert_array_equal(sample_labels("0,3, 7", num_classes=10, num_samples=5), [0, 3, 7, 0, 3])
    np.testing.assert_array_equal(sample_labels("none", num_classes=4, num_samples=2), [4, 4])
    for bad, needle in (("all-10", "outside the model's classes 0..9"), ("odd", "unknown labels"),
                        ("1,,2", "unknown labels"), ("-1", "unknown labels")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            sample_labels(bad, num_classes=10, num_samples=4)
    labels, per_row = grid_labels(10, 64)
    assert per_row == 6 and labels.tolist() == [k for k in range(10) for _ in range(6)]
    assert grid_labels(10, 4)[1] == 1


# ---------------------------------------------------------------- real training runs
@pytest.fixture(scope="module")
def cond_runs(tmp_path_factory):
    """A conditional tiny run of 6 steps in one go (with a class grid at the end), and one stopped at 3 and resumed."""
    from train_helpers import prepare_digits

    root = tmp_path_factory.mktemp("cond_runs")
    data = prepare_digits(root / "digits8")
    common = ["--config", TINY, f"data.path={data}", *COND]
    straight = root / "straight"
    res = run_train(*common, f"run.out_dir={straight}", "run.sample_every=6", "run.num_samples=20", "run.guidance=2")
    assert res.returncode == 0, res.stderr
    resumed = root / "resumed"
    for total in (3, 6):
        res = run_train(*common, f"run.out_dir={resumed}", f"train.total_steps={total}")
        assert res.returncode == 0, res.stderr
    return {"data": data, "straight": straight, "resumed": resumed, "root": root}


@pytest.mark.slow
def test_a_conditional_run_resumes_bitwise_and_draws_one_grid_row_per_class(cond_runs):
    a, b = final_state(cond_runs["straight"]), final_state(cond_runs["resumed"])
    assert a["class_embed.embedding_table"].shape == (11, 64)  # K + 1 rows x 4 ch
    _assert_same_state(a, b)
    (grid,) = (cond_runs["straight"] / "samples").glob("ema_step_*.png")
    rows, cols = np.asarray(Image.open(grid)).shape[:2]
    cell = 64 + 1  # 8 px upscaled to 64, 1 px border
    assert (rows - 1) // cell == 10 and (cols - 1) // cell == 2  # 10 classes x 20 // 10 samples


@pytest.mark.slow
@pytest.mark.distributed
def test_two_msrun_workers_train_what_one_process_trains(cond_runs, tmp_path):
    run_dir = tmp_path / "two"
    res = run_msrun(TRAIN, "--config", TINY, f"data.path={cond_runs['data']}", *COND, f"run.out_dir={run_dir}",
                    log_dir=tmp_path / "logs")  # fmt: skip
    assert res.returncode == 0, res.stderr + worker_logs(tmp_path / "logs")
    one, two = final_state(cond_runs["resumed"]), final_state(run_dir)
    assert set(one) == set(two)
    for k in one:  # the all-reduce mean rounds differently from one process's batch mean, nothing else
        np.testing.assert_allclose(two[k], one[k], atol=2e-5, rtol=1e-4, err_msg=k)
    # the embedding trains: its EMA (which starts at the initial weights) lags behind it
    assert np.abs(two["class_embed.embedding_table"] - two["ema.class_embed.embedding_table"]).max() > 1e-4


def _sample(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SAMPLE, *args], env=env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.distributed
def test_guided_samples_depend_on_seed_index_and_label_only(cond_runs, tmp_path):
    ckpt = str(sorted((cond_runs["straight"] / "checkpoints").glob("step_*.ckpt"))[-1])
    common = ["--ckpt", ckpt, "--sampler", "ddim", "--steps", "5", "--num-samples", "7", "--seed", "3",
              "--labels", "0,3,7", "--guidance", "2"]  # fmt: skip
    one = _sample(*common, "--out", str(tmp_path / "one"), "--batch-size", "7")
    assert one.returncode == 0, one.stderr
    res = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), *common, "--out", str(tmp_path / "two"), "--batch-size", "2"],
        env=env() | {"ENTRY": SAMPLE, "DEVICE_NUM": "2", "MASTER_PORT": str(free_port()),
                     "LOG_DIR": str(tmp_path / "logs")},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + worker_logs(tmp_path / "logs")
    a, b = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    np.testing.assert_array_equal(a["arr_1"], [0, 3, 7, 0, 3, 7, 0])
    np.testing.assert_array_equal(b["arr_1"], a["arr_1"])
    assert np.abs(a["arr_0"].astype(int) - b["arr_0"]).max() <= 1 and (a["arr_0"] != b["arr_0"]).mean() < 0.01
    # sample 3 (label 0) alone, as sample 3 of another request: the same image; another label: another image
    alone = _sample(*common[:-4], "--labels", "0", "--guidance", "2", "--out", str(tmp_path / "alone"),
                    "--num-samples", "4", "--batch-size", "1")  # fmt: skip
    assert alone.returncode == 0, alone.stderr
    c = np.load(tmp_path / "alone" / "samples.npz")
    assert np.abs(c["arr_0"][3].astype(int) - a["arr_0"][3]).max() <= 1

    # another label, another image (in floats: six training steps move the uint8 pixels by a few levels only)
    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.diffusion import build_keyed_sampler

    cfg, net, _ = load_for_sampling(ckpt)
    keyed = build_keyed_sampler(cfg, net, sampler="ddim", steps=5, eta=0.0, guidance=2.0)
    zeros = keyed.sample([0, 1], seed=3, labels=[0, 0]).asnumpy()
    mixed = keyed.sample([0, 1], seed=3, labels=[0, 3]).asnumpy()
    np.testing.assert_allclose(mixed[0], zeros[0], atol=1e-5)
    assert np.abs(mixed[1] - zeros[1]).max() > 1e-3


@pytest.mark.slow
def test_sampling_flags_are_refused_where_they_do_not_apply(cond_runs, tmp_path):
    cond = str(sorted((cond_runs["straight"] / "checkpoints").glob("step_*.ckpt"))[-1])
    res = _sample("--ckpt", cond, "--out", str(tmp_path / "a"), "--labels", "all-12", "--num-samples", "2")
    assert res.returncode == 2 and "label 12 is outside the model's classes 0..9" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    res = _sample("--ckpt", cond, "--out", str(tmp_path / "a"), "--guidance", "nan")
    assert res.returncode == 2 and "--guidance must be a finite number >= 0" in res.stderr
    nll = subprocess.run([sys.executable, str(ROOT / "tools" / "eval.py"), "--metric", "nll", "--ckpt", cond, "--data",
                          str(cond_runs["data"]), "--num-samples", "4", "--nll-steps", "5"],
                         env=env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert nll.returncode == 0 and "bits/dim over 4 images" in nll.stdout, nll.stderr  # the "no label" model's bound
    plain = run_train("--config", TINY, f"data.path={cond_runs['data']}", f"run.out_dir={tmp_path / 'plain'}",
                      "train.total_steps=1")  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    ckpt = str(next((tmp_path / "plain" / "checkpoints").glob("step_*.ckpt")))
    res = _sample("--ckpt", ckpt, "--out", str(tmp_path / "b"), "--labels", "balanced", "--num-samples", "2")
    assert res.returncode == 2 and "--labels" in res.stderr and "unconditional model" in res.stderr
    assert not (tmp_path / "b").exists()


def test_conditional_recipes_are_their_unconditional_recipe_plus_the_class_embedding():
    from ddpm_dist.config import load_config, to_dict
    from ddpm_dist.models import build_model, count_params

    for cond, plain in (("digits_cond", "digits"), ("cifar_cond", "cifar")):
        a = to_dict(load_config(str(ROOT / "configs" / f"{cond}.yaml")))
        b = to_dict(load_config(str(ROOT / "configs" / f"{plain}.yaml")))
        assert a["model"]["num_classes"] == 10 and b["model"]["num_classes"] == 0
        assert a["train"]["label_dropout"] == 0.1
        for section in ("model", "diffusion", "data", "train"):  # nothing else differs
            diff = {k for k in a[section] if a[section][k] != b[section][k]}
            assert diff <= {"num_classes", "label_dropout"}, (cond, section, diff)
    cfg = load_config(str(ROOT / "configs" / "cifar_cond.yaml"))
    assert count_params(build_model(cfg)) == 35_746_307 + 11 * 4 * 128  # the paper's count + 5,632


@pytest.mark.parametrize("arch", ["ddpm_unet", "convnext_unet"])
def test_both_unets_take_labels_and_an_unconditional_one_is_unchanged(arch):
    import mindspore as ms

    from ddpm_dist.config import load_config
    from ddpm_dist.models import build_model

    def build(k):
        ms.set_seed(0)
        net = build_model(load_config(TINY, [f"model.arch={arch}", f"model.num_classes={k}", "model.norm_groups=4"]))
        net.set_train(False)
        return net

    plain, cond = build(0), build(10)
    a = {p.name: p.asnumpy() for p in plain.trainable_params()}
    b = {p.name: p.asnumpy() for p in cond.trainable_params()}
    assert set(b) - set(a) == {"class_embed.embedding_table"} and set(a) <= set(b)
    for name in a:  # the class embedding is built last: every other weight starts where the unconditional one does
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    rng = np.random.default_rng(1)
    for p in cond.trainable_params():  # leave the zero-initialised output layers
        p.set_data(Tensor(p.asnumpy() + 0.05 * rng.standard_normal(p.shape).astype(np.float32)))
    x = Tensor(rng.standard_normal((2, 1, 8, 8)).astype(np.float32))
    t = Tensor(np.array([3, 60], np.int32))
    one = cond(x, t, Tensor(np.array([1, 1], np.int32))).asnumpy()
    two = cond(x, t, Tensor(np.array([1, 9], np.int32))).asnumpy()
    np.testing.assert_array_equal(one[0], two[0])
    assert np.abs(one[1] - two[1]).max() > 1e-3
