"""Inference checkpoints and sampling: conversion keeps the EMA network exactly, keyed noise is the specified
function of (seed, sample, step), samples do not depend on the batch size or the number of workers, and bad inputs
end in one ``error:`` line with exit status 2 and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import Tensor
from PIL import Image
from train_helpers import ROOT, TINY, env, free_port, prepare_digits, run_train, worker_logs

from ddpm_dist import inference
from ddpm_dist.checkpoint import KIND_INFERENCE, CheckpointError
from ddpm_dist.checkpoint import convert as ckpt_convert
from ddpm_dist.config import from_dict
from ddpm_dist.diffusion import build_keyed_sampler, build_schedule
from ddpm_dist.diffusion.keyed_noise import X_T_STREAM, KeyedNoise, int32_bits, keyed_noise_reference, seed_tensor
from ddpm_dist.diffusion.sampling import KeyedSampler, KeyedStep, build_sampler
from ddpm_dist.images import to_uint8
from ddpm_dist.models import build_model

SAMPLE = str(ROOT / "tools" / "sample.py")
_TINY_CFG = {
    "data": {"path": "unused", "image_size": 8, "channels": 1},
    "diffusion": {"timesteps": 100},
    "model": {"attn_resolutions": [8]},  # a resolution an 8x8 network has
}
CONVERT = str(ROOT / "tools" / "convert_ckpt.py")


pytestmark = pytest.mark.usefixtures("cpu_graph")


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    """A training checkpoint of the tiny config after 4 steps (EMA decay 0.9, so EMA != raw weights)."""
    root = tmp_path_factory.mktemp("sample")
    data = prepare_digits(root / "digits8")
    res = run_train("--config", TINY, f"data.path={data}", f"run.out_dir={root / 'run'}",
                    "train.total_steps=4", "train.ckpt_every=0")  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    (path,) = (root / "run" / "checkpoints").glob("step_*.ckpt")
    return path


def run_tool(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def forward(net, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = Tensor(rng.standard_normal((3, 1, 8, 8)).astype(np.float32))
    t = Tensor(np.array([0, 40, 99], np.int32))
    return net(x, t).asnumpy()


def net_from_training_ckpt(path, prefix: str):
    """The tiny network with the ``prefix`` weights of a training checkpoint, loaded without ddpm_dist.inference."""
    params = ms.load_checkpoint(str(path), crc_check=True)
    cfg = from_dict(yaml.safe_load(str(params["meta.config"])))
    net = build_model(cfg)
    names = [p.name for p in net.get_parameters()]
    chosen = {n: ms.Parameter(params[prefix + n].asnumpy(), name=n) for n in names}
    ms.load_param_into_net(net, chosen, strict_load=True)
    net.set_train(False)
    return net


# ---------------------------------------------------------------- conversion
@pytest.mark.slow
def test_converted_network_equals_the_ema_weights_of_the_training_checkpoint(train_ckpt, tmp_path):
    expected = forward(net_from_training_ckpt(train_ckpt, "ema."))
    raw = forward(net_from_training_ckpt(train_ckpt, ""))
    assert np.abs(expected - raw).max() > 1e-4  # EMA and raw weights differ, so the comparison below can fail

    for name in ["ema.ckpt", "ema.safetensors"]:
        out = ckpt_convert.convert(train_ckpt, tmp_path / name)
        cfg, net, meta = ckpt_convert.load_for_sampling(out)
        np.testing.assert_array_equal(forward(net), expected, err_msg=name)
        assert meta["kind"] == KIND_INFERENCE and meta["weights"] == "ema" and meta["step"] == 4
        assert set(yaml.safe_load(meta["config"])) == {"model", "diffusion", "data"}
        assert cfg.model.ch == 16 and cfg.diffusion.timesteps == 100 and cfg.data.image_size == 8
    stored = ckpt_convert.read_weights(tmp_path / "ema.ckpt").weights
    assert all(v.dtype == np.float32 for v in stored.values())
    assert not any(k.startswith(("ema.", "moment", "global_step")) for k in stored)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ema.ckpt", "ema.safetensors"]  # no temporary left

    res = run_tool(CONVERT, "--input", str(train_ckpt), "--output", str(tmp_path / "raw.ckpt"), "--weights", "raw")
    assert res.returncode == 0, res.stderr
    _, net, meta = ckpt_convert.load_for_sampling(tmp_path / "raw.ckpt")
    np.testing.assert_array_equal(forward(net), raw)
    assert meta["weights"] == "raw"
    # a training checkpoint loads directly too, EMA by default
    _, net, _ = ckpt_convert.load_for_sampling(train_ckpt)
    np.testing.assert_array_equal(forward(net), expected)


# ---------------------------------------------------------------- keyed noise
def test_keyed_noise_is_the_reference_function_of_seed_sample_and_stream():
    shape = (3, 5, 7)  # odd size: the last Box-Muller pair is cut
    noise = KeyedNoise(shape=shape)

    def draw(seed, indices, stream):
        return noise(
            seed_tensor(seed), Tensor(np.asarray(indices, np.int32)), Tensor(int32_bits(stream), ms.int32)
        ).asnumpy()

    for seed, stream in [(0, 0), (2**32 - 1, 999), (12345, X_T_STREAM)]:
        idx = [0, 1, 7, 2**31 - 1]
        np.testing.assert_allclose(draw(seed, idx, stream), keyed_noise_reference(seed, idx, stream, shape), atol=2e-5)
    a, b = draw(5, [3, 9, 4], 10), draw(5, [9, 3], 10)
    # a row depends on its own index only, not on its batch (up to an ulp: log/cos/sin round by SIMD lane position)
    np.testing.assert_allclose(a[0], b[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(a[1], b[0], rtol=0, atol=1e-6)
    assert not np.allclose(draw(5, [3], 11), a[:1]) and not np.allclose(draw(6, [3], 10), a[:1])

    big = KeyedNoise(shape=(1, 32, 32))
    idx = Tensor(np.arange(64, dtype=np.int32))
    z = np.stack([big(seed_tensor(0), idx, Tensor(s, ms.int32)).asnumpy().reshape(64, -1) for s in range(2)])
    flat = z.ravel()  # 131072 draws
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01 and abs((flat**4).mean() - 3) < 0.1
    assert abs((np.abs(flat) > 1.96).mean() - 0.05) < 0.004
    corr = np.corrcoef(np.concatenate([z[0], z[1]]))  # 128 rows: 64 samples x 2 steps, 1024 long
    off = np.abs(corr[~np.eye(len(corr), dtype=bool)]) * np.sqrt(1024)  # ~|N(0, 1)| if independent
    assert off.max() < 6.0 and abs(off.mean() - np.sqrt(2 / np.pi)) < 0.03


def test_keyed_noise_self_check_passes_on_cpu_and_names_the_first_mismatch(monkeypatch):
    from ddpm_dist.diffusion import keyed_noise

    assert keyed_noise.check_keyed_noise(force=True) == "CPU:0"  # the probe, drawn by this device's kernels
    real_words, real_normals = keyed_noise.keyed_noise_words, keyed_noise.keyed_noise_reference

    def flipped(seed, indices, stream, pairs):  # a device whose words differ in one bit of one lane
        words = real_words(seed, indices, stream, pairs).copy()
        if seed == 2**32 - 1 and stream == 999:
            words[3, 1, 7] ^= np.uint32(1 << 31)
        return words

    monkeypatch.setattr(keyed_noise, "keyed_noise_words", flipped)
    with pytest.raises(keyed_noise.KeyedNoiseMismatch) as err:
        keyed_noise.check_keyed_noise(force=True)
    msg = str(err.value)
    want = real_words(2**32 - 1, [2**31 - 1], 999, 10)[0, 1, 7]
    assert "\n" not in msg and msg.startswith("keyed noise self-check failed on CPU:0: hash word [3, 1, 7]")
    assert f"seed {2**32 - 1}, stream 999, sample {2**31 - 1}" in msg
    assert f"is {int(want):#010x}, the reference is {int(want ^ np.uint32(1 << 31)):#010x}" in msg
    with pytest.raises(keyed_noise.KeyedNoiseMismatch):  # a failed check is not remembered as passed
        KeyedSampler(build_sampler(lambda x, t: x, build_schedule(from_dict(_TINY_CFG)), sampler="ddim", steps=2,
                                   objective="eps", clip_x0=True, var_type="fixedlarge"),
                     shape=(1, 8, 8))  # fmt: skip

    monkeypatch.setattr(keyed_noise, "keyed_noise_words", real_words)

    def shifted(seed, indices, stream, shape):  # words right, one normal off by 1e-3 (a bad log or cos)
        z = real_normals(seed, indices, stream, shape).copy()
        if stream == keyed_noise.X_T_STREAM:
            z[2, 0, 1, 3] += 1e-3
        return z

    monkeypatch.setattr(keyed_noise, "keyed_noise_reference", shifted)
    with pytest.raises(keyed_noise.KeyedNoiseMismatch, match=r"on CPU:0: normal \[2, 0, 1, 3\] \(seed 0, stream "):
        keyed_noise.check_keyed_noise(force=True)
    monkeypatch.setattr(keyed_noise, "keyed_noise_reference", real_normals)
    assert keyed_noise.check_keyed_noise(force=True) == "CPU:0"


# ---------------------------------------------------------------- determinism
@pytest.mark.slow
@pytest.mark.parametrize(
    "sampler_name, steps, generate_kw",
    [("ddpm", 20, dict(sampler="ddim", steps=10, eta=1.0)), ("dpm++2m", 6, dict(sampler="dpm++2m", steps=5, eta=0.0))],
)
def test_samples_are_deterministic_keyed_and_independent_of_the_batch(train_ckpt, sampler_name, steps, generate_kw):
    cfg, net, _ = ckpt_convert.load_for_sampling(train_ckpt)
    sampler = build_keyed_sampler(cfg, net, sampler=sampler_name, steps=steps, eta=0.0)
    four = sampler.sample([0, 1, 2, 3], seed=7).asnumpy()
    np.testing.assert_array_equal(sampler.sample([0, 1, 2, 3], seed=7).asnumpy(), four)
    # conv rounding may differ by batch size, nothing else
    np.testing.assert_allclose(sampler.sample([2, 3], seed=7).asnumpy(), four[2:], atol=1e-5)
    np.testing.assert_allclose(sampler.sample([3, 0, 2], seed=7).asnumpy(), four[[3, 0, 2]], atol=1e-5)
    assert np.abs(sampler.sample([0, 1, 2, 3], seed=8).asnumpy() - four).mean() > 0.1

    keyed = build_keyed_sampler(cfg, net, **generate_kw)
    by4 = inference.generate(keyed, batch_size=4, num_samples=5, seed=3)
    by2 = inference.generate(keyed, batch_size=2, num_samples=5, seed=3)
    assert by4.shape == (5, 8, 8, 1) and by4.dtype == np.uint8
    assert np.abs(by4.astype(int) - by2).max() <= 1 and (by4 != by2).mean() < 0.01
    assert len({by4[k].tobytes() for k in range(5)}) == 5


class _FakeKeyed:
    """A keyed sampler's interface: sample n of seed s is the constant image (n - 5 s) / 4, float32 [1, 2, 3]."""

    num_steps = 3
    shape = (1, 2, 3)

    def __init__(self):
        self.calls = []

    def sample(self, indices, *, seed, progress=None):
        self.calls.append(list(indices))
        for k in range(self.num_steps):
            if progress is not None:
                progress(k + 1)
        rows = (np.asarray(indices, np.float32) - 5 * seed) / 4
        return Tensor(np.broadcast_to(rows[:, None, None, None], (len(indices), *self.shape)).copy())


def test_generate_draws_each_sample_once_from_its_key_in_padded_batches():
    keyed, ticks = _FakeKeyed(), []
    images = inference.generate(keyed, num_samples=5, batch_size=2, seed=1, progress=lambda d, t: ticks.append((d, t)))
    assert keyed.calls == [[0, 1], [2, 3], [4, 0]]  # one batch size for one compiled graph: the last one padded
    assert ticks == [(d, 9) for d in range(1, 10)]  # 3 batches x 3 steps
    expected = np.array([-1.25, -1.0, -0.75, -0.5, -0.25], np.float32)
    floats = inference.generate(keyed, num_samples=5, batch_size=4, seed=1, uint8=False)
    assert floats.shape == (5, 1, 2, 3) and floats.dtype == np.float32
    np.testing.assert_array_equal(floats[:, 0, 1, 2], expected)
    assert images.shape == (5, 2, 3, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, to_uint8(floats))
    np.testing.assert_array_equal(images[:, 1, 2, 0], [0, 0, 32, 64, 96])  # clipped, rint((x + 1) * 127.5)
    with pytest.raises(ValueError, match="must be >= 1"):
        inference.generate(keyed, num_samples=0, batch_size=2, seed=1)


@pytest.mark.slow
def test_dpm_solver_starts_from_ddims_keyed_x_T(train_ckpt):
    # the same keyed x_T as DDIM (the trajectories differ: tests/test_diffusion.py's oracles; this network, 4 steps
    # from its zero-initialised output layer, predicts eps ~ 0, for which every deterministic sampler ends alike)
    cfg, net, _ = ckpt_convert.load_for_sampling(train_ckpt)
    dpm, ddim = (build_keyed_sampler(cfg, net, sampler=name, steps=6, eta=0.0) for name in ("dpm++2m", "ddim"))
    x_T = [s.noise(seed_tensor(7), Tensor(np.array([0, 1], np.int32)), s._x_T_stream) for s in (dpm, ddim)]
    np.testing.assert_array_equal(x_T[0].asnumpy(), x_T[1].asnumpy())


@pytest.mark.slow
def test_training_grids_and_eval_use_their_configured_sampler(tmp_path, monkeypatch):
    """run.sampler / eval.sampler choose the trainer's sampler (its images cannot tell: an untrained network's output
    layer is zero-initialised, so it predicts eps = 0, for which every deterministic sampler ends alike)."""
    from ddpm_dist.config import load_config
    from ddpm_dist.device import setup_device
    from ddpm_dist.diffusion.sampling import DDIMStep, DPMSolverPP2MStep
    from ddpm_dist.diffusion.schedule import space_timesteps_logsnr
    from ddpm_dist.train.trainer import Trainer

    cfg = load_config(TINY, ["run.sampler=dpm++2m", "run.sample_steps=4", "eval.sample_steps=3", "run.num_samples=3",
                             f"run.out_dir={tmp_path / 'run'}", "data.path=unused"])  # fmt: skip
    trainer = Trainer(cfg, device=setup_device("CPU", mode="graph"), data=iter(()))
    built = []
    real = trainer.hooks.keyed_sampler

    def spy(sampler, steps):
        keyed = real(sampler, steps)
        built.append((sampler, steps, type(keyed.keyed_step), keyed.num_steps))
        return keyed

    monkeypatch.setattr(trainer.hooks, "keyed_sampler", spy)
    images = trainer.hooks.ema_samples(3)  # what the grid uses
    assert images.shape == (3, 1, 8, 8) and np.isfinite(images).all()
    assert built == [("dpm++2m", 4, DPMSolverPP2MStep, 4)]
    keyed = real("dpm++2m", 4)
    np.testing.assert_array_equal(keyed.keyed_step.timestep_map.asnumpy(),
                                  space_timesteps_logsnr(build_schedule(cfg), 4))  # fmt: skip
    trainer.hooks.ema_samples(2, sampler=cfg.eval.sampler, steps=cfg.eval.sample_steps)  # what evaluate passes
    assert built[-1][:3] == ("ddim", 3, KeyedStep) and isinstance(real("ddim", 3).keyed_step.step, DDIMStep)


# ---------------------------------------------------------------- the CLI, one worker and two
@pytest.mark.slow
def test_sample_cli_writes_npz_grid_and_individual_pngs(train_ckpt, tmp_path):
    ckpt = ckpt_convert.convert(train_ckpt, tmp_path / "ema.ckpt")
    out = tmp_path / "out"
    res = run_tool(SAMPLE, "--ckpt", str(ckpt), "--out", str(out), "--sampler", "ddim", "--steps", "5",
                   "--num-samples", "6", "--batch-size", "4", "--seed", "3", "--png-individual")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "sampling 6 images (ddim-5" in res.stdout and "sampling: 100%" in res.stderr  # the progress bar
    images = np.load(out / "samples.npz")["arr_0"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{n:06d}.png" for n in range(6)]
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[4])), images[4, :, :, 0])
    grid = np.asarray(Image.open(out / "grid.png"))  # 8x8 images upscaled 8x, 1 px borders, 3 per row
    assert grid.shape == (2 * 65 + 1, 3 * 65 + 1)
    np.testing.assert_array_equal(grid[66:130, 1:65], images[3, :, :, 0].repeat(8, 0).repeat(8, 1))
    settings = yaml.safe_load((out / "samples.json").read_text())
    assert settings["seed"] == 3 and settings["steps"] == 5 and settings["weights"] == "ema"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ema.ckpt", "out"]  # no staging folder left

    again = run_tool(SAMPLE, "--ckpt", str(ckpt), "--out", str(out), "--rgb", "--overwrite", "--grid", "0",
                     "--sampler", "ddim", "--steps", "5", "--num-samples", "6", "--seed", "3")  # fmt: skip
    assert again.returncode == 0, again.stderr
    rgb = np.load(out / "samples.npz")["arr_0"]
    assert rgb.shape == (6, 8, 8, 3) and np.array_equal(rgb[..., 1:2], images)  # same seed, other batch size
    assert not (out / "images").exists() and not (out / "grid.png").exists()  # old outputs replaced, not mixed


def sample_on_two_workers(*args: str, log_dir) -> str:
    """tools/sample.py under launch/run_8p.sh with 2 msrun workers; asserts exit 0 and returns the worker logs."""
    res = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), *args],
        env=env() | {"ENTRY": SAMPLE, "DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(log_dir)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    logs = worker_logs(log_dir)
    assert res.returncode == 0, res.stderr + logs
    return logs


@pytest.mark.slow
@pytest.mark.distributed
def test_one_and_two_msrun_workers_draw_the_same_images(train_ckpt, tmp_path):
    common = ["--ckpt", str(train_ckpt), "--sampler", "ddpm", "--num-samples", "5", "--seed", "11"]
    one = run_tool(SAMPLE, *common, "--out", str(tmp_path / "one"), "--batch-size", "4")
    assert one.returncode == 0, one.stderr
    logs = sample_on_two_workers(*common, "--out", str(tmp_path / "two"), "--batch-size", "2", log_dir=tmp_path / "l")
    assert "x 2 worker(s)" in logs
    a, b = np.load(tmp_path / "one" / "samples.npz")["arr_0"], np.load(tmp_path / "two" / "samples.npz")["arr_0"]
    assert a.shape == b.shape == (5, 8, 8, 1)
    # ranks draw samples 0-2 and 3-4 (the last batch of each rank padded); only conv rounding may differ
    assert np.abs(a.astype(int) - b).max() <= 1 and (a != b).mean() < 0.01
    assert len({a[k].tobytes() for k in range(5)}) == 5  # five different images, not one repeated


@pytest.mark.slow
@pytest.mark.distributed
def test_dpm_solver_on_one_and_two_msrun_workers_draws_the_same_images(train_ckpt, tmp_path):
    common = ["--ckpt", str(train_ckpt), "--sampler", "dpm++2m", "--steps", "6", "--num-samples", "5", "--seed", "4"]
    one = run_tool(SAMPLE, *common, "--out", str(tmp_path / "one"), "--batch-size", "5")
    assert one.returncode == 0, one.stderr
    assert "sampling 5 images (dpm++2m-6, seed 4)" in one.stdout
    logs = sample_on_two_workers(*common, "--out", str(tmp_path / "two"), "--batch-size", "2", log_dir=tmp_path / "l")
    assert "x 2 worker(s)" in logs
    a, b = np.load(tmp_path / "one" / "samples.npz")["arr_0"], np.load(tmp_path / "two" / "samples.npz")["arr_0"]
    assert a.shape == b.shape == (5, 8, 8, 1)
    assert np.abs(a.astype(int) - b).max() <= 1 and (a != b).mean() < 0.01
    assert len({a[k].tobytes() for k in range(5)}) == 5
    settings = json.loads((tmp_path / "two" / "samples.json").read_text())
    assert settings["sampler"] == "dpm++2m" and settings["steps"] == 6 and settings["spacing"] == "logsnr"


@pytest.mark.slow
@pytest.mark.distributed
def test_sample_eval_on_two_msrun_workers_matches_tools_eval(train_ckpt, tmp_path):
    """tools/sample.py --eval: two workers sample, then extract Inception features in shards; metrics.json lands
    beside the samples and equals a single-process tools/eval.py on the written npz."""
    from eval_helpers import random_inception

    inception = random_inception(tmp_path / "inception.ckpt")
    data = prepare_digits(tmp_path / "digits8")
    evaluation = ["--ref", str(data), "--ref-num", "12", "--inception", str(inception), "--eval-batch-size", "4"]
    logs = sample_on_two_workers(
        "--ckpt", str(train_ckpt), "--sampler", "ddim", "--steps", "4", "--num-samples", "11", "--batch-size", "4",
        "--out", str(tmp_path / "two"), "--eval", *evaluation, "--cache-dir", str(tmp_path / "cache2"),
        log_dir=tmp_path / "logs",
    )  # fmt: skip
    assert "FID " in logs and "11 samples (8x8x1 uint8) vs 12 images of" in logs
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["num_samples"] == 11 and metrics["reference"]["num"] == 12 and np.isfinite(metrics["fid"])
    one = run_tool(str(ROOT / "tools" / "eval.py"), "--samples", str(tmp_path / "two" / "samples.npz"), *evaluation,
                   "--out", str(tmp_path / "one.json"), "--cache-dir", str(tmp_path / "cache1"))  # fmt: skip
    assert one.returncode == 0, one.stderr
    single = json.loads((tmp_path / "one.json").read_text())
    assert metrics["fid"] == pytest.approx(single["fid"], rel=1e-5, abs=1e-6)
    assert metrics["inception_score"]["mean"] == pytest.approx(single["inception_score"]["mean"], rel=1e-5)


# ---------------------------------------------------------------- bad inputs: one line, exit 2, nothing written
def _fake_checkpoints(tmp_path):
    rnd = tmp_path / "random.ckpt"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    foreign = tmp_path / "foreign.ckpt"  # a valid MindSpore checkpoint that ddpm-dist did not write
    ms.save_checkpoint([{"name": "w", "data": Tensor(np.ones(3, np.float32))}], str(foreign))
    infer = tmp_path / "infer.ckpt"  # has the inference kind; convert needs a training checkpoint
    ms.save_checkpoint([{"name": "w", "data": Tensor(np.ones(3, np.float32))}], str(infer),
                       append_dict={"meta.kind": KIND_INFERENCE})  # fmt: skip
    return {"random": rnd, "foreign": foreign, "infer": infer, "missing": tmp_path / "nope.ckpt"}


@pytest.mark.parametrize(
    "tool,args,needle",
    [
        (SAMPLE, ["--ckpt", "{missing}"], "checkpoint not found"),
        pytest.param(SAMPLE, ["--ckpt", "{random}"], "not a readable MindSpore checkpoint", marks=pytest.mark.slow),
        pytest.param(SAMPLE, ["--ckpt", "{foreign}"], "not a ddpm-dist checkpoint", marks=pytest.mark.slow),
        (SAMPLE, ["--ckpt", "{random}", "--batch-size", "0"], "--batch-size must be >= 1"),
        (SAMPLE, ["--ckpt", "{random}", "--seed", "-1"], "--seed"),
        (SAMPLE, ["--ckpt", "{random}", "--sampler", "plms"], "invalid choice"),
        (SAMPLE, ["--ckpt", "{random}", "--sampler", "dpm++2m", "--eta", "1"], "--eta is DDIM's noise scale"),
        (SAMPLE, ["--ckpt", "{random}", "--eval"], "--eval needs --ref and --inception"),
        (
            SAMPLE,
            ["--ckpt", "{random}", "--eval", "--ref", "{missing}", "--inception", "{random}"],
            "reference not found",
        ),
        (
            SAMPLE,
            ["--ckpt", "{random}", "--eval", "--ref", "{random}", "--inception", "{missing}"],
            "convert_inception.py",
        ),
        (
            SAMPLE,
            ["--ckpt", "{random}", "--eval", "--ref", "{random}", "--inception", "{random}", "--num-samples", "5"],
            "--eval needs --num-samples >= max(2, --splits 10)",
        ),
        (CONVERT, ["--input", "{missing}"], "checkpoint not found"),
        pytest.param(CONVERT, ["--input", "{infer}"], "a training checkpoint is needed", marks=pytest.mark.slow),
        pytest.param(CONVERT, ["--input", "{random}"], "not a readable MindSpore checkpoint", marks=pytest.mark.slow),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(tool, args, needle, tmp_path):
    files = _fake_checkpoints(tmp_path)
    out = tmp_path / ("out" if tool == SAMPLE else "out.ckpt")
    res = run_tool(tool, *[a.format(**files) for a in args], "--out" if tool == SAMPLE else "--output", str(out))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.mark.slow
def test_unwritable_out_is_found_before_the_checkpoint_is_read(tmp_path):
    files = _fake_checkpoints(tmp_path)
    res = run_tool(SAMPLE, "--ckpt", files["random"], "--out", "/proc/s")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines == ["error: --out /proc/s: cannot write there (No such file or directory)"]


@pytest.mark.slow
def test_bad_requests_on_a_real_checkpoint(train_ckpt, tmp_path):
    res = run_tool(SAMPLE, "--ckpt", str(train_ckpt), "--out", str(tmp_path / "o"), "--steps", "101")
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --steps 101 exceeds the model's 100 diffusion timesteps"
    assert not (tmp_path / "o").exists()
    target = tmp_path / "exists.ckpt"
    target.write_bytes(b"keep me")
    res = run_tool(CONVERT, "--input", str(train_ckpt), "--output", str(target))
    assert res.returncode == 2 and "use --overwrite" in res.stderr and target.read_bytes() == b"keep me"
    with pytest.raises(CheckpointError, match="must end in .ckpt or .safetensors"):
        ckpt_convert.convert(train_ckpt, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="holds ema weights only"):
        ckpt_convert.read_weights(ckpt_convert.convert(train_ckpt, tmp_path / "e.ckpt"), weights="raw")


# ---------------------------------------------------------------- bench/sampling_quality.py
def _quality_bench():
    import importlib.util

    if str(ROOT / "bench") not in sys.path:  # as when run as a script: its directory first, for `import benchlib`
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("sampling_quality", ROOT / "bench" / "sampling_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_bench_settings_and_metric_choice(monkeypatch):
    from ddpm_dist.eval import digits as digits_module

    bench = _quality_bench()
    assert bench.parse_settings("ddpm-100, ddim-10,dpm++2m-20", 100) == [("ddpm", 100), ("ddim", 10), ("dpm++2m", 20)]
    for bad in ("ddim-0", "plms-10", "ddim-101", "ddim", ""):
        with pytest.raises(bench.BenchError):
            bench.parse_settings(bad, 100)
    # the digits metric for 1-channel images, pixel FD for RGB ones; an explicit choice is kept
    assert bench.choose_metric("auto", 1) == "digits" and bench.choose_metric("auto", 3) == "pixel-fd"
    assert bench.choose_metric("pixel-fd", 1) == "pixel-fd"
    seen = {}

    def digits_scores(images, *, reference):
        seen.update(shape=images.shape, reference=reference)
        return {"fd": 1.5, "confidence": 0.9, "class_entropy": 2.2, "n": len(images), "reference": reference,
                "reference_n": 597, "protocol": "p"}  # fmt: skip

    monkeypatch.setattr(digits_module, "digits_scores", digits_scores)
    score = bench.make_scorer("digits")
    images = np.zeros((5, 8, 8, 1), np.uint8)
    assert score(images)["fd"] == 1.5 and seen == {"shape": (5, 8, 8, 1), "reference": "heldout"}
    # pixel FD: 0 against itself, grows with a shift of the mean (|shift|^2 * pixels for equal covariances)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 200, (400, 4, 4, 1)).astype(np.uint8)
    pixel_fd = bench.make_scorer("pixel-fd", ref)
    assert abs(pixel_fd(ref)["fd"]) < 1e-6
    assert pixel_fd(ref + 51)["fd"] == pytest.approx(16 * 0.2**2, rel=1e-3)


@pytest.mark.slow
def test_quality_bench_prints_json_per_setting(train_ckpt):
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sampling_quality.py"), "--ckpt", str(train_ckpt), "--settings",
         "ddim-3,dpm++2m-3", "--num-samples", "6", "--seeds", "0,1", "--batch-size", "4"],
        env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    # 1-channel digits: the digits metric against the held-out real digits
    assert report["metric"] == "digits" and report["num_samples"] == 6 and report["seeds"] == [0, 1]
    assert report["reference"] == "heldout digits"
    assert list(report["settings"]) == ["ddim-3", "dpm++2m-3"]
    for name, entry in report["settings"].items():
        assert entry["nfe"] == 3 and len(entry["seconds"]) == 2 and len(entry["scores"]) == 2, name
        assert all(s["n"] == 6 and np.isfinite(s["fd"]) and s["fd"] > 0 for s in entry["scores"])
        assert all(s["reference"] == "heldout" and 0 < s["confidence"] <= 1 for s in entry["scores"])
        assert entry["fd_mean"] == pytest.approx(np.mean([s["fd"] for s in entry["scores"]]))
    assert report["settings"]["dpm++2m-3"]["spacing"] == "logsnr"
