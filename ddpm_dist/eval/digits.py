"""The digits metric: the quickstart's yardstick (not FID), computed in float64 numpy from the package data alone.

Inception FID cannot judge 16x16 handwritten digits (and its weights are not shipped). Instead a small classifier is
trained on one fixed part of scikit-learn's 1797 UCI digits, and samples are compared with real digits in its hidden
features:

- **split**: a permutation of the 1797 indices by ``numpy.random.default_rng(SPLIT_SEED)``; the first ``NUM_TRAIN``
  train the classifier (reference ``"train"``), the other 597 are held out (reference ``"heldout"``). The split is
  owned by :mod:`ddpm_dist.data.digits` (``split_indices``), so ``tools/prepare_data.py --source digits --split
  fit`` / ``--split test`` write exactly these two parts as data sets.
- **input**: uint8 images [N, H, W] or [N, H, W, 1] with H = W a multiple of 8 are area-downsampled to 8x8 (the mean
  of each block: the exact inverse of nearest-neighbour upsampling) and scaled to [0, 1].
- **classifier**: an MLP 64 -> ``HIDDEN`` (tanh) -> 10, initialised from ``MLP_SEED`` and trained full-batch with Adam
  for ``EPOCHS`` steps on softmax cross-entropy plus a small L2 penalty. Deterministic, under a second; it is rebuilt
  (and kept in memory) on first use, never cached on disk. Held-out accuracy: about 97%.
- **scores** of a set of images: ``fd``, the Frechet distance (Heusel et al. 2017, eq. 6, the FID formula of
  :func:`ddpm_dist.eval.metrics.frechet_distance`) between Gaussians fitted to the ``HIDDEN``-d tanh features of the
  images and of the reference; ``confidence``, the mean of the classifier's top softmax probability; and
  ``class_entropy``, the entropy (nats) of the histogram of predicted classes, log(10) = 2.303 when all ten digits
  are equally frequent (coverage).
- **with labels** (class-conditional samples: the label each image was drawn for, int [N] in 0..9):
  ``class_accuracy``, the fraction of images the classifier labels as requested, and ``fd_per_class``, for each
  requested class k the same Frechet distance between the images drawn for k and the real digits of class k of the
  labelled reference split (held-out: 49-68 per class, :func:`split`), with ``fd_class_mean`` their mean. With so
  few reference images per class (fewer than the 64 feature dimensions: a rank-deficient covariance) the per-class
  FD carries a large finite-sample bias: real digits score about 0.7 against their class, not 0
  (docs/evaluation.md), so compare per-class FDs only at equal sample counts.

Numbers are comparable only under the same ``PROTOCOL``. The scale (docs/evaluation.md): real held-out digits, noise,
and the nearest-upsampled training set.
"""

from __future__ import annotations

import functools

import numpy as np

from ddpm_dist.data.digits import NUM_FIT, SPLIT_SEED, split_indices  # noqa: F401 (SPLIT_SEED: part of PROTOCOL)

from . import EvalError
from .metrics import feature_stats, frechet_distance

PROTOCOL = "digits-mlp-v1"
NUM_TRAIN = NUM_FIT
MLP_SEED = 1
HIDDEN = 64
EPOCHS = 400
LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-4
REFERENCES = ("heldout", "train")


class DigitsMetricError(EvalError):
    """Images the digits metric cannot take, or an unknown reference. The message is one line."""


def to_8x8(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] or [N, H, W, 1], H = W = 8k -> float64 [N, 64] in [0, 1], the mean of each k x k block."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DigitsMetricError(
            f"the digits metric needs uint8 images [N, H, W] or [N, H, W, 1] (got {images.dtype} {list(images.shape)})"
        )
    n, h, w = images.shape
    if h != w or h % 8 or h == 0:
        raise DigitsMetricError(f"the digits metric needs square images of 8x8 or a multiple (got {h}x{w})")
    k = h // 8
    blocks = images.astype(np.float64).reshape(n, 8, k, 8, k).mean(axis=(2, 4))
    return blocks.reshape(n, 64) / 255.0


@functools.lru_cache(maxsize=1)
def split() -> dict:
    """The fixed split of the package data: {"train": uint8 [1200, 8, 8], "heldout": uint8 [597, 8, 8], and their
    labels "train_labels", "heldout_labels" int32}."""
    from ddpm_dist.data import DataError
    from ddpm_dist.data.digits import source_digits

    try:
        images, labels = source_digits()
    except DataError as err:
        raise DigitsMetricError(str(err)) from None
    parts = split_indices(len(images))
    tr, ho = parts["fit"], parts["test"]
    return {"train": images[tr], "train_labels": labels[tr], "heldout": images[ho], "heldout_labels": labels[ho]}


class DigitsClassifier:
    """The MLP of the metric: ``features(x)`` float64 [N, HIDDEN] and ``probs(x)`` float64 [N, 10] of x [N, 64]."""

    def __init__(self, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray):
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    def features(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.w1 + self.b1)

    def probs(self, x: np.ndarray) -> np.ndarray:
        return softmax(self.features(x) @ self.w2 + self.b2)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_classifier(x: np.ndarray, labels: np.ndarray) -> DigitsClassifier:
    """Full-batch Adam (Kingma & Ba 2015, default betas) on mean cross-entropy + WEIGHT_DECAY/2 * ||W||^2."""
    rng = np.random.default_rng(MLP_SEED)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(64), (64, HIDDEN)),
        np.zeros(HIDDEN),
        rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), (HIDDEN, 10)),
        np.zeros(10),
    ]
    onehot = np.eye(10)[labels]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    n = len(x)
    for step in range(1, EPOCHS + 1):
        w1, b1, w2, b2 = params
        h = np.tanh(x @ w1 + b1)
        dlogits = (softmax(h @ w2 + b2) - onehot) / n
        dh = (dlogits @ w2.T) * (1.0 - h * h)
        grads = [x.T @ dh + WEIGHT_DECAY * w1, dh.sum(0), h.T @ dlogits + WEIGHT_DECAY * w2, dlogits.sum(0)]
        for i, g in enumerate(grads):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat, v_hat = m[i] / (1 - beta1**step), v[i] / (1 - beta2**step)
            params[i] = params[i] - LEARNING_RATE * m_hat / (np.sqrt(v_hat) + eps)
    return DigitsClassifier(*params)


@functools.lru_cache(maxsize=1)
def classifier() -> DigitsClassifier:
    """The metric's classifier, trained on the ``train`` part of :func:`split` (built once per process)."""
    s = split()
    try:  # one BLAS thread: these matrices are tiny, and several threads are ~3x slower on a busy 2-core machine
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency, so normally present with the data
        return train_classifier(to_8x8(s["train"]), s["train_labels"])
    with threadpool_limits(limits=1):
        return train_classifier(to_8x8(s["train"]), s["train_labels"])


@functools.lru_cache(maxsize=len(REFERENCES))
def _reference_stats(reference: str) -> tuple[np.ndarray, np.ndarray, int]:
    x = to_8x8(split()[reference])
    return (*feature_stats(classifier().features(x)), len(x))


@functools.lru_cache(maxsize=len(REFERENCES))
def _class_reference_stats(reference: str) -> tuple[tuple[np.ndarray, np.ndarray, int], ...]:
    """(mu, sigma, count) of the features of each class 0..9 of the labelled split ``reference``."""
    s = split()
    features = classifier().features(to_8x8(s[reference]))
    labels = s[f"{reference}_labels"]
    return tuple((*feature_stats(features[labels == k]), int((labels == k).sum())) for k in range(10))


def check_labels(labels, n: int) -> np.ndarray:
    """``labels`` as int64 [n]: the class each of n images was drawn for, in 0..9. Raises DigitsMetricError."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DigitsMetricError(f"the digits metric needs labels as integers [N] (got {labels.dtype} "
                                f"{list(labels.shape)})")  # fmt: skip
    if len(labels) != n:
        raise DigitsMetricError(f"{len(labels)} labels for {n} images (one label per image)")
    bad = labels[(labels < 0) | (labels > 9)]
    if bad.size:
        raise DigitsMetricError(f"label {int(bad[0])} is not a digit (the digits metric's labels are 0..9)")
    return labels.astype(np.int64)


def class_scores(features: np.ndarray, pred: np.ndarray, labels: np.ndarray, *, reference: str) -> dict:
    """The scores of images drawn for given classes: features float64 [N, HIDDEN], pred and labels int [N].

    ``class_accuracy``: mean(pred == labels). ``fd_per_class``: ``{"k": FD}`` for every class k among the labels,
    between the features of the images labelled k and those of the real class-k digits of the split ``reference``
    (None for a class with a single image: a covariance needs two); ``fd_class_mean``: the mean of those FDs (None
    if there is none). ``per_class_reference``: the split's name."""
    stats = _class_reference_stats(reference)
    per_class = {}
    for k in np.unique(labels).tolist():
        mine = features[labels == k]
        per_class[str(k)] = frechet_distance(*feature_stats(mine), *stats[k][:2]) if len(mine) >= 2 else None
    values = [v for v in per_class.values() if v is not None]
    return {
        "class_accuracy": float((pred == labels).mean()),
        "fd_per_class": per_class,
        "fd_class_mean": float(np.mean(values)) if values else None,
        "per_class_reference": reference,
    }


def heldout_accuracy() -> float:
    """Fraction of the held-out digits the classifier labels correctly."""
    s = split()
    pred = classifier().probs(to_8x8(s["heldout"])).argmax(axis=1)
    return float((pred == s["heldout_labels"]).mean())


def class_entropy(pred: np.ndarray) -> float:
    """Entropy in nats of the histogram of predicted classes pred int [N] in 0..9 (0: one class; log 10: uniform)."""
    p = np.bincount(pred, minlength=10) / len(pred)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one class gives 0.0, not -0.0


def digits_scores(images: np.ndarray, *, reference: str | np.ndarray = "heldout", labels=None) -> dict:
    """The digits metric of ``images`` (uint8 [N, H, W] or [N, H, W, 1], H = W = 8k, N >= 2).

    ``reference``: ``"heldout"`` (the 597 held-out real digits), ``"train"`` (the classifier's 1200), or images of
    the same kind as ``images`` (e.g. a model's own training set). Returns ``{"fd", "confidence", "class_entropy",
    "n", "reference", "reference_n", "protocol"}``. ``labels`` (int [N] in 0..9, the class each image was drawn
    for): also the keys of :func:`class_scores`, per class against the same split when ``reference`` names one, else
    against the held-out digits (images carry no labels). Raises DigitsMetricError (or MetricError) with one line.
    """
    x = to_8x8(images)
    if len(x) < 2:
        raise DigitsMetricError(f"the digits metric needs at least 2 images (got {len(x)})")
    if labels is not None:
        labels = check_labels(labels, len(x))
    net = classifier()
    if isinstance(reference, str):
        if reference not in REFERENCES:
            raise DigitsMetricError(f"unknown digits reference {reference!r} (choose {', '.join(REFERENCES)})")
        mu_ref, sigma_ref, ref_n = _reference_stats(reference)
        ref_name = reference
    else:
        ref_x = to_8x8(reference)
        if len(ref_x) < 2:
            raise DigitsMetricError(f"the digits reference needs at least 2 images (got {len(ref_x)})")
        mu_ref, sigma_ref = feature_stats(net.features(ref_x))
        ref_n, ref_name = len(ref_x), "images"
    features = net.features(x)
    probs = net.probs(x)
    result = {
        "fd": frechet_distance(*feature_stats(features), mu_ref, sigma_ref),
        "confidence": float(probs.max(axis=1).mean()),
        "class_entropy": class_entropy(probs.argmax(axis=1)),
        "n": int(len(x)),
        "reference": ref_name,
        "reference_n": int(ref_n),
        "protocol": PROTOCOL,
    }
    if labels is not None:
        split_name = ref_name if ref_name in REFERENCES else "heldout"
        result.update(class_scores(features, probs.argmax(axis=1), labels, reference=split_name))
    return result


def resolve_reference(ref: str) -> str | np.ndarray:
    """``ref`` as :func:`digits_scores` takes it: ``""`` or ``"heldout"`` -> "heldout", ``"train"``, else a prepared
    data set directory or an image npz, read into uint8 images. Raises DigitsMetricError / EvalReferenceError."""
    if ref in ("", "heldout", "train"):
        return ref or "heldout"
    from .reference import open_reference

    reference = open_reference(ref)
    if reference.kind == "stats":
        raise DigitsMetricError(f"{ref}: a mu/sigma statistics npz is for FID; the digits metric needs images")
    return reference.load_images()


def summary(result: dict) -> str:
    """One line: the numbers and what they were measured against (and, for labelled samples, the class scores)."""
    labelled = ""
    if "class_accuracy" in result:
        mean, count = result["fd_class_mean"], sum(v is not None for v in result["fd_per_class"].values())
        labelled = (f"  class accuracy {result['class_accuracy']:.3f}  per-class FD "
                    f"{'n/a' if mean is None else f'{mean:.3f}'} (mean of {count} classes vs "
                    f"{result['per_class_reference']})")  # fmt: skip
    return (
        f"digits FD {result['fd']:.3f}  confidence {result['confidence']:.3f}  class entropy "
        f"{result['class_entropy']:.3f} (max 2.303){labelled} | {result['n']} samples vs {result['reference_n']} "
        f"{result['reference']} digits | {result['protocol']}"
    )
