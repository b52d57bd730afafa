"""FID and Inception Score (or the digits metric) of a samples npz against a reference, on one device or data-parallel.

    python tools/eval.py --samples samples/cifar/samples.npz --ref data/cifar10 --inception weights/fid_inception.ckpt
    python tools/eval.py --samples s.npz --ref fid_stats_cifar10_train.npz --inception weights/fid_inception.ckpt
    ENTRY=tools/eval.py DEVICE_NUM=8 bash launch/run_8p.sh --samples s.npz --ref data/cifar10 --inception w.ckpt

--samples: an npz with ``arr_0`` uint8 [N, H, W, C] (what tools/sample.py writes; gray images count as RGB) and,
from a class-conditional model, ``arr_1`` int [N] >= 0: the class each image was drawn for (every metric reads and
checks it; the digits metric scores it, the others ignore it).
--ref: a prepared data set directory (tools/prepare_data.py), an image npz, or a statistics npz (``mu``, ``sigma``).
--inception: the checkpoint tools/convert_inception.py makes from pytorch-fid's weights (nothing is downloaded).
Feature extraction is split across the workers; reference statistics are cached (--cache-dir) under a key that
includes the protocol, the weights and the reference's content. Prints one line with the numbers and their protocol,
and with --out writes them as JSON. Errors print one line, ``error: <message>``, on stderr and exit with status 2.

    python tools/eval.py --metric digits --samples samples/digits/samples.npz               # vs held-out real digits
    python tools/eval.py --metric digits --samples s.npz --ref data/digits                  # vs the training set

--metric digits: the quickstart's yardstick (ddpm_dist/eval/digits.py; numpy only, one process, no --inception):
--ref is ``heldout`` (default), ``train``, a prepared data set directory or an image npz. With labels (``arr_1``, in
0..9) it also reports the classifier's accuracy on them and the per-class Frechet distance (docs/evaluation.md).

    python tools/eval.py --metric nll --ckpt cifar_ema.ckpt --data data/cifar10_test --out nll.json
    ENTRY=tools/eval.py DEVICE_NUM=8 bash launch/run_8p.sh --metric nll --ckpt cifar_ema.ckpt --data data/cifar10_test

--metric nll: the variational bound on the negative log-likelihood of the images of --data (a prepared data set) under
the checkpoint's network (EMA weights by default), in bits/dim: the prior term and all T terms, T network calls per
image, split across the workers (ddpm_dist/eval/likelihood.py, docs/evaluation.md). The noise of image n at step t is
keyed by (--seed, n, t): the number does not depend on --batch-size or the number of workers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_dist.choices import DEVICE_CHOICES
from ddpm_dist.cli_util import Parser, fail, progress_bar, reports_exit, run_main
from ddpm_dist.errors import first_line
from ddpm_dist.eval.options import add_eval_args, check_eval_args, run_eval
from ddpm_dist.storage import probe_writable

METRICS = ("fid", "digits", "nll")
WEIGHTS = ("ema", "raw")
_NLL_BATCH = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", help="npz with arr_0 uint8 [N, H, W, C] and optional labels arr_1 int [N] (fid, "
                   "digits)")  # fmt: skip
    p.add_argument("--metric", choices=METRICS, default="fid",
                   help="fid (FID and IS), digits, or nll (bits/dim of --data under --ckpt)")  # fmt: skip
    add_eval_args(p, required=False)
    p.add_argument("--num-samples", type=int, help="use only the first N samples (nll: of --data) (default: all)")
    p.add_argument("--ckpt", help="nll: a training or inference checkpoint")
    p.add_argument("--data", help="nll: a prepared data set directory (tools/prepare_data.py)")
    p.add_argument("--weights", choices=WEIGHTS, help="nll: of a training checkpoint (default: ema)")
    p.add_argument("--batch-size", type=int, default=_NLL_BATCH, help=f"nll: images per worker (default {_NLL_BATCH})")
    p.add_argument(
        "--nll-steps",
        type=int,
        help="nll: a strided estimate from K of the T terms (the decoder and one "
        "step per stratum; docs/evaluation.md gives its measured error) (default: the full bound)",
    )
    p.add_argument("--seed", type=int, default=0, help="nll: in [0, 2^32); the noise of image n at step t depends "
                   "only on (seed, n, t)")  # fmt: skip
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--no-progress", action="store_true", help="nll: no progress bar")
    p.add_argument("--verbose", action="store_true", help="keep MindSpore's own warnings")
    return p.parse_args(argv)


@reports_exit
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = {"fid": check_fid_args, "digits": check_digits_args, "nll": check_nll_args}[args.metric](args)
    if problem:
        return fail(problem)
    score = {"fid": score_fid, "digits": score_digits, "nll": score_nll}[args.metric]
    return run_main(lambda: score(args), also_input=(ValueError,))  # ValueError: e.g. a malformed samples npz


def check_fid_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments of --metric fid, found before MindSpore starts; None if there is none."""
    missing = [flag for flag, value in (("--samples", args.samples), ("--ref", args.ref),
                                        ("--inception", args.inception)) if not value]  # fmt: skip
    if missing:
        return f"the following arguments are required for --metric fid: {', '.join(missing)}"
    problem = _misplaced(args, ("--ckpt", "--data", "--weights"), "nll")
    if problem:
        return problem
    problem = check_eval_args(args)
    if problem is None and args.num_samples is not None and args.num_samples < 2:
        problem = f"--num-samples must be >= 2 (got {args.num_samples})"
    if problem is None and not Path(args.samples).is_file():
        problem = f"samples not found: {args.samples}"
    return problem or _check_out(args)


def _check_out(args: argparse.Namespace) -> str | None:
    """The JSON is written beside --out first: an unwritable place fails now, not after the work."""
    if args.out:
        try:
            probe_writable(Path(args.out).parent)
        except OSError as err:
            return f"--out {args.out}: cannot write there ({err.strerror or first_line(err)})"
    return None


def _misplaced(args: argparse.Namespace, flags: tuple[str, ...], metric: str) -> str | None:
    """A flag of another metric given (a likely mix-up): its one-line problem, or None."""
    for flag in flags:
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            return f"{flag} is for --metric {metric}, not --metric {args.metric}"
    return None


def score_fid(args: argparse.Namespace) -> int:
    """FID and IS of the samples, the feature work split across the workers; rank 0 prints (and writes) them."""
    from ddpm_dist.device import prepare_env

    prepare_env(verbose=args.verbose)
    from ddpm_dist import parallel
    from ddpm_dist.device import setup_device
    from ddpm_dist.eval.evaluate import summary
    from ddpm_dist.eval.reference import load_images_npz, load_labels_npz
    from ddpm_dist.storage import write_json_atomic

    images = load_images_npz(args.samples)
    load_labels_npz(args.samples, count=len(images))  # checked, not used: FID and IS take no labels
    images = images[: args.num_samples]
    if len(images) < args.splits:
        raise ValueError(f"{args.samples}: {len(images)} samples, fewer than --splits {args.splits}")
    setup_device(args.device, mode="graph")
    rank, _ = parallel.init()
    result = run_eval(images, args, rank=rank)
    if rank == 0:
        result["samples"] = str(args.samples)
        print(summary(result), flush=True)
        if args.out:
            write_json_atomic(args.out, result)
    return 0


def check_digits_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments of --metric digits; None if there is none."""
    if not args.samples:
        return "the following arguments are required for --metric digits: --samples"
    problem = _misplaced(args, ("--ckpt", "--data", "--weights"), "nll")
    if problem:
        return problem
    if args.num_samples is not None and args.num_samples < 2:
        return f"--num-samples must be >= 2 (got {args.num_samples})"
    if args.inception:
        return "--inception is for --metric fid; the digits metric needs no weights"
    return None


def score_digits(args: argparse.Namespace) -> int:
    """The digits metric in this process (numpy only; no MindSpore, no workers)."""
    from ddpm_dist.eval.digits import digits_scores, resolve_reference, summary
    from ddpm_dist.eval.reference import load_images_npz, load_labels_npz
    from ddpm_dist.storage import write_json_atomic

    images = load_images_npz(args.samples)
    labels = load_labels_npz(args.samples, count=len(images))
    images, labels = images[: args.num_samples], None if labels is None else labels[: args.num_samples]
    result = digits_scores(images, reference=resolve_reference(args.ref or ""), labels=labels)
    if args.ref not in (None, "", "heldout", "train"):
        result["reference"] = str(args.ref)
    result["samples"] = str(args.samples)
    print(summary(result), flush=True)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


def check_nll_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments of --metric nll, found before MindSpore starts; None if there is none."""
    missing = [flag for flag, value in (("--ckpt", args.ckpt), ("--data", args.data)) if not value]
    if missing:
        return f"the following arguments are required for --metric nll: {', '.join(missing)}"
    problem = _misplaced(args, ("--samples", "--ref", "--inception", "--ref-num"), "fid or digits")
    if problem:
        return problem
    if args.num_samples is not None and args.num_samples < 1:
        return f"--num-samples must be >= 1 (got {args.num_samples})"
    if args.batch_size < 1:
        return f"--batch-size must be >= 1 (got {args.batch_size})"
    if args.nll_steps is not None and args.nll_steps < 2:
        return f"--nll-steps must be >= 2: the decoder and at least one KL step (got {args.nll_steps})"
    if not 0 <= args.seed < 2**32:
        return f"--seed must be in [0, 2^32) (got {args.seed})"
    if not Path(args.ckpt).is_file():
        return f"checkpoint not found: {args.ckpt}"
    if not Path(args.data).is_dir():
        return f"data set not found: {args.data} (a directory prepared by tools/prepare_data.py)"
    return _check_out(args)


def score_nll(args: argparse.Namespace) -> int:
    """The bound in bits/dim of --data under --ckpt, the images split across the workers; rank 0 prints (and writes)
    it."""
    from ddpm_dist.device import prepare_env

    prepare_env(verbose=args.verbose)
    from ddpm_dist import parallel
    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.device import setup_device
    from ddpm_dist.eval.likelihood import (
        build_likelihood,
        dataset_terms,
        load_images,
        strided_timesteps,
        summarize,
        summary,
    )
    from ddpm_dist.logging import info
    from ddpm_dist.storage import write_json_atomic

    device = setup_device(args.device, mode="graph")
    rank, world_size = parallel.init()
    cfg, net, meta = load_for_sampling(args.ckpt, weights=args.weights)
    T = cfg.diffusion.timesteps
    if args.nll_steps is not None and args.nll_steps > T:
        raise ValueError(f"--nll-steps {args.nll_steps} exceeds the model's {T} diffusion timesteps")
    t, weights = strided_timesteps(T, args.nll_steps) if args.nll_steps else (None, None)
    images = load_images(args.data, cfg, limit=args.num_samples)
    info(f"nll of {len(images)} images of {args.data} under {args.ckpt} ({meta['weights']} weights, step "
         f"{meta.get('step')}, T = {T}) on {device} x {world_size} worker(s)",
         rank=rank)  # fmt: skip
    bar = progress_bar(rank != 0 or args.no_progress, desc="nll", unit="call")
    terms = dataset_terms(build_likelihood(cfg, net, timesteps=t), images, batch_size=args.batch_size, seed=args.seed,
                          progress=bar)  # fmt: skip
    if rank == 0:
        result = summarize(terms, timesteps=t, weights=weights, num_timesteps=T)
        result.update(ckpt=str(args.ckpt), step=meta.get("step"), weights=meta["weights"], data=str(args.data),
                      var_type=cfg.diffusion.var_type, seed=args.seed, world_size=world_size,
                      batch_size=args.batch_size)  # fmt: skip
        print(summary(result), flush=True)
        if args.out:
            write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
