"""Convert pytorch-fid's FID Inception weights into a MindSpore checkpoint for FID / IS.

    # once, on any machine with internet access:
    wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    pip install torch            # only this conversion needs PyTorch
    python tools/convert_inception.py pt_inception-2015-12-05-6726825d.pth weights/fid_inception.ckpt

The output (.ckpt, or .safetensors) holds the weights under ddpm-dist's parameter names with ``meta.kind =
ddpm-dist/fid-inception`` and the sha256 of the input file, which keys cached reference statistics. Errors print one
line, ``error: <message>``, on stderr and exit with status 2, leaving no output behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_dist.cli_util import Parser, fail, run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a PyTorch state dict)")
    p.add_argument("dst", help="output .ckpt or .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dst")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    src, dst = Path(args.src), Path(args.dst)
    if not src.is_file():
        return fail(f"input not found: {src}")
    return run_main(lambda: convert(src, dst, overwrite=args.overwrite), also_input=(ValueError,))  # read_torch_state's


def convert(src: Path, dst: Path, *, overwrite: bool) -> int:
    """Read the PyTorch weights, write them as a MindSpore checkpoint and say so; 0."""
    from ddpm_dist.checkpoint.io import check_output
    from ddpm_dist.eval.weights import from_torch_state, save
    from ddpm_dist.interop.torch_state import read_torch_state

    check_output(dst, overwrite=overwrite)
    state = read_torch_state(src)  # PyTorch before MindSpore: the converter never needs both at once
    from ddpm_dist.device import prepare_env

    prepare_env(verbose=False)
    converted = from_torch_state(state, source=str(src))
    save(dst, converted, source=src)
    print(f"wrote {dst}: {len(converted)} tensors, FID Inception (pytorch-fid 2015-12-05) from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
