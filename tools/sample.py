"""Draw samples from a ddpm-dist checkpoint (training or converted) on one device or data-parallel.

    python tools/sample.py --ckpt cifar_ema.ckpt --out samples/cifar --num-samples 50000 --batch-size 256
    python tools/sample.py --ckpt runs/cifar/checkpoints/step_00800000.ckpt --out s --sampler ddim --steps 50
    python tools/sample.py --ckpt cifar_ema.ckpt --out s --sampler dpm++2m --steps 20
    ENTRY=tools/sample.py DEVICE_NUM=8 bash launch/run_8p.sh --ckpt cifar_ema.ckpt --out samples/cifar ...

Class-conditional models (``model.num_classes`` > 0) sample the classes --labels asks for (default balanced: sample n
is class n mod K) with classifier-free guidance scale --guidance (1: the conditional model alone, 0: unconditional,
> 1: stronger; docs/sampling.md); sample n then depends on (--seed, n, its label).

    python tools/sample.py --ckpt runs/digits_cond/checkpoints/step_00000600.ckpt --out s --labels all-7 --guidance 2

Writes into --out: ``samples.npz`` (``arr_0``: uint8 [N, H, W, C], the layout of the guided-diffusion evaluator, and
for a class-conditional model ``arr_1``: int64 [N], the labels),
``grid.png`` (the first --grid samples), ``samples.json`` (the settings), with --png-individual
``images/000000.png ...`` (a folder pytorch-fid reads), and with --eval ``metrics.json``: FID and IS against --ref,
computed right after sampling by the same workers (see tools/eval.py; --inception is required then). Sample n
depends only on (--seed, n): the same images come out for any --batch-size and any number of workers. Errors print
one line, ``error: <message>``, on stderr and exit with status 2; the outputs appear only once complete.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

from ddpm_dist.choices import DEVICE_CHOICES, SAMPLERS
from ddpm_dist.cli_util import Parser, fail, progress_bar, reports_exit, run_main
from ddpm_dist.diffusion.guidance import LABEL_SPECS
from ddpm_dist.errors import first_line
from ddpm_dist.eval.options import add_eval_args, check_eval_args, make_extractor, run_eval
from ddpm_dist.storage import probe_writable

OUTPUTS = ("samples.npz", "grid.png", "samples.json", "images", "metrics.json")
DEFAULT_STEPS = {"ddpm": 0, "ddim": 50, "dpm++2m": 20}  # 0: all T


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="a training checkpoint or one written by tools/convert_ckpt.py")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="ancestral DDPM, DDIM or DPM-Solver++(2M) (default: ddpm)")  # fmt: skip
    p.add_argument("--steps", type=int, help="sampling steps, respaced (default: ddpm all T, ddim 50, dpm++2m 20)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale (0: deterministic, 1: DDPM-like)")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="per worker")
    p.add_argument("--seed", type=int, default=0, help="in [0, 2^32); sample n depends only on (seed, n)")
    p.add_argument("--weights", choices=("ema", "raw"), help="of a training checkpoint (default: ema)")
    p.add_argument("--labels", help=f"class-conditional models: {LABEL_SPECS} (default balanced: n mod K)")
    p.add_argument(
        "--guidance", type=float, help="class-conditional models: guidance scale S >= 0 (default 1: conditional only)"
    )
    p.add_argument("--png-individual", action="store_true", help="also write images/<n>.png")
    p.add_argument("--grid", type=int, default=64, help="samples in grid.png (default 64; 0: no grid)")
    p.add_argument("--rgb", action="store_true", help="repeat 1-channel images to 3 channels (for FID tools)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="keep MindSpore's own warnings")
    p.add_argument("--eval", action="store_true", help="compute FID and IS after sampling (needs --ref, --inception)")
    add_eval_args(p, required=False)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, found before MindSpore starts; None if there is none."""
    if args.num_samples < 1 or args.num_samples >= 2**31:
        return f"--num-samples must be in [1, 2^31) (got {args.num_samples})"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1 (got {args.batch_size})"
    if args.steps is not None and args.steps < 1:
        return f"--steps must be >= 1 (got {args.steps})"
    if not args.eta >= 0.0:
        return f"--eta must be >= 0 (got {args.eta})"
    if args.eta and args.sampler != "ddim":
        return f"--eta is DDIM's noise scale; {args.sampler} does not take it"
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        return f"--guidance must be a finite number >= 0 (got {args.guidance})"
    if not 0 <= args.seed < 2**32:
        return f"--seed must be in [0, 2^32) (got {args.seed})"
    if args.grid < 0:
        return f"--grid must be >= 0 (got {args.grid})"
    if not Path(args.ckpt).is_file():
        return f"checkpoint not found: {args.ckpt}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a directory"
    try:  # the staging folder goes beside --out: an unwritable place fails now, not after all the sampling
        probe_writable(out.parent)
    except OSError as err:
        return f"--out {out}: cannot write there ({err.strerror or first_line(err)})"
    if args.eval:
        if not args.ref or not args.inception:
            return "--eval needs --ref and --inception"
        if args.num_samples < max(2, args.splits):
            return f"--eval needs --num-samples >= max(2, --splits {args.splits}) (got {args.num_samples})"
        problem = check_eval_args(args)
        if problem:
            return problem
    taken = [name for name in OUTPUTS if (out / name).exists()]
    if taken and not args.overwrite:
        return f"--out {out}: already holds {taken[0]}; use --overwrite to replace the earlier outputs"
    return None


def write_outputs(out: Path, images, *, grid: int, individual: bool, settings: dict, metrics=None, labels=None) -> None:
    """Write everything into a hidden staging folder beside ``out``, then move it into place."""
    import numpy as np
    from PIL import Image

    from ddpm_dist.images import tile_grid, write_png

    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        stage.mkdir(parents=True)
        with open(stage / "samples.npz", "wb") as f:
            if labels is None:
                np.savez(f, arr_0=images)
            else:
                np.savez(f, arr_0=images, arr_1=labels)
        if grid:
            write_png(tile_grid(images[:grid]), stage / "grid.png")
        if individual:
            (stage / "images").mkdir()
            for n, image in enumerate(images):
                Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(
                    stage / "images" / f"{n:06d}.png"
                )
        (stage / "samples.json").write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")
        if metrics is not None:
            (stage / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            old = out / name
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
            if (stage / name).exists():
                os.replace(stage / name, old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def class_labels(args: argparse.Namespace, cfg):
    """The label of every sample (int64 [N]) for a class-conditional model, None for an unconditional one; ValueError
    (exit 2) for --labels / --guidance given to an unconditional model or a bad --labels."""
    from ddpm_dist.diffusion.guidance import sample_labels

    k = cfg.model.num_classes
    if not k:
        if args.labels is not None or args.guidance is not None:
            flag = "--labels" if args.labels is not None else "--guidance"
            raise ValueError(f"{flag}: {args.ckpt} is an unconditional model (model.num_classes 0)")
        return None
    return sample_labels(args.labels or "balanced", num_classes=k, num_samples=args.num_samples)


@reports_exit
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        return fail(problem)
    from ddpm_dist.device import prepare_env

    prepare_env(verbose=args.verbose)
    from ddpm_dist import parallel
    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.device import setup_device
    from ddpm_dist.diffusion import build_keyed_sampler
    from ddpm_dist.diffusion.sampling import default_spacing
    from ddpm_dist.eval.evaluate import summary
    from ddpm_dist.inference import generate
    from ddpm_dist.logging import info

    def body() -> int:
        device = setup_device(args.device, mode="graph")
        rank, world_size = parallel.init()
        cfg, net, meta = load_for_sampling(args.ckpt, weights=args.weights)
        extractor = make_extractor(args) if args.eval else None  # a bad weights file fails before sampling
        labels = class_labels(args, cfg)
        steps = args.steps if args.steps is not None else min(DEFAULT_STEPS[args.sampler], cfg.diffusion.timesteps)
        if steps > cfg.diffusion.timesteps:
            raise ValueError(f"--steps {steps} exceeds the model's {cfg.diffusion.timesteps} diffusion timesteps")
        label = f"{args.sampler}-{steps or cfg.diffusion.timesteps}" + (
            f" eta {args.eta}" if args.sampler == "ddim" else ""
        )
        guidance = 1.0 if args.guidance is None else args.guidance
        if labels is not None:
            label += f", labels {args.labels or 'balanced'}, guidance {guidance:g}"
        info(f"sampling {args.num_samples} images ({label}, seed {args.seed}) from {args.ckpt} ({meta['weights']} "
             f"weights, step {meta.get('step')}) on {device} x {world_size} worker(s)", rank=rank)  # fmt: skip
        keyed = build_keyed_sampler(cfg, net, sampler=args.sampler, steps=steps, eta=args.eta, guidance=guidance)
        bar = progress_bar(rank != 0 or args.no_progress, desc="sampling")
        images = generate(keyed, num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                          progress=bar, all_ranks=args.eval, labels=labels)  # fmt: skip
        metrics = run_eval(images, args, rank=rank, extractor=extractor) if args.eval else None
        if rank == 0:
            if args.rgb and images.shape[3] == 1:
                images = images.repeat(3, axis=3)
            settings = {"ckpt": str(args.ckpt), "step": meta.get("step"), "weights": meta["weights"],
                        "sampler": args.sampler, "steps": steps or cfg.diffusion.timesteps, "eta": args.eta,
                        "spacing": default_spacing(args.sampler),
                        "seed": args.seed, "num_samples": args.num_samples, "world_size": world_size,
                        "batch_size": args.batch_size, "arr_0": f"uint8 {list(images.shape)} NHWC"}  # fmt: skip
            if labels is not None:
                settings.update(labels=args.labels or "balanced", guidance=guidance, arr_1=f"int64 [{labels.size}]")
            if metrics is not None:
                metrics["samples"] = str(Path(args.out) / "samples.npz")
                print(summary(metrics), flush=True)
            write_outputs(Path(args.out), images, grid=args.grid, individual=args.png_individual, settings=settings,
                          metrics=metrics, labels=labels)  # fmt: skip
            info(f"wrote {args.num_samples} samples to {args.out}", rank=rank)
        return 0

    return run_main(body, also_input=(ValueError,))  # ValueError: e.g. --steps beyond the model's T


if __name__ == "__main__":
    sys.exit(main())
