"""FID and Inception Score (or the digits metric) of a samples npz against a reference, on one device or data-parallel.

    python tools/eval.py --samples samples/cifar/samples.npz --ref data/cifar10 --inception weights/fid_inception.ckpt
    python tools/eval.py --samples s.npz --ref fid_stats_cifar10_train.npz --inception weights/fid_inception.ckpt
    ENTRY=tools/eval.py DEVICE_NUM=8 bash launch/run_8p.sh --samples s.npz --ref data/cifar10 --inception w.ckpt

--samples: an npz with ``arr_0`` uint8 [N, H, W, C] (what tools/sample.py writes; gray images count as RGB).
--ref: a prepared data set directory (tools/prepare_data.py), an image npz, or a statistics npz (``mu``, ``sigma``).
--inception: the checkpoint tools/convert_inception.py makes from pytorch-fid's weights (nothing is downloaded).
Feature extraction is split across the workers; reference statistics are cached (--cache-dir) under a key that
includes the protocol, the weights and the reference's content. Prints one line with the numbers and their protocol,
and with --out writes them as JSON. Errors print one line, ``error: <message>``, on stderr and exit with status 2.

    python tools/eval.py --metric digits --samples samples/digits/samples.npz               # vs held-out real digits
    python tools/eval.py --metric digits --samples s.npz --ref data/digits                  # vs the training set

--metric digits: the quickstart's yardstick (ddpm_dist/eval/digits.py; numpy only, one process, no --inception):
--ref is ``heldout`` (default), ``train``, a prepared data set directory or an image npz.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_dist.choices import DEVICE_CHOICES
from ddpm_dist.cli_util import Parser, fail, run_main
from ddpm_dist.errors import first_line
from ddpm_dist.eval.options import add_eval_args, check_eval_args, run_eval
from ddpm_dist.storage import probe_writable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", required=True, help="npz with arr_0 uint8 [N, H, W, C]")
    p.add_argument("--metric", choices=("fid", "digits"), default="fid", help="fid (FID and IS) or digits")
    add_eval_args(p, required=False)
    p.add_argument("--num-samples", type=int, help="use only the first N samples (default: all)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--verbose", action="store_true", help="keep MindSpore's own warnings")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = check_digits_args(args) if args.metric == "digits" else check_fid_args(args)
    if problem:
        return fail(problem)
    score = score_digits if args.metric == "digits" else score_fid
    return run_main(lambda: score(args), also_input=(ValueError,))  # ValueError: e.g. a malformed samples npz


def check_fid_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments of --metric fid, found before MindSpore starts; None if there is none."""
    missing = [flag for flag, value in (("--ref", args.ref), ("--inception", args.inception)) if not value]
    if missing:
        return f"the following arguments are required for --metric fid: {', '.join(missing)}"
    problem = check_eval_args(args)
    if problem is None and args.num_samples is not None and args.num_samples < 2:
        problem = f"--num-samples must be >= 2 (got {args.num_samples})"
    if problem is None and not Path(args.samples).is_file():
        problem = f"samples not found: {args.samples}"
    if problem is None and args.out:
        try:  # the JSON is written beside --out first: an unwritable place fails now, not after the feature work
            probe_writable(Path(args.out).parent)
        except OSError as err:
            problem = f"--out {args.out}: cannot write there ({err.strerror or first_line(err)})"
    return problem


def score_fid(args: argparse.Namespace) -> int:
    """FID and IS of the samples, the feature work split across the workers; rank 0 prints (and writes) them."""
    from ddpm_dist.device import prepare_env

    prepare_env(verbose=args.verbose)
    from ddpm_dist import parallel
    from ddpm_dist.device import setup_device
    from ddpm_dist.eval.evaluate import summary
    from ddpm_dist.eval.reference import load_images_npz
    from ddpm_dist.storage import write_json_atomic

    images = load_images_npz(args.samples)[: args.num_samples]
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
    if args.num_samples is not None and args.num_samples < 2:
        return f"--num-samples must be >= 2 (got {args.num_samples})"
    if args.inception:
        return "--inception is for --metric fid; the digits metric needs no weights"
    return None


def score_digits(args: argparse.Namespace) -> int:
    """The digits metric in this process (numpy only; no MindSpore, no workers)."""
    from ddpm_dist.eval.digits import digits_scores, resolve_reference, summary
    from ddpm_dist.eval.reference import load_images_npz
    from ddpm_dist.storage import write_json_atomic

    images = load_images_npz(args.samples)[: args.num_samples]
    result = digits_scores(images, reference=resolve_reference(args.ref or ""))
    if args.ref not in (None, "", "heldout", "train"):
        result["reference"] = str(args.ref)
    result["samples"] = str(args.samples)
    print(summary(result), flush=True)
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
