"""Convert a training checkpoint into a float32 inference checkpoint (network weights + embedded config only).

    python tools/convert_ckpt.py --input runs/cifar/checkpoints/step_00800000.ckpt --output cifar_ema.ckpt
    python tools/convert_ckpt.py --input TRAIN.ckpt --output cifar_raw.safetensors --weights raw

EMA weights by default (``--weights raw`` for the trained weights). The output format follows its suffix: ``.ckpt``
(MindSpore, CRC-checked) or ``.safetensors``. Errors print one line, ``error: <message>``, on stderr and exit with
status 2; no partial output is left behind.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_dist.cli_util import Parser, run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="a training checkpoint (runs/<run>/checkpoints/step_*.ckpt)")
    p.add_argument("--output", required=True, help="the inference checkpoint to write (.ckpt or .safetensors)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights to keep (default: ema)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from ddpm_dist.checkpoint.convert import convert

        out = convert(args.input, args.output, weights=args.weights, overwrite=args.overwrite)
        print(f"wrote {args.weights} weights of {args.input} to {out}")
        return 0

    return run_main(body, quiet_mindspore=True)


if __name__ == "__main__":
    sys.exit(main())
