"""FID and IS of a set of samples against a reference: features on every rank, metrics on rank 0."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .features import FeatureExtractor
from .metrics import feature_stats, frechet_distance, inception_score
from .reference import (
    PROTOCOL,
    EvalReferenceError,
    cache_key,
    default_cache_dir,
    numerics,
    open_reference,
    read_cached,
    write_cached,
)


def evaluate(
    images: np.ndarray,
    *,
    ref: str,
    extractor: FeatureExtractor,
    cache_dir: str | Path | None = None,
    ref_limit: int | None = None,
    splits: int,
    log: Callable[[str], None] | None = None,
) -> dict | None:
    """FID of ``images`` (uint8 [N, H, W, C], the same on every rank) against ``ref`` and their Inception Score.

    Every rank must call it: feature extraction is sharded. Reference statistics come from the cache when rank 0 has
    them (the decision is shared, so the ranks stay in step), else they are computed and rank 0 stores them.
    Returns the result dict on rank 0 (see :func:`summary`), None on the other ranks. Raises EvalReferenceError,
    FeatureError, MetricError.
    """
    from ddpm_dist.parallel import rank

    say = log or (lambda _msg: None)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    reference = open_reference(ref, limit=ref_limit)
    h, w = images.shape[1:3]
    if reference.image_size is not None and (h, w) != (reference.image_size, reference.image_size):
        s = reference.image_size
        raise EvalReferenceError(
            f"samples are {h}x{w} but the reference {ref} holds {s}x{s} images: an FID across resolutions measures "
            f"the resizing, not the model; compare against a reference at {h}x{w}"
        )
    mu_ref, sigma_ref, key, hit = _reference_stats(
        reference, ref=ref, extractor=extractor, cache_dir=cache_dir, say=say
    )
    say(f"computing features of {len(images)} samples")
    pool, logits = extractor(images)
    if rank() != 0:
        return None
    fid = frechet_distance(*feature_stats(pool), mu_ref, sigma_ref)
    is_mean, is_std = inception_score(logits, splits=splits)
    return {
        "fid": fid,
        "inception_score": {"mean": is_mean, "std": is_std, "splits": splits},
        "num_samples": int(len(images)),
        "sample_shape": list(images.shape[1:]),
        "reference": {
            "source": str(ref),
            "kind": reference.kind,
            "num": reference.num if reference.kind != "stats" else None,
            "cached": bool(hit),
            "key": key if reference.kind != "stats" else None,
        },  # fmt: skip
        "inception_weights": {"path": str(extractor.weights), "source_sha256": extractor.fingerprint},
        "protocol": PROTOCOL,
    }


def _reference_stats(reference, *, ref: str, extractor: FeatureExtractor, cache_dir: Path, say: Callable[[str], None]):
    """(mu, sigma, cache key, cache hit) of the reference: given statistics, rank 0's cache entry (the hit decision is
    shared, so the ranks stay in step) or features computed by all ranks, then cached by rank 0."""
    from ddpm_dist.parallel import all_reduce_host, rank

    key = cache_key(reference, weights_sha256=extractor.fingerprint)
    cached = None
    if reference.kind != "stats" and rank() == 0:
        cached = read_cached(cache_dir, key)
    hit = all_reduce_host(np.array([1.0 if cached is not None else 0.0], np.float32))[0] > 0
    if reference.kind == "stats":
        return reference.mu, reference.sigma, key, hit
    if hit:
        say(f"reference statistics of {ref} from the cache ({cache_dir}/ref_{key}.npz)")
        mu_ref, sigma_ref = cached if cached is not None else (None, None)
        return mu_ref, sigma_ref, key, hit
    say(f"computing reference statistics of {reference.num} images of {ref}")
    ref_pool, _ = extractor(reference.load_images())
    mu_ref, sigma_ref = feature_stats(ref_pool)
    if rank() == 0:
        write_cached(cache_dir, key, mu_ref, sigma_ref, info={"protocol": PROTOCOL, "source": str(ref),
                     "num": reference.num, "weights_sha256": extractor.fingerprint,
                     "numerics": numerics()})  # fmt: skip
    return mu_ref, sigma_ref, key, hit


def summary(result: dict) -> str:
    """One line: the numbers and the protocol they were measured under."""
    ref = result["reference"]
    against = (f"{ref['num']} images of {ref['source']}" if ref["kind"] != "stats"
               else f"the statistics in {ref['source']}")  # fmt: skip
    h, w, c = result["sample_shape"]
    is_ = result["inception_score"]
    return (f"FID {result['fid']:.3f}  IS {is_['mean']:.3f} +- {is_['std']:.3f} ({is_['splits']} splits) | "
            f"{result['num_samples']} samples ({h}x{w}x{c} uint8) vs {against} | pytorch-fid Inception-v3, "
            "bilinear resize to 299")  # fmt: skip
