"""Likelihood evaluation (ddpm_dist/eval/likelihood.py, tools/eval.py --metric nll, eval.metric=nll): the bound of a
data set equals a float64 numpy loop over every t with the keyed noise's numpy specification, does not depend on the
batch size or the number of msrun workers, an exact denoiser of a one-image data set scores far below a wrong one,
training logs eval/nll_bpd, and bad input is one line with exit status 2."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from oracles import PointOracle
from test_likelihood import _numpy_bound
from train_helpers import ROOT, TINY, env, free_port, prepare_digits, run_train, scalars, worker_logs

from ddpm_dist.diffusion.keyed_noise import keyed_noise_reference
from ddpm_dist.diffusion.schedule import make_schedule
from ddpm_dist.eval.likelihood import (
    Likelihood,
    LikelihoodError,
    dataset_terms,
    strided_timesteps,
    summarize,
    x0_from_uint8,
)

EVAL = str(ROOT / "tools" / "eval.py")
T_TINY = 50  # diffusion.timesteps of the tiny model (a checkpoint of T < run.sample_steps 50 does not load)
pytestmark = pytest.mark.usefixtures("cpu_graph")


class Smooth(nn.Cell):
    """A fixed smooth function of (x_t, t), written again in numpy below: C outputs, or 2C with a variance output
    in (-1, 1) (a ``learned_range`` network)."""

    def __init__(self, learned: bool):
        super().__init__()
        self.learned = learned

    def construct(self, xt, t):
        tt = t.astype(ms.float32).reshape(-1, 1, 1, 1)
        pred = 0.8 * ops.tanh(xt) + 0.001 * tt
        if not self.learned:
            return pred
        return ops.concat((pred, ops.tanh(0.5 * xt - 0.02 * tt)), axis=1)


def smooth_numpy(xt: np.ndarray, t: int, learned: bool) -> np.ndarray:
    pred = 0.8 * np.tanh(xt) + 0.001 * t
    return np.concatenate([pred, np.tanh(0.5 * xt - 0.02 * t)], axis=1) if learned else pred


def images(n: int, shape=(4, 4, 2), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape)).astype(np.uint8)


def numpy_nll(betas, x0_u8: np.ndarray, outputs, *, seed: int, objective: str, var_type: str, clip: bool):
    """Per-image bound in bits/dim, float64, with x_t from the keyed noise's numpy specification:
    ``outputs(xt, t)`` is the network in float64."""
    x0 = x0_u8.transpose(0, 3, 1, 2).astype(np.float64) / 127.5 - 1.0
    abar = np.cumprod(1 - np.asarray(betas))
    idx = np.arange(len(x0))
    noises = np.stack([keyed_noise_reference(seed, idx, t, x0.shape[1:]).astype(np.float64) for t in range(len(betas))])
    outs = [outputs(np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noises[t], t) for t in range(len(betas))]
    return _numpy_bound(np.asarray(betas), x0, noises, outs, objective=objective, var_type=var_type, clip=clip)


# ---------------------------------------------------------------- the bound of a data set, in process
@pytest.mark.parametrize(
    "objective,var_type,clip", [("eps", "fixedlarge", True), ("eps", "fixedsmall", False), ("v", "learned_range", True)]
)
def test_the_bound_of_a_data_set_equals_a_numpy_loop_and_not_the_batch(objective, var_type, clip):
    T, seed = 10, 7
    schedule = make_schedule("linear", T, beta_start=1e-3, beta_end=0.2)
    learned = var_type == "learned_range"
    lik = Likelihood(model=Smooth(learned), schedule=schedule, objective=objective, var_type=var_type, clip_x0=clip,
                     shape=(2, 4, 4))  # fmt: skip
    data = images(5)
    terms = dataset_terms(lik, data, batch_size=2, seed=seed)  # batches [0, 1], [2, 3], [4, pad]
    assert terms.shape == (5, 1 + T)
    expect = numpy_nll(schedule.betas, data, lambda xt, t: smooth_numpy(xt, t, learned), seed=seed,
                       objective=objective, var_type=var_type, clip=clip)  # fmt: skip
    result = summarize(terms)
    np.testing.assert_allclose(result["per_image_bpd"], expect, rtol=2e-4)
    assert result["nll_bpd"] == pytest.approx(expect.mean(), rel=2e-4)
    assert result["prior_bpd"] + result["decoder_bpd"] + result["kl_bpd"] == pytest.approx(result["nll_bpd"], 1e-12)
    whole = dataset_terms(lik, data, batch_size=5, seed=seed)
    np.testing.assert_allclose(whole, terms, rtol=1e-5, atol=1e-6)  # the batch changes rounding only
    other_seed = summarize(dataset_terms(lik, data, batch_size=5, seed=seed + 1))["per_image_bpd"]
    assert not np.allclose(other_seed, result["per_image_bpd"], rtol=1e-4)  # the seed keys the noise


def test_strided_timesteps_cover_the_chain_in_equal_strata():
    t, w = strided_timesteps(10, 4)  # strata {1}, {2, 3}, {4 .. 9} (ends ~ 10^(1/3), ...): their geometric middles
    assert t.tolist() == [0, 1, 2, 6] and w.tolist() == [1, 1, 2, 6]
    t, w = strided_timesteps(1000, 100)
    assert len(t) == 100 and t[0] == 0 and w.sum() == 1000 and np.all(np.diff(t) > 0)
    assert t[:10].tolist() == list(range(10)) and np.all(np.diff(w[1:]) >= 0)  # single steps first, then growing
    ends = np.cumsum(w)  # stratum k covers [ends[k-1], ends[k]) and holds its step
    assert np.all((t[1:] >= ends[:-1]) & (t[1:] < ends[1:]))
    t, w = strided_timesteps(7, 7)
    assert t.tolist() == list(range(7)) and w.tolist() == [1.0] * 7  # K = T: the full bound
    with pytest.raises(ValueError, match="2 <= steps <= T"):
        strided_timesteps(10, 1)


def test_the_strided_estimate_weights_the_full_bounds_own_terms():
    T, seed = 10, 2
    schedule = make_schedule("linear", T, beta_start=1e-3, beta_end=0.2)
    data = images(3)

    def terms(timesteps):
        lik = Likelihood(model=Smooth(True), schedule=schedule, objective="eps", var_type="learned_range",
                         clip_x0=True, shape=(2, 4, 4), timesteps=timesteps)  # fmt: skip
        return dataset_terms(lik, data, batch_size=3, seed=seed)

    full = terms(None)
    t, w = strided_timesteps(T, 4)
    strided = terms(t)
    np.testing.assert_array_equal(strided, full[:, np.concatenate([[0], 1 + t])])  # the same noise, the same terms
    result = summarize(strided, timesteps=t, weights=w, num_timesteps=T)
    expect = full[:, 0].astype(np.float64) + strided[:, 1:].astype(np.float64) @ w
    np.testing.assert_allclose(result["per_image_bpd"], expect, rtol=1e-12)
    assert result["estimate"] == "strided 4 of 10" and result["terms_t"] == [0, 1, 2, 6]
    every = summarize(terms(np.arange(T)), timesteps=np.arange(T), weights=np.ones(T), num_timesteps=T)
    assert every["nll_bpd"] == pytest.approx(summarize(full)["nll_bpd"], rel=1e-12)


def test_an_exact_denoiser_of_a_one_image_data_set_scores_far_below_a_wrong_one():
    """p(x_{t-1} | x_t) of the exact eps is q's posterior: every KL is 0 with fixedsmall, and the decoder is
    N(x0, sigma_0^2) with the fixed sigma_0, so the bound is the prior term plus -log2 of the probability of x0's
    bin (both in float64 numpy). The exact denoiser of another image scores far higher."""
    T = 50
    schedule = make_schedule("linear", T, beta_start=1e-4, beta_end=0.2)
    data = images(1, shape=(8, 8, 1), seed=3)
    x_star = x0_from_uint8(data)[0]

    def nll(x_model):
        net = PointOracle(schedule, x_model)
        lik = Likelihood(model=net, schedule=schedule, objective="eps", var_type="fixedsmall", clip_x0=True,
                         shape=(1, 8, 8))  # fmt: skip
        return summarize(dataset_terms(lik, data, batch_size=1, seed=0))

    exact, wrong = nll(x_star), nll(x0_from_uint8(images(1, shape=(8, 8, 1), seed=4))[0])
    abar = float(schedule.alphas_cumprod[-1])
    x = x_star.astype(np.float64)
    prior = np.mean(0.5 * (-np.log(1 - abar) + (1 - abar) + abar * x**2 - 1)) / np.log(2)
    assert exact["prior_bpd"] == pytest.approx(prior, abs=1e-6)  # float32 cancellation in a ~1e-3 term
    assert exact["kl_bpd"] < 1e-6
    sigma = math.exp(0.5 * schedule.posterior_log_variance_clipped[0])
    inner = math.erf(1 / 255 / sigma / math.sqrt(2))  # P(|Z| < half bin / sigma); an edge bin adds its open tail
    probs = np.where(np.abs(x) > 0.999, 0.5 * (1 + inner), inner)
    assert exact["decoder_bpd"] == pytest.approx(np.mean(-np.log2(probs)), rel=1e-4)
    assert wrong["nll_bpd"] > 10 * exact["nll_bpd"] and wrong["kl_bpd"] > 10


def test_images_of_another_shape_are_refused():
    schedule = make_schedule("linear", 4, beta_start=1e-3, beta_end=0.2)
    lik = Likelihood(model=Smooth(False), schedule=schedule, objective="eps", var_type="fixedlarge", clip_x0=True,
                     shape=(2, 4, 4))  # fmt: skip
    with pytest.raises(LikelihoodError, match=r"the model takes uint8 \[N, 4, 4, 2\]"):
        dataset_terms(lik, images(3, shape=(4, 4, 1)), batch_size=2, seed=0)


# ---------------------------------------------------------------- a trained tiny model: training, the tool, msrun
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny config (T = 50) trained 4 steps, evaluating eval.metric=nll at step 4 on the first 6 training images."""
    root = tmp_path_factory.mktemp("nll")
    data = prepare_digits(root / "digits8")
    res = run_train("--config", TINY, f"data.path={data}", f"run.out_dir={root / 'run'}",
                    f"diffusion.timesteps={T_TINY}", "train.total_steps=4", "train.ckpt_every=0", "eval.every=4",
                    "eval.metric=nll", "eval.num_samples=6", "eval.batch_size=4", "run.seed=5")  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    (ckpt,) = (root / "run" / "checkpoints").glob("step_*.ckpt")
    return {"root": root, "data": data, "run": root / "run", "ckpt": ckpt}


def run_eval(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EVAL, "--metric", "nll", *args], env=env(), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def plain_loop_nll(ckpt, data, *, num: int, seed: int) -> np.ndarray:
    """The bound without ddpm_dist's likelihood code: the checkpoint's network called in a plain loop over t on
    x_t built in numpy from the keyed noise's specification, the terms in float64 numpy."""
    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.data import read_images, read_manifest

    cfg, net, _ = load_for_sampling(ckpt)
    betas = make_schedule("linear", cfg.diffusion.timesteps, beta_start=cfg.diffusion.beta_start,
                          beta_end=cfg.diffusion.beta_end).betas  # fmt: skip
    x0_u8 = read_images(read_manifest(str(data)), limit=num)

    def outputs(xt, t):
        tt = Tensor(np.full(len(xt), t, np.int32))
        return net(Tensor(xt.astype(np.float32)), tt).asnumpy().astype(np.float64)

    return numpy_nll(betas, x0_u8, outputs, seed=seed, objective=cfg.diffusion.objective,
                     var_type=cfg.diffusion.var_type, clip=cfg.diffusion.clip_x0)  # fmt: skip


@pytest.mark.slow
def test_training_logs_the_bound_and_the_tool_gives_the_same_number(trained, tmp_path):
    tb = scalars(trained["run"])
    assert [s for s, _ in tb["eval/nll_bpd"]] == [4]
    logged = json.loads((trained["run"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged["metric"] == "nll" and logged["num_images"] == 6 and logged["timesteps"] == T_TINY
    assert tb["eval/nll_bpd"][0][1] == pytest.approx(logged["nll_bpd"], rel=1e-6)
    for part in ("prior", "decoder", "kl"):
        assert tb[f"eval/nll_{part}_bpd"][0][1] == pytest.approx(logged[f"{part}_bpd"], rel=1e-6)
    # the tool on the run's checkpoint (EMA weights, the run's seed and data): the same number, other batch size
    out = tmp_path / "nll.json"
    res = run_eval("--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]), "--num-samples", "6",
                   "--batch-size", "5", "--seed", "5", "--out", str(out))  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(out.read_text())
    assert f"nll: {result['nll_bpd']:.4f}" in res.stdout and "over 6 images" in res.stdout
    assert f"{T_TINY} terms" in res.stdout and result["weights"] == "ema" and result["step"] == 4
    assert result["nll_bpd"] == pytest.approx(logged["nll_bpd"], rel=1e-5)
    # and a plain loop over t with numpy noise and numpy terms
    expect = plain_loop_nll(trained["ckpt"], trained["data"], num=6, seed=5)
    np.testing.assert_allclose(result["per_image_bpd"], expect, rtol=1e-4)
    assert 0.5 < result["nll_bpd"] < 20
    # the strided estimate evaluates the full bound's own terms at its steps
    res = run_eval("--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]), "--num-samples", "6",
                   "--batch-size", "5", "--seed", "5", "--nll-steps", "8",
                   "--out", str(tmp_path / "s.json"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    strided = json.loads((tmp_path / "s.json").read_text())
    assert "8 of 50 terms, strided estimate" in res.stdout and strided["estimate"] == "strided 8 of 50"
    np.testing.assert_allclose(strided["terms_bpd"], np.take(result["terms_bpd"], strided["terms_t"]), rtol=1e-6)
    assert strided["prior_bpd"] == result["prior_bpd"] and strided["decoder_bpd"] == result["decoder_bpd"]


@pytest.mark.slow
@pytest.mark.distributed
def test_one_and_two_msrun_workers_give_the_same_bound(trained, tmp_path):
    common = ["--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]), "--num-samples", "7", "--seed", "1"]
    one = run_eval(*common, "--batch-size", "7", "--out", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr
    res = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), "--metric", "nll", *common, "--batch-size", "2",
         "--out", str(tmp_path / "two.json")],
        env=env() | {"ENTRY": EVAL, "DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "l")},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    logs = worker_logs(tmp_path / "l")
    assert res.returncode == 0, res.stderr + logs
    assert "x 2 worker(s)" in logs and "nll: " in logs
    a, b = (json.loads((tmp_path / f"{k}.json").read_text()) for k in ("one", "two"))
    assert b["world_size"] == 2 and a["world_size"] == 1 and a["num_images"] == b["num_images"] == 7
    # rank 0 takes images 0-3, rank 1 4-6 (its last batch padded); each image's terms differ by conv rounding only
    np.testing.assert_allclose(b["per_image_bpd"], a["per_image_bpd"], rtol=1e-5)
    assert b["nll_bpd"] == pytest.approx(a["nll_bpd"], rel=1e-5)
    rel = np.abs(np.subtract(a["per_image_bpd"], b["per_image_bpd"])) / np.abs(a["per_image_bpd"])
    print(f"1 vs 2 workers: {a['nll_bpd']!r} vs {b['nll_bpd']!r}, largest per-image relative difference {rel.max()}")


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written
def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "required for --metric nll: --ckpt, --data"),
        (["--ckpt", "{tmp}/none.ckpt", "--data", "{tmp}"], "checkpoint not found"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}/none"], "data set not found"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--samples", "s.npz"], "--samples is for --metric fid"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--num-samples", "0"], "--num-samples must be >= 1"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--seed", "-1"], "--seed must be in [0, 2^32)"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--nll-steps", "1"], "--nll-steps must be >= 2"),
        (["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}", "--out", "/proc/n.json"], "cannot write there"),
        pytest.param(["--ckpt", "{tmp}/text.ckpt", "--data", "{tmp}"], "text.ckpt", marks=pytest.mark.slow),
    ],
)
def test_bad_tool_input_is_one_line_and_exit_2(args, needle, tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    res = run_eval("--out", str(tmp_path / "out.json"), *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert needle in one_error_line(res)
    assert not (tmp_path / "out.json").exists()


def test_fid_flags_are_refused_and_nll_flags_elsewhere_too(tmp_path):
    res = subprocess.run([sys.executable, EVAL, "--metric", "digits", "--samples", "s.npz", "--ckpt", "c.ckpt"],
                         env=env(), capture_output=True, text=True)  # fmt: skip
    assert "--ckpt is for --metric nll" in one_error_line(res)
    res = subprocess.run([sys.executable, EVAL, "--ref", "r", "--inception", "i"], env=env(), capture_output=True,
                         text=True)  # fmt: skip
    assert "required for --metric fid: --samples" in one_error_line(res)


@pytest.mark.slow
def test_data_of_another_size_and_a_bad_eval_ref_are_one_line(trained, tmp_path):
    big = prepare_digits(tmp_path / "digits16", size=16)
    res = run_eval("--ckpt", str(trained["ckpt"]), "--data", str(big), "--out", str(tmp_path / "o.json"))
    assert "holds 16x16x1 images, the model takes 8x8x1" in one_error_line(res)
    assert not (tmp_path / "o.json").exists()
    res = run_eval("--ckpt", str(trained["ckpt"]), "--data", str(trained["data"]), "--nll-steps", "51")
    assert "--nll-steps 51 exceeds the model's 50 diffusion timesteps" in one_error_line(res)
    res = run_train("--config", TINY, f"data.path={trained['data']}", f"run.out_dir={tmp_path / 'run'}",
                    "eval.every=2", "eval.metric=nll", f"eval.ref={tmp_path / 'none'}")  # fmt: skip
    line = one_error_line(res)
    assert "eval.ref" in line and "data set not found" in line
