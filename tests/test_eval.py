"""FID and IS: the metrics against independent formulas, the Inception port against pytorch-fid's own network (when
PyTorch is installed), cached reference statistics, the CLIs and their errors, and sharding over msrun workers."""

from __future__ import annotations

import json
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from eval_helpers import random_inception, torch_fid_available
from train_helpers import ROOT, TINY, env, prepare_digits, run_train, scalars

from ddpm_dist.eval.metrics import MetricError, feature_stats, fid_from_features, frechet_distance, inception_score

EVAL = str(ROOT / "tools" / "eval.py")
CONVERT = str(ROOT / "tools" / "convert_inception.py")
TORCH_REFERENCE = str(ROOT / "tests" / "workers" / "torch_fid_reference.py")


def run_tool(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr + res.stdout
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------- metrics


def frechet_by_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """FID the TTUR / pytorch-fid way, with scipy's sqrtm of the non-symmetric product S1 S2 (real part): an
    independent route from the implementation's symmetric eigendecompositions."""
    from scipy import linalg

    root = linalg.sqrtm(sigma1 @ sigma2)
    root = (root[0] if isinstance(root, tuple) else root).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def correlated(rng, n: int, d: int, scale: float = 1.0) -> np.ndarray:
    return rng.normal(size=(n, d)) @ (scale * rng.normal(size=(d, d)) / np.sqrt(d))


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_length():
    rng = np.random.default_rng(0)
    x = correlated(rng, 400, 48)
    assert abs(fid_from_features(x, x)) < 1e-8
    fids = []
    for shift in (0.1, 0.5, 1.0, 2.0):
        fid = fid_from_features(x, x + shift)  # same covariance: FID = ||mu1 - mu2||^2 = d shift^2
        assert fid == pytest.approx(48 * shift**2, rel=1e-7)
        fids.append(fid)
    assert fids == sorted(fids)


def test_fid_matches_the_sqrtm_formula_on_fixed_feature_sets():
    rng = np.random.default_rng(1)
    a, b = correlated(rng, 600, 64), correlated(rng, 500, 64, scale=1.5) + 0.3
    stats = (*feature_stats(a), *feature_stats(b))
    assert frechet_distance(*stats) == pytest.approx(frechet_by_sqrtm(*stats), rel=1e-9)
    assert frechet_distance(*stats) == pytest.approx(frechet_distance(*stats[2:], *stats[:2]), rel=1e-9)


def test_fid_of_near_singular_covariances_is_finite_and_matches_the_formula():
    rng = np.random.default_rng(2)
    a, b = correlated(rng, 20, 96), correlated(rng, 30, 96)  # fewer samples than dimensions: rank-deficient
    stats = (*feature_stats(a), *feature_stats(b))
    fid = frechet_distance(*stats)
    assert np.isfinite(fid) and fid > 0
    assert fid == pytest.approx(frechet_by_sqrtm(*stats), rel=1e-5)


@pytest.mark.slow
def test_fid_matches_pytorch_fid_when_installed():
    if not torch_fid_available():
        pytest.skip("pytorch-fid is not installed")
    rng = np.random.default_rng(3)
    stats = (*feature_stats(correlated(rng, 300, 32)), *feature_stats(correlated(rng, 300, 32) + 0.2))
    code = ("import sys, numpy as np; from pytorch_fid.fid_score import calculate_frechet_distance as f; "
            "d = np.load(sys.argv[1]); print(repr(float(f(d['m1'], d['s1'], d['m2'], d['s2']))))")  # fmt: skip
    path = ROOT / "tests" / ".fid_stats.npz"
    try:
        np.savez(path, m1=stats[0], s1=stats[1], m2=stats[2], s2=stats[3])
        res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    finally:
        path.unlink(missing_ok=True)
    assert res.returncode == 0, res.stderr
    assert frechet_distance(*stats) == pytest.approx(float(res.stdout.strip().splitlines()[-1]), rel=1e-9)


def test_inception_score_of_uniform_logits_is_one_and_of_k_confident_classes_is_k():
    mean, std = inception_score(np.zeros((100, 1008)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    logits = np.full((200, 1008), -50.0)
    logits[np.arange(200), np.arange(200) % 5] = 50.0  # every split holds 5 classes, equally often, with certainty
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(5.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    one_class = np.zeros((50, 10))
    one_class[:, 3] = 30.0
    assert inception_score(one_class, splits=5)[0] == pytest.approx(1.0, abs=1e-9)


def test_metrics_reject_bad_shapes():
    with pytest.raises(MetricError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(MetricError, match="N >= splits"):
        inception_score(np.zeros((5, 1008)), splits=10)
    with pytest.raises(MetricError, match="N >= 2"):
        feature_stats(np.zeros((1, 8)))


# --------------------------------------------------------------------------------------------------- network


def test_resize_matrix_is_an_interpolation_and_the_identity_at_299():
    from ddpm_dist.eval.inception import resize_matrix

    for size in (8, 16, 32, 64, 299, 512):
        a = resize_matrix(size)
        assert a.shape == (299, size) and np.allclose(a.sum(axis=1), 1.0, atol=1e-6) and (a >= 0).all()
    assert np.array_equal(resize_matrix(299), np.eye(299, dtype=np.float32))
    ramp = np.arange(32, dtype=np.float32)  # a linear ramp stays linear inside the clamped borders
    out = resize_matrix(32) @ ramp
    src = (np.arange(299) + 0.5) * 32 / 299 - 0.5
    inside = (src >= 0) & (src <= 31)
    assert np.allclose(out[inside], src[inside], atol=1e-4)


pytestmark = pytest.mark.usefixtures("cpu_graph")


@pytest.mark.slow
def test_inception_port_gives_pytorch_fid_features(tmp_path):
    """pytorch-fid's own network with random weights, converted by tools/convert_inception.py, gives the same pool
    features and logits in MindSpore for 32x32 (resized) and 299x299 inputs."""
    if not torch_fid_available():
        pytest.skip("needs PyTorch, torchvision and pytorch-fid (pip install torch torchvision pytorch-fid)")
    from ddpm_dist.eval.weights import build_inception

    res = run_tool(TORCH_REFERENCE, str(tmp_path))
    assert res.returncode == 0, res.stderr
    res = run_tool(CONVERT, str(tmp_path / "pt_inception.pth"), str(tmp_path / "inception.ckpt"))
    assert res.returncode == 0, res.stderr
    ref = np.load(tmp_path / "reference.npz")
    for size in (32, 299):
        net, meta = build_inception(tmp_path / "inception.ckpt", input_size=(size, size))
        x = ref[f"images_{size}"].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
        pool, logits = (t.asnumpy() for t in net(ms.Tensor(x)))
        torch32, exact = ref[f"pool_{size}"], ref[f"pool64_{size}"]
        scale = np.abs(torch32).max()
        assert 0.5 < scale < 100, scale  # calibrated: real-image feature magnitudes
        assert np.abs(pool - torch32).max() <= 1e-4 * scale, (size, np.abs(pool - torch32).max(), scale)
        # MindSpore float32 is as close to the float64 network as PyTorch float32 is
        assert np.abs(pool - exact).max() <= 2 * np.abs(torch32 - exact).max() + 1e-6
        assert np.abs(logits - ref[f"logits_{size}"]).max() <= 1e-4 * np.abs(ref[f"logits_{size}"]).max()


def test_converter_errors_are_one_line_and_leave_nothing(tmp_path):
    dst = tmp_path / "out.ckpt"
    assert "input not found" in one_error_line(run_tool(CONVERT, str(tmp_path / "missing.pth"), str(dst)))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a weights file")
    one_error_line(run_tool(CONVERT, str(bad), str(dst)))
    assert "must end in .ckpt" in one_error_line(run_tool(CONVERT, str(bad), str(tmp_path / "out.bin")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pth"]


@pytest.fixture(scope="module")
def inception_ckpt(tmp_path_factory):
    return random_inception(tmp_path_factory.mktemp("inception") / "random_inception.ckpt")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The embedded digits at 16x16 as a prepared data set and its first 20 images as an npz."""
    from ddpm_dist.data import read_images, read_manifest

    root = tmp_path_factory.mktemp("digits")
    data = prepare_digits(root / "digits16", size=16)
    images = read_images(read_manifest(str(data)), limit=20)
    np.savez(root / "first20.npz", arr_0=images)
    return data, root / "first20.npz", images


@pytest.mark.slow
def test_evaluate_self_shift_and_cache(inception_ckpt, digits, tmp_path):
    """(Each FID takes two symmetric eigendecompositions of 2048x2048 matrices, a few seconds here.)"""
    from ddpm_dist.eval.evaluate import evaluate
    from ddpm_dist.eval.features import FeatureExtractor
    from ddpm_dist.eval.reference import cache_key, open_reference

    data, npz, images = digits
    extractor = FeatureExtractor(inception_ckpt, batch_size=10)
    cache = tmp_path / "cache"
    first = evaluate(images, ref=str(npz), extractor=extractor, cache_dir=cache, splits=10)
    assert not first["reference"]["cached"] and len(list(cache.glob("ref_*.npz"))) == 1
    assert abs(first["fid"]) < 1e-3, first["fid"]
    brighter = np.clip(images.astype(np.int16) + 100, 0, 255).astype(np.uint8)
    shifted = evaluate(brighter, ref=str(npz), extractor=extractor, cache_dir=cache, splits=10)
    assert shifted["reference"]["cached"] and shifted["fid"] > 1.0 + abs(first["fid"]) * 1000, shifted["fid"]
    assert 1.0 <= first["inception_score"]["mean"] < 1008
    # the same 20 images read from the MindRecord data set: a different source (key), the same statistics
    from_dataset = open_reference(str(data), limit=20)
    assert from_dataset.kind == "dataset" and from_dataset.num == 20 and from_dataset.images is None
    assert np.array_equal(from_dataset.load_images(), images)
    key = cache_key(from_dataset, weights_sha256=extractor.fingerprint)
    assert key != first["reference"]["key"]
    # a different weights file is a different protocol: a different key
    assert cache_key(from_dataset, weights_sha256="0" * 64) != key


@pytest.mark.slow
def test_eval_cli_writes_metrics_and_a_stats_npz_reference_is_used_as_given(inception_ckpt, digits, tmp_path):
    from ddpm_dist.eval.features import FeatureExtractor
    from ddpm_dist.eval.metrics import feature_stats

    _, npz, images = digits
    pool, _ = FeatureExtractor(inception_ckpt, batch_size=20)(images)
    mu, sigma = feature_stats(pool)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    out = tmp_path / "m" / "metrics.json"
    res = run_tool(EVAL, "--samples", str(npz), "--ref", str(tmp_path / "stats.npz"), "--inception",
                   str(inception_ckpt), "--out", str(out), "--eval-batch-size", "20")  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = res.stdout.strip().splitlines()[-1]
    assert summary.startswith("FID ") and "pytorch-fid Inception-v3" in summary and not res.stderr.strip()
    result = json.loads(out.read_text())
    assert result["reference"]["kind"] == "stats" and abs(result["fid"]) < 1e-3
    assert result["num_samples"] == 20 and result["protocol"]["resize"].startswith("bilinear to 299x299")
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--inception", "{tmp}/none.ckpt"], "convert_inception.py"),
        (["--ref", "{tmp}/none"], "reference not found"),
        (["--samples", "{tmp}/none.npz"], "samples not found"),
        (["--splits", "0"], "--splits must be >= 1"),
        pytest.param(["--samples", "{tmp}/floats.npz"], "must be uint8", marks=pytest.mark.slow),
        pytest.param(["--inception", "{tmp}/floats.npz"], "expected a MindSpore", marks=pytest.mark.slow),
        pytest.param(["--ref", "{tmp}/garbage.npz"], "garbage.npz: not a readable npz", marks=pytest.mark.slow),
        pytest.param(["--samples", "{tmp}/garbage.npz"], "garbage.npz: not a readable npz", marks=pytest.mark.slow),
        (["--out", "/proc/e.json"], "--out /proc/e.json: cannot write there"),
        pytest.param(["--samples", "{tmp}/px8.npz"], "samples are 8x8 but the reference", marks=pytest.mark.slow),
        pytest.param(
            ["--samples", "{tmp}/px8.npz", "--ref", "{data}"],
            "samples are 8x8 but the reference",
            marks=pytest.mark.slow,
        ),  # fmt: skip
    ],
)
def test_eval_cli_bad_inputs_are_one_line(args, needle, inception_ckpt, digits, tmp_path):
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    np.savez(tmp_path / "px8.npz", arr_0=digits[2][:, ::2, ::2])  # the reference (digits16) is 16x16
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file")
    given = {"--samples": str(digits[1]), "--ref": str(digits[1]), "--inception": str(inception_ckpt),
             "--out": str(tmp_path / "m.json")}  # fmt: skip
    for key, value in zip(args[::2], args[1::2], strict=True):
        given[key] = value.format(tmp=tmp_path, data=digits[0])
    res = run_tool(EVAL, *[x for kv in given.items() for x in kv])
    line = one_error_line(res)
    assert needle in line, line
    if needle == "convert_inception.py":
        assert "pt_inception-2015-12-05-6726825d.pth" in line
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_training_evaluates_fid_of_the_ema_weights_every_n_steps(inception_ckpt, tmp_path):
    data = prepare_digits(tmp_path / "digits8")
    run_dir = tmp_path / "run"
    common = ["--config", TINY, f"data.path={data}", "train.total_steps=4", "train.ckpt_every=0", "eval.every=3"]
    res = run_train(
        *common,
        f"run.out_dir={run_dir}",
        f"eval.inception={inception_ckpt}",
        "eval.num_samples=10",
        "eval.sample_steps=3",
        "eval.ref_num=12",
        "eval.batch_size=4",
        f"eval.cache_dir={tmp_path / 'c'}",
    )
    assert res.returncode == 0, res.stderr + res.stdout
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 4]  # every 3 steps, and at the end
    assert [line["reference"]["cached"] for line in lines] == [False, True]
    assert all(line["num_samples"] == 10 and line["reference"]["num"] == 12 for line in lines)
    assert all(np.isfinite(line["fid"]) and line["sampler"] == "ddim-3" for line in lines)
    tb = scalars(run_dir)
    assert [s for s, _ in tb["eval/fid"]] == [3, 4] and [s for s, _ in tb["eval/is"]] == [3, 4]
    assert "step 3 EMA ddim-3: FID " in res.stdout
    # a missing weights file stops the run before its first step, with one line
    bad = run_train(*common, f"run.out_dir={tmp_path / 'bad'}", f"eval.inception={tmp_path / 'none.ckpt'}")
    line = one_error_line(bad)
    assert "eval.inception" in line and "convert_inception.py" in line
    assert not list((tmp_path / "bad").glob("checkpoints/*.ckpt"))
