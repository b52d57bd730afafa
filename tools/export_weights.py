"""Export a ddpm-dist checkpoint as a diffusers ``DDPMPipeline`` folder (``UNet2DModel`` + ``DDPMScheduler``).

    python tools/export_weights.py --to diffusers cifar_ema.ckpt exported/cifar
    python -c "from diffusers import DDPMPipeline; DDPMPipeline.from_pretrained('exported/cifar')"

CKPT is a training checkpoint (EMA weights unless ``--weights raw``) or an inference checkpoint
(``tools/convert_ckpt.py`` / ``tools/import_weights.py``). OUT_DIR receives ``model_index.json``, ``unet/config.json``,
``unet/diffusion_pytorch_model.safetensors`` and ``scheduler/scheduler_config.json``; writing needs neither PyTorch
nor diffusers. A model diffusers' UNet2DModel cannot express (the ConvNeXt U-Net, average-pool resampling, ch_mult[0]
!= 1, ...) is refused. Errors print one line, ``error: <message>``, on stderr and exit with status 2; OUT_DIR appears
only once complete.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_dist.cli_util import Parser, run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--to", required=True, choices=("diffusers",), help="the target format")
    p.add_argument("ckpt", help="a ddpm-dist training or inference checkpoint")
    p.add_argument("out_dir", help="the diffusers pipeline folder to write")
    p.add_argument("--weights", choices=("ema", "raw"), help="of a training checkpoint (default: ema)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
    return p.parse_args(argv)


def export(args: argparse.Namespace) -> int:
    """Write the pipeline folder and say so; 0."""
    from ddpm_dist.interop.transfer import export_diffusers

    out = export_diffusers(args.ckpt, args.out_dir, weights=args.weights, overwrite=args.overwrite)
    print(f"wrote {out}: a diffusers DDPMPipeline (UNet2DModel + DDPMScheduler) of {args.ckpt}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: export(args), quiet_mindspore=True, also_input=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
