"""The digits metric (the quickstart's yardstick): its pieces against independent formulas, its scale on real data
and noise, its inputs and references, the CLI, and training with eval.metric=digits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from scipy import special, stats
from train_helpers import ROOT, TINY, env, prepare_digits, run_train, scalars

pytest.importorskip("sklearn")

from ddpm_dist.eval import digits as D  # noqa: E402

EVAL = str(ROOT / "tools" / "eval.py")


def frechet_by_eigenvalues(mu1, sigma1, mu2, sigma2) -> float:
    """Tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), with symmetric eigendecompositions only."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def nearest(images: np.ndarray, k: int) -> np.ndarray:
    return images.repeat(k, axis=1).repeat(k, axis=2)


@pytest.fixture(scope="module")
def parts():
    return D.split()


def noise(n: int = 1000, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


# ---------------------------------------------------------------- pieces against independent formulas
def test_area_downsampling_is_the_block_mean_and_inverts_nearest_upsampling(parts):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 24, 24, 1), dtype=np.uint8)
    x = D.to_8x8(images)
    for n in range(3):
        for i in range(8):
            for j in range(8):
                block = images[n, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3, 0].astype(np.float64)
                assert x[n, 8 * i + j] == pytest.approx(block.sum() / 9 / 255, abs=1e-15)
    small = parts["heldout"][:50]
    np.testing.assert_array_equal(D.to_8x8(nearest(small, 2)), D.to_8x8(small))


def test_scores_match_independent_formulas(parts):
    images = nearest(parts["heldout"][:300], 2)
    noisy = np.clip(images.astype(int) + np.random.default_rng(1).integers(-60, 61, images.shape), 0, 255)
    images = noisy.astype(np.uint8)
    result = D.digits_scores(images, reference="train")
    net = D.classifier()
    f, g = net.features(D.to_8x8(images)), net.features(D.to_8x8(parts["train"]))
    assert f.shape == (300, D.HIDDEN)
    expect_fd = frechet_by_eigenvalues(f.mean(0), np.cov(f.T), g.mean(0), np.cov(g.T))
    assert result["fd"] == pytest.approx(expect_fd, rel=1e-6)
    probs = special.softmax(f @ net.w2 + net.b2, axis=1)
    assert result["confidence"] == pytest.approx(probs.max(axis=1).mean(), rel=1e-12)
    counts = np.bincount(probs.argmax(axis=1), minlength=10)
    assert result["class_entropy"] == pytest.approx(stats.entropy(counts), rel=1e-12)  # natural log
    assert (result["n"], result["reference"], result["reference_n"]) == (300, "train", D.NUM_TRAIN)


def test_class_entropy_ends():
    assert D.class_entropy(np.full(50, 3)) == 0.0
    assert D.class_entropy(np.arange(100) % 10) == pytest.approx(np.log(10))


def test_the_split_and_the_classifier_are_fixed_functions_of_the_package_data(parts):
    from sklearn.datasets import load_digits

    assert len(parts["train"]) == D.NUM_TRAIN and len(parts["train"]) + len(parts["heldout"]) == 1797
    order = np.random.default_rng(D.SPLIT_SEED).permutation(1797)
    np.testing.assert_array_equal(parts["heldout_labels"], load_digits().target[order[D.NUM_TRAIN :]])
    again = D.train_classifier(D.to_8x8(parts["train"]), parts["train_labels"])
    mine = D.classifier()
    for a, b in zip((again.w1, again.b1, again.w2, again.b2), (mine.w1, mine.b1, mine.w2, mine.b2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert D.heldout_accuracy() > 0.95


# ---------------------------------------------------------------- the scale
def test_scale_real_heldout_digits_are_close_confident_and_cover_all_classes_noise_is_far(parts):
    real = D.digits_scores(parts["heldout"], reference="train")
    assert real["confidence"] > 0.95 and real["class_entropy"] > 0.99 * np.log(10)
    uniform, gauss = (
        D.digits_scores(noise()),
        D.digits_scores(np.clip(np.random.default_rng(2).normal(128, 60, (1000, 16, 16)), 0, 255).astype(np.uint8)),
    )
    assert real["fd"] < 1.0 < 10.0 < uniform["fd"] and gauss["fd"] > 10.0
    assert uniform["confidence"] < real["confidence"] and uniform["class_entropy"] < 2.0
    up = D.digits_scores(nearest(parts["train"], 2))  # the nearest-upsampled training part vs held-out
    assert up["fd"] == pytest.approx(D.digits_scores(parts["train"])["fd"], rel=1e-12)  # upsampling does not count
    assert up["fd"] < 1.0
    assert D.digits_scores(nearest(parts["heldout"], 2), reference="heldout")["fd"] == pytest.approx(0.0, abs=1e-9)


def test_a_set_of_one_class_has_low_class_entropy(parts):
    ones = parts["heldout"][parts["heldout_labels"] == 1]
    result = D.digits_scores(ones)
    assert result["class_entropy"] < 0.5 and result["fd"] > D.digits_scores(parts["heldout"], reference="train")["fd"]


# ---------------------------------------------------------------- labelled samples (class-conditional models)
def class_fds(features, labels, ref_features, ref_labels) -> dict:
    """Per-class FD by the eigenvalue formula, from the features' own mean and covariance."""
    return {
        str(k): frechet_by_eigenvalues(features[labels == k].mean(0), np.cov(features[labels == k].T),
                                       ref_features[ref_labels == k].mean(0), np.cov(ref_features[ref_labels == k].T))
        for k in np.unique(labels)
    }  # fmt: skip


def test_class_accuracy_and_per_class_fd_match_an_independent_computation_on_real_digits(parts):
    """The held-out digits with their true labels, against the classifier's training part: the accuracy is the
    classifier's held-out accuracy, and each class's FD is that of the real class-k digits vs the real class-k
    reference, computed here from the features with scipy's softmax and the eigenvalue formula."""
    images, labels = nearest(parts["heldout"], 2)[..., None], parts["heldout_labels"]
    result = D.digits_scores(images, reference="train", labels=labels)
    net = D.classifier()
    f, g = net.features(D.to_8x8(images)), net.features(D.to_8x8(parts["train"]))
    pred = special.softmax(f @ net.w2 + net.b2, axis=1).argmax(axis=1)
    assert result["class_accuracy"] == pytest.approx((pred == labels).mean(), abs=1e-15)
    assert result["class_accuracy"] == pytest.approx(D.heldout_accuracy(), abs=1e-15)
    assert result["class_accuracy"] > 0.95
    expect = class_fds(f, labels, g, parts["train_labels"])
    assert sorted(result["fd_per_class"]) == [str(k) for k in range(10)]
    for k, fd in expect.items():
        assert result["fd_per_class"][k] == pytest.approx(fd, rel=1e-6, abs=1e-9), k
    assert result["fd_class_mean"] == pytest.approx(np.mean(list(expect.values())), rel=1e-6)
    assert result["per_class_reference"] == "train"
    # the unlabelled numbers are the same with or without labels
    plain = D.digits_scores(images, reference="train")
    assert {k: result[k] for k in plain} == plain
    # the scale: real class-k digits sit well below 1.5 from their class (the small-sample floor, ~0.7), the
    # digits of another class far away; against the held-out split the held-out digits are their own reference
    assert all(fd < 1.5 for fd in result["fd_per_class"].values())
    train_images, train_labels = parts["train"], parts["train_labels"]
    moved = D.digits_scores(train_images, labels=(train_labels + 1) % 10)  # class j drawn, class j+1 asked for
    assert moved["per_class_reference"] == "heldout" and min(moved["fd_per_class"].values()) > 10.0
    assert moved["class_accuracy"] == pytest.approx(0.0, abs=0.01)
    own = D.digits_scores(parts["heldout"], labels=labels)
    assert max(own["fd_per_class"].values()) == pytest.approx(0.0, abs=1e-9) and own["fd"] == pytest.approx(0, abs=1e-9)


def test_shuffled_labels_give_chance_accuracy_and_a_large_per_class_fd(parts):
    images, labels = parts["heldout"], parts["heldout_labels"]
    shuffled = np.random.default_rng(3).permutation(labels)
    result = D.digits_scores(images, labels=shuffled)
    assert 0.05 < result["class_accuracy"] < 0.18  # chance: sum of squared class shares, ~0.1
    true = D.digits_scores(images, labels=labels)
    assert result["fd_class_mean"] > 10.0 > 0.5 > true["fd_class_mean"]
    assert result["fd"] == true["fd"] and result["confidence"] == true["confidence"]  # labels change no other number


def test_only_the_requested_classes_are_scored(parts):
    three, seven = (parts["heldout"][parts["heldout_labels"] == k] for k in (3, 7))
    images = np.concatenate([three[:40], seven[:1]])
    labels = np.array([3] * 40 + [7], np.uint8)
    result = D.digits_scores(images, labels=labels)
    assert sorted(result["fd_per_class"]) == ["3", "7"] and result["fd_per_class"]["7"] is None  # one image: no cov
    assert result["fd_class_mean"] == result["fd_per_class"]["3"]
    assert "class accuracy" in D.summary(result) and "mean of 1 classes vs heldout" in D.summary(result)
    assert "class accuracy" not in D.summary(D.digits_scores(images))


@pytest.mark.parametrize(
    "labels, needle",
    [
        (np.zeros(4, np.float32), "labels as integers"),
        (np.zeros((4, 1), np.int64), "labels as integers"),
        (np.zeros(3, np.int64), "3 labels for 4 images"),
        (np.array([0, 1, 10, 2]), "label 10 is not a digit"),
        (np.array([0, -1, 1, 2]), "label -1 is not a digit"),
    ],
)
def test_bad_labels_are_one_line_errors(labels, needle):
    with pytest.raises(D.DigitsMetricError, match=needle) as err:
        D.digits_scores(np.zeros((4, 16, 16), np.uint8), labels=labels)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- inputs and references
@pytest.mark.parametrize(
    "images, needle",
    [
        (np.zeros((4, 16, 16), np.float32), "uint8 images"),
        (np.zeros((4, 16, 16, 3), np.uint8), "uint8 images"),
        (np.zeros((4, 12, 12), np.uint8), "8x8 or a multiple"),
        (np.zeros((4, 16, 8), np.uint8), "8x8 or a multiple"),
        (np.zeros((1, 8, 8), np.uint8), "at least 2 images"),
    ],
)
def test_bad_images_are_one_line_errors(images, needle):
    with pytest.raises(D.DigitsMetricError, match=needle) as err:
        D.digits_scores(images)
    assert "\n" not in str(err.value)


def test_references(parts, tmp_path):
    images = nearest(parts["heldout"][:200], 2)[..., None]
    with pytest.raises(D.DigitsMetricError, match="unknown digits reference 'test'"):
        D.digits_scores(images, reference="test")
    own = D.digits_scores(images, reference=images)
    assert own["fd"] == pytest.approx(0.0, abs=1e-9) and own["reference"] == "images" and own["reference_n"] == 200
    assert D.resolve_reference("") == "heldout" and D.resolve_reference("train") == "train"
    np.savez(tmp_path / "ref.npz", arr_0=images)
    np.testing.assert_array_equal(D.resolve_reference(str(tmp_path / "ref.npz")), images)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(D.DigitsMetricError, match="statistics npz is for FID"):
        D.resolve_reference(str(tmp_path / "stats.npz"))


# ---------------------------------------------------------------- tools/eval.py --metric digits
def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EVAL, *args], env=env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_eval_cli_digits_against_heldout_and_a_prepared_data_set(parts, tmp_path):
    samples = nearest(parts["heldout"], 2)[..., None]
    np.savez(tmp_path / "s.npz", arr_0=samples)
    res = run_eval("--metric", "digits", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["fd"] == pytest.approx(0.0, abs=1e-9) and result["reference"] == "heldout"
    assert result["n"] == 597 and "597 samples vs 597 heldout digits" in res.stdout
    data = prepare_digits(tmp_path / "digits16", size=16)
    res = run_eval("--metric", "digits", "--samples", str(tmp_path / "s.npz"), "--ref", str(data), "--out",
                   str(tmp_path / "m2.json"), "--num-samples", "100")  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "m2.json").read_text())
    assert result["reference"] == str(data) and result["reference_n"] == 1797 and result["n"] == 100
    expect = D.digits_scores(samples[:100], reference="heldout")  # the data set is all 1797 nearest-upsampled digits
    assert result["fd"] != pytest.approx(expect["fd"])


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--ref", "{tmp}/none"], "reference not found"),
        (["--inception", "{tmp}/w.ckpt"], "--inception is for --metric fid"),
        (["--num-samples", "1"], "--num-samples must be >= 2"),
        (["--samples", "{tmp}/rgb.npz"], "uint8 images"),
    ],
)
def test_eval_cli_digits_bad_inputs_are_one_line(extra, needle, tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 16, 16, 1), np.uint8))
    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((4, 16, 16, 3), np.uint8))
    given = {"--samples": str(tmp_path / "s.npz")}
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        given[key] = value.format(tmp=tmp_path)
    res = run_eval("--metric", "digits", *[x for kv in given.items() for x in kv], "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "m.json").exists()


def test_eval_cli_digits_scores_the_labels_in_arr_1(parts, tmp_path):
    """An npz as tools/sample.py writes it for a class-conditional model (arr_1: int64 labels [N]): the JSON and the
    line carry the class scores of the first --num-samples images, as digits_scores computes them."""
    samples = nearest(parts["heldout"], 2)[..., None]
    np.savez(tmp_path / "s.npz", samples, parts["heldout_labels"].astype(np.int64))
    res = run_eval("--metric", "digits", "--samples", str(tmp_path / "s.npz"), "--num-samples", "300", "--ref", "train",
                   "--out", str(tmp_path / "m.json"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "m.json").read_text())
    expect = D.digits_scores(samples[:300], reference="train", labels=parts["heldout_labels"][:300])
    assert result["n"] == 300 and result["class_accuracy"] == expect["class_accuracy"] > 0.95
    assert result["fd_per_class"] == pytest.approx(expect["fd_per_class"], rel=1e-12)
    assert result["fd_class_mean"] == pytest.approx(expect["fd_class_mean"], rel=1e-12)
    assert res.stdout.strip().splitlines()[-1] == D.summary(expect)
    assert "class accuracy 0.9" in res.stdout and "(mean of 10 classes vs train)" in res.stdout


@pytest.mark.parametrize(
    "labels, needle",
    [
        (np.array([0, 1, 10, 2]), "label 10 is not a digit"),
        (np.array([0, 1, 2]), "arr_1 holds 3 labels for 4 images"),
        (np.zeros(4, np.float32), "arr_1 (the class labels) must be integers [N]"),
        (np.array([0, -3, 1, 1]), "arr_1 holds label -3"),
    ],
)
def test_eval_cli_bad_labels_are_one_line(labels, needle, tmp_path):
    np.savez(tmp_path / "s.npz", np.zeros((4, 16, 16, 1), np.uint8), labels)
    res = run_eval("--metric", "digits", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "m.json"))
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert not (tmp_path / "m.json").exists()


def test_eval_cli_fid_checks_the_labels_too(tmp_path):
    """FID takes no labels but reads and checks arr_1: a mismatched count fails before the Inception network loads
    (the weights file here is not even a checkpoint)."""
    np.savez(tmp_path / "s.npz", np.zeros((4, 16, 16, 1), np.uint8), np.arange(5))
    (tmp_path / "w.ckpt").write_bytes(b"not weights")
    res = run_eval("--samples", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--inception",
                   str(tmp_path / "w.ckpt"))  # fmt: skip
    assert res.returncode == 2 and "arr_1 holds 5 labels for 4 images" in res.stderr, res.stderr


def test_eval_cli_fid_still_needs_its_reference_and_weights(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=np.zeros((4, 16, 16, 1), np.uint8))
    res = run_eval("--samples", str(tmp_path / "s.npz"))
    assert res.returncode == 2 and "required for --metric fid: --ref, --inception" in res.stderr


# ---------------------------------------------------------------- during training
@pytest.mark.slow
def test_training_logs_the_digits_metric_of_the_ema_weights(tmp_path):
    data = prepare_digits(tmp_path / "digits8")
    run_dir = tmp_path / "run"
    res = run_train("--config", TINY, f"data.path={data}", "train.total_steps=4", "train.ckpt_every=0",
                    f"run.out_dir={run_dir}", "eval.every=3", "eval.metric=digits", "eval.num_samples=12",
                    "eval.sample_steps=3", "eval.batch_size=4", timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 4]
    assert all(line["metric"] == "digits" and line["reference"] == "heldout" and line["n"] == 12 for line in lines)
    assert all(np.isfinite(line["fd"]) and line["fd"] > 0 and line["sampler"] == "ddim-3" for line in lines)
    tb = scalars(run_dir)
    for name in ("fd", "confidence", "class_entropy"):
        assert [s for s, _ in tb[f"eval/digits_{name}"]] == [3, 4]
    assert tb["eval/digits_fd"][0][1] == pytest.approx(lines[0]["fd"], rel=1e-6)
    assert "step 3 EMA ddim-3: digits FD " in res.stdout
    # a bad reference stops the run before its first step, with one line
    bad = run_train("--config", TINY, f"data.path={data}", f"run.out_dir={tmp_path / 'bad'}", "eval.every=3",
                    "eval.metric=digits", f"eval.ref={tmp_path / 'none'}", timeout=900)  # fmt: skip
    assert bad.returncode == 2
    err = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "eval.ref" in err[0] and "reference not found" in err[0], bad.stderr
    assert not list((tmp_path / "bad").glob("checkpoints/*.ckpt"))
