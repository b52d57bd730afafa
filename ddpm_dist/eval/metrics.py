"""FID and Inception Score from Inception features, in float64 numpy (no MindSpore).

- FID (Heusel et al. 2017, eq. 6): ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between Gaussians fitted to two
  sets of 2048-d pool features. Only the trace of the root is needed, and S1 S2 has the eigenvalues of the symmetric
  positive semi-definite ``S1^(1/2) S2 S1^(1/2)``, so ``Tr((S1 S2)^(1/2)) = sum(sqrt(eigvalsh(S1^(1/2) S2 S1^(1/2))))``
  with ``S1^(1/2)`` from ``eigh(S1)``: two symmetric eigendecompositions in float64, ~3x faster than the TTUR code's
  and pytorch-fid's ``scipy.linalg.sqrtm`` of the non-symmetric product at 2048-d, and without its failure modes on
  rank-deficient covariances (N < 2048 samples: a non-finite or complex root, patched there with ``eps`` on the
  diagonals). Round-off negative eigenvalues count as 0. The values agree with pytorch-fid's to ~1e-9 relative on
  full-rank statistics (tests/test_eval.py).
- IS (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over the 1008-way softmax of the logits, computed on 10
  consecutive splits of the samples; reported as the mean and standard deviation over the splits (the original
  protocol, whose headline numbers use 50,000 samples).
"""

from __future__ import annotations

import numpy as np

from . import EvalError


class MetricError(EvalError):
    """Inputs a metric cannot be computed from (shapes, too few samples, a failed matrix root)."""


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu float64 [D], sigma float64 [D, D]): mean and unbiased covariance of features [N, D], N >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise MetricError(f"feature statistics need an [N, D] array with N >= 2 (got shape {features.shape})")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off negative eigenvalues -> 0)."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64. Raises MetricError."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise MetricError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}"
        )
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise MetricError("the feature statistics hold non-finite values")
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2.0)  # symmetric up to round-off: symmetrise exactly
    diff = mu1 - mu2
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_root)


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
