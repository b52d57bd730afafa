"""Convert a data set into MindRecord files + manifest.json for ddpm-dist training.

    python tools/prepare_data.py --source digits --output data/digits
    python tools/prepare_data.py --source digits --split fit --output data/digits_fit    # + --split test: held out
    python tools/prepare_data.py --source cifar10 --input cifar-10-python.tar.gz --output data/cifar10
    python tools/prepare_data.py --source mnist --input fashion-mnist/ --output data/fmnist --image-size 32
    python tools/prepare_data.py --source folder --input photos/ --output data/photos --image-size 64
    python tools/prepare_data.py --source lsun --input church_outdoor_train_lmdb/ --output data/church --image-size 256

Errors in the input print one line, ``error: <message>``, on stderr and exit with status 2; nothing is left behind.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_dist.cli_util import Parser, run_main
from ddpm_dist.data import SOURCES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--input", help="file or folder to read (not needed for digits)")
    p.add_argument("--output", required=True, help="directory to create (MindRecord files + manifest.json)")
    p.add_argument("--image-size", type=int, help="output height = width (default: the source's own; digits 16)")
    p.add_argument(
        "--upsample", choices=("nearest", "bicubic"), help="digits only: how 8x8 becomes --image-size (default nearest)"
    )
    p.add_argument("--channels", type=int, choices=(1, 3), help="default: the source's own (folder: 3)")
    p.add_argument(
        "--split",
        choices=("train", "fit", "test"),
        default="train",
        help="cifar10, mnist: the train or test files; digits: train = all 1797 images, fit = the digits metric's 1200 "
        "classifier images, test = its 597 held-out ones (docs/data.md) (default train)",
    )
    p.add_argument("--shards", type=int, help="number of MindRecord files (default: about 256 MiB of pixels each)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output data set")
    p.add_argument("--strict", action="store_true", help="fail on an unreadable image instead of skipping it")
    p.add_argument(
        "--limit", type=int, help="folder, lsun: convert only the first N readable images (path / key order)"
    )
    p.add_argument(
        "--workers", type=int, help="folder, lsun: decoding threads (default: the CPUs available, at most 16)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: prepare(args), quiet_mindspore=True)  # quiet MindSpore before the writer imports it


def prepare(args: argparse.Namespace) -> int:
    """Convert the data set and say what was written; 0. A progress bar on stderr when it is a terminal (so that a
    failure in a script still leaves exactly one line there)."""
    from ddpm_dist.data.convert import convert

    bar = _ProgressBar(enabled=sys.stderr.isatty())
    try:
        manifest = convert(
            source=args.source,
            input_path=args.input,
            output=args.output,
            image_size=args.image_size,
            channels=args.channels,
            split=args.split,
            shards=args.shards,
            overwrite=args.overwrite,
            strict=args.strict,
            upsample=args.upsample,
            limit=args.limit,
            workers=args.workers,
            progress=bar.update,
        )
    finally:
        bar.close()
    s = manifest["image_size"]
    skipped, upscaled = manifest.get("skipped", 0), manifest.get("upscaled", 0)
    print(
        f"wrote {manifest['count']} images ({s}x{s}x{manifest['channels']}, {manifest['source']} {manifest['split']}) "
        f"to {args.output} in {len(manifest['files'])} file(s)"
        + (f"; skipped {skipped} unreadable" if skipped else "")
        + (f"; upscaled {upscaled} smaller than {s} px" if upscaled else "")
    )
    return 0


class _ProgressBar:
    """tqdm over the images written (the total is an upper bound for folders and LSUN); nothing unless enabled."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled, self.bar = enabled, None

    def update(self, done: int, expected: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=expected, desc="converting", unit="img", dynamic_ncols=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


if __name__ == "__main__":
    sys.exit(main())
