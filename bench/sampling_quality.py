"""Quality and seconds per sampler setting: DDPM-1000, DDIM 10/25/50/100, DPM-Solver++(2M) 10/15/20/25.

For each setting and each seed, draws ``--num-samples`` images with the keyed sampler (sample n depends only on
(seed, n), so every setting starts from the same x_T), times the sampling (after a compiling warm-up batch, so the
seconds are sampling only), and scores the images. Prints one JSON object::

    python bench/sampling_quality.py --ckpt digits_ema.ckpt                      # the full table (slow: DDPM-1000)
    python bench/sampling_quality.py --ckpt digits_ema.ckpt --settings ddim-100,dpm++2m-20 --num-samples 200

Quality metric (``--metric``): ``digits`` is ``ddpm_dist.eval.digits.digits_scores`` (Frechet distance in a digit
classifier's feature space, its confidence and class entropy, against the held-out digits); ``pixel-fd`` is the
Frechet distance between the samples and ``--ref`` (default: the checkpoint's ``data.path``, the training images)
in raw pixel space (uint8 / 255, H*W*C dimensions) - a crude metric that needs nothing but the data. ``auto``
(default) takes ``digits`` when the model makes 1-channel images, else ``pixel-fd``.
The JSON names the metric used. Fields: ``metric``, ``reference``, ``num_samples``, ``seeds``, ``batch_size``,
``device``, and per setting (``ddpm-1000``, ``ddim-10``, ..., ``dpm++2m-25``): ``nfe`` (network calls per
image), ``seconds`` (per seed), ``img_per_s``, ``scores`` (per seed) and their mean (``fd_mean`` etc.).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import BenchError

from ddpm_dist.choices import DEVICE_CHOICES, SAMPLERS
from ddpm_dist.cli_util import fail, run_main

DEFAULT_SETTINGS = "ddpm-1000,ddim-10,ddim-25,ddim-50,ddim-100,dpm++2m-10,dpm++2m-15,dpm++2m-20,dpm++2m-25"
METRICS = ("auto", "digits", "pixel-fd")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="a training or inference checkpoint (tools/convert_ckpt.py)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"comma-separated <sampler>-<steps> (default: "
                   f"{DEFAULT_SETTINGS}); ddpm-T is the full ancestral sampler")  # fmt: skip
    p.add_argument("--num-samples", type=int, default=1000, help="per seed (default 1000)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--metric", choices=METRICS, default="auto")
    p.add_argument("--ref", default=None, help="pixel-fd reference: data set dir or image npz (default: data.path)")
    p.add_argument("--weights", choices=("ema", "raw"), default=None, help="of a training checkpoint (default ema)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    return p.parse_args(argv)


def parse_seeds(text: str) -> list[int] | str:
    """``--seeds`` (``0,1,2``) as ints in [0, 2^32), or the problem with it."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        return f"--seeds: expected comma-separated ints (got {text!r})"
    if not seeds or any(not 0 <= s < 2**32 for s in seeds):
        return f"--seeds: need at least one seed in [0, 2^32) (got {text!r})"
    return seeds


def parse_settings(text: str, timesteps: int) -> list[tuple[str, int]]:
    """[(sampler, steps)] from ``ddim-50,dpm++2m-20,...``; steps in [1, T]. Raises BenchError."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        sampler, _, steps = item.rpartition("-")
        if sampler not in SAMPLERS or not steps.isdigit():
            raise BenchError(f"--settings: {item!r} is not <{'|'.join(SAMPLERS)}>-<steps>")
        if not 1 <= int(steps) <= timesteps:
            raise BenchError(f"--settings: {item}: steps must be in [1, {timesteps}] (the model's T)")
        out.append((sampler, int(steps)))
    if not out:
        raise BenchError("--settings: no setting given")
    return out


def choose_metric(metric: str, channels: int) -> str:
    """The metric ``auto`` resolves to: ``digits`` for 1-channel images (the embedded digits), pixel FD otherwise."""
    if metric != "auto":
        return metric
    return "digits" if channels == 1 else "pixel-fd"


def make_scorer(metric: str, ref_images=None):
    """``score(images uint8 [N, H, W, C]) -> dict`` for ``metric``; pixel-fd needs ``ref_images`` uint8 [M, H, W, C]."""
    if metric == "digits":
        from ddpm_dist.eval.digits import digits_scores

        return lambda images: digits_scores(images, reference="heldout")

    from ddpm_dist.eval.metrics import feature_stats, frechet_distance

    ref = np.asarray(ref_images, np.float64).reshape(len(ref_images), -1) / 255.0
    ref_stats = feature_stats(ref)

    def pixel_fd(images):
        flat = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
        if flat.shape[1] != ref.shape[1]:
            raise BenchError(f"samples have {flat.shape[1]} pixels, the reference {ref.shape[1]}")
        return {"fd": frechet_distance(*feature_stats(flat), *ref_stats), "n": len(images)}

    return pixel_fd


def run_setting(keyed, *, num_samples: int, batch_size: int, seed: int):
    """(uint8 images [N, H, W, C], seconds): ``num_samples`` keyed samples of ``keyed`` in batches of
    ``batch_size`` (``inference.generate``, the last batch padded)."""
    from ddpm_dist.inference import generate

    start = time.perf_counter()
    images = generate(keyed, num_samples=num_samples, batch_size=batch_size, seed=seed)
    return images, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    seeds = parse_seeds(args.seeds)
    if isinstance(seeds, str):
        return fail(seeds)
    if args.num_samples < 2 or args.batch_size < 1:
        return fail("--num-samples must be >= 2 and --batch-size >= 1")
    if not Path(args.ckpt).is_file():
        return fail(f"checkpoint not found: {args.ckpt}")

    from ddpm_dist.device import prepare_env, setup_device

    prepare_env()
    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.diffusion import build_keyed_sampler
    from ddpm_dist.diffusion.sampling import default_spacing
    from ddpm_dist.eval.reference import open_reference

    def body() -> int:
        device = setup_device(args.device, mode="graph")
        cfg, net, meta = load_for_sampling(args.ckpt, weights=args.weights)
        T = cfg.diffusion.timesteps
        settings = parse_settings(args.settings, T)
        metric = choose_metric(args.metric, cfg.data.channels)
        ref_source = None
        ref_images = None
        if metric == "pixel-fd":
            ref_source = args.ref or cfg.data.path
            ref_images = open_reference(ref_source).load_images()
        score = make_scorer(metric, ref_images)
        batch = min(args.batch_size, args.num_samples)
        report = {"ckpt": str(args.ckpt), "step": meta.get("step"), "weights": meta["weights"], "device": device,
                  "metric": metric, "reference": "heldout digits" if metric == "digits" else str(ref_source),
                  "num_samples": args.num_samples, "seeds": seeds, "batch_size": batch, "settings": {}}  # fmt: skip
        for sampler, steps in settings:
            full = sampler == "ddpm" and steps == T
            keyed = build_keyed_sampler(cfg, net, sampler=sampler, steps=0 if full else steps, eta=0.0)
            keyed.sample(np.arange(batch), seed=seeds[0]).asnumpy()  # compile both graphs: not timed
            seconds, scores = [], []
            for seed in seeds:
                images, sec = run_setting(keyed, num_samples=args.num_samples, batch_size=batch, seed=seed)
                seconds.append(round(sec, 3))
                scores.append(score(images))
            entry = {"sampler": sampler, "steps": steps, "spacing": default_spacing(sampler), "nfe": steps,
                     "seconds": seconds, "img_per_s": round(args.num_samples * len(seeds) / sum(seconds), 3),
                     "scores": scores}  # fmt: skip
            for key, value in scores[0].items():
                if isinstance(value, float):  # fd, confidence, class_entropy (not counts, names)
                    entry[f"{key}_mean"] = float(np.mean([s[key] for s in scores]))
            report["settings"][f"{sampler}-{steps}"] = entry
            print(f"{sampler}-{steps}: {json.dumps(entry)}", file=sys.stderr, flush=True)
        print(json.dumps(report))
        return 0

    return run_main(body, also_input=(BenchError, ValueError))  # here a BenchError is a bad --settings or reference


if __name__ == "__main__":
    sys.exit(main())
