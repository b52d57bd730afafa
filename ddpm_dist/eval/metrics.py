"""FID and Inception Score from Inception features, in float64 numpy (no MindSpore).

- FID (Heusel et al. 2017, eq. 6): ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between Gaussians fitted to two
  sets of 2048-d pool features. The matrix square root is ``scipy.linalg.sqrtm`` in float64; a product too singular
  for it (a non-finite root) is retried with ``eps`` added to both diagonals, and a numerically complex root keeps
  its real part when the imaginary part of its diagonal is below 1e-3 (the conventions of the TTUR code and
  pytorch-fid, so numbers agree with theirs).
- IS (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over the 1008-way softmax of the logits, computed on 10
  consecutive splits of the samples; reported as the mean and standard deviation over the splits (the original
  protocol, whose headline numbers use 50,000 samples).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from . import EvalError


class MetricError(EvalError):
    """Inputs a metric cannot be computed from (shapes, too few samples, a failed matrix root)."""


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu float64 [D], sigma float64 [D, D]): mean and unbiased covariance of features [N, D], N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise MetricError(f"feature statistics need an [N, D] array with N >= 2 (got shape {features.shape})")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # singular products are expected (N < D) and handled by the caller
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(matrix)
    return root[0] if isinstance(root, tuple) else root  # older SciPy returns (root, error) with disp=False


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64. Raises MetricError."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    with np.errstate(all="ignore"):
        covmean = _sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if not np.isfinite(covmean).all():
        raise MetricError("the matrix square root of sigma1 @ sigma2 is not finite, even with eps on the diagonal")
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise MetricError(f"the matrix square root has an imaginary component of {imag:.3g} on its diagonal")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets [N1, D], [N2, D]."""
    return frechet_distance(*feature_stats(features1), *feature_stats(features2))


def inception_score(logits: np.ndarray, *, splits: int) -> tuple[float, float]:
    """(mean, std) over ``splits`` consecutive parts of logits [N, K] of exp(E KL(p(y|x) || p(y)))."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or splits < 1 or logits.shape[0] < splits:
        raise MetricError(f"the inception score needs logits [N, K] with N >= splits={splits} (got {logits.shape})")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log softmax
    n = logits.shape[0]
    scores = []
    for i in range(splits):
        part = log_p[i * n // splits : (i + 1) * n // splits]
        log_py = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
