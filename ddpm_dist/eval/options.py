"""Command-line options for evaluation, shared by tools/eval.py and tools/sample.py --eval."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import EvalConfig

_DEFAULTS = EvalConfig()  # the options' defaults are the config's (eval.batch_size, eval.splits)


def add_eval_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    """The evaluation options, shared with tools/sample.py --eval."""
    p.add_argument("--ref", required=required, help="reference: prepared data set dir, image npz or stats npz")
    p.add_argument("--inception", required=required, help="FID Inception checkpoint from tools/convert_inception.py")
    p.add_argument("--ref-num", type=int, help="use only the first N reference images (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=_DEFAULTS.batch_size,
                   help=f"Inception batch per worker (default {_DEFAULTS.batch_size})")  # fmt: skip
    p.add_argument("--splits", type=int, default=_DEFAULTS.splits,
                   help=f"Inception Score splits (default {_DEFAULTS.splits})")  # fmt: skip
    p.add_argument("--cache-dir", help="reference statistics cache (default: $DDPM_DIST_CACHE/fid or ~/.cache/...)")


def check_eval_args(args: argparse.Namespace) -> str | None:
    if args.ref_num is not None and args.ref_num < 2:
        return f"--ref-num must be >= 2 (got {args.ref_num})"
    if args.eval_batch_size < 1:
        return f"--eval-batch-size must be >= 1 (got {args.eval_batch_size})"
    if args.splits < 1:
        return f"--splits must be >= 1 (got {args.splits})"
    if not Path(args.ref).exists():
        return f"reference not found: {args.ref}"
    if not Path(args.inception).is_file():
        from .weights import how_to_get

        return f"FID Inception weights not found: {args.inception}; {how_to_get(args.inception)}"
    return None


def make_extractor(args: argparse.Namespace):
    """The FeatureExtractor the options ask for (reads the weights file: fails early on a bad one)."""
    from .features import FeatureExtractor

    return FeatureExtractor(args.inception, batch_size=args.eval_batch_size)


def run_eval(images, args: argparse.Namespace, *, rank: int, extractor=None) -> dict | None:
    """Evaluate ``images`` on every rank; the result (rank 0) or None. Errors propagate."""
    from ddpm_dist.logging import info

    from .evaluate import evaluate

    extractor = extractor or make_extractor(args)
    return evaluate(
        images, ref=args.ref, extractor=extractor, cache_dir=args.cache_dir, ref_limit=args.ref_num,
        splits=args.splits, log=lambda msg: info(msg, rank=rank),
    )  # fmt: skip
