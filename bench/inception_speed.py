"""Speed of FID evaluation: Inception feature extraction (images/s) and one 2048-d Frechet distance (seconds).

    python bench/inception_speed.py [--size 32] [--batch 50] [--images 200] [--device auto]

Uses random weights (the speed does not depend on them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import result_json

from ddpm_dist.choices import DEVICE_CHOICES
from ddpm_dist.cli_util import run_main


def sqrtm_frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FID with scipy's sqrtm of the non-symmetric product (TTUR, pytorch-fid), for the speed comparison."""
    from scipy import linalg

    root = linalg.sqrtm(sigma1 @ sigma2)
    root = (root[0] if isinstance(root, tuple) else root).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32, help="input image size (resized to 299 inside the network)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    args = p.parse_args(argv)
    return run_main(lambda: run(args), quiet_mindspore=True)


def run(args) -> int:
    """Time the feature extraction and the Frechet distance; print the JSON document; 0."""
    import mindspore as ms

    from ddpm_dist.device import setup_device
    from ddpm_dist.eval import weights
    from ddpm_dist.eval.features import FeatureExtractor
    from ddpm_dist.eval.inception import FIDInceptionV3
    from ddpm_dist.eval.metrics import feature_stats, frechet_distance

    device = setup_device(args.device, mode="graph")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "random.source"
        source.write_bytes(b"random")
        arrays = {q.name: q.asnumpy() for q in FIDInceptionV3().get_parameters()}
        ckpt = weights.save(Path(tmp) / "random.ckpt", arrays, source=source)
        extractor = FeatureExtractor(ckpt, batch_size=args.batch)
        images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        extractor(images[: args.batch])  # compile
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool, _ = extractor(images)
        extract_s = time.perf_counter() - t0
    a, b = rng.normal(size=(4096, 2048)), rng.normal(size=(4096, 2048)) + 0.01
    stats = (*feature_stats(a), *feature_stats(b))
    t0 = time.perf_counter()
    fid = frechet_distance(*stats)
    fid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fid_sqrtm = sqrtm_frechet_distance(*stats)  # the TTUR / pytorch-fid route, same run: a ratio, not a time
    sqrtm_s = time.perf_counter() - t0
    result = {
        "device": device,
        "mindspore": ms.__version__,
        "input_size": args.size,
        "batch": args.batch,
        "images": args.images,
        "compile_s": round(compile_s, 2),
        "features_img_per_s": round(args.images / extract_s, 2),
        "fid_2048_s": round(fid_s, 2),
        "fid_scipy_sqrtm_2048_s": round(sqrtm_s, 2),
        "fid_speedup_vs_sqrtm": round(sqrtm_s / fid_s, 2),
        "fid_rel_diff_vs_sqrtm": float(abs(fid - fid_sqrtm) / abs(fid_sqrtm)),
        "hours_for_50k_samples": round(50000 / (args.images / extract_s) / 3600, 2),
    }
    print(result_json(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
