"""Import a diffusers DDPM model (``UNet2DModel`` + ``DDPMScheduler``) as a ddpm-dist inference checkpoint.

    python tools/import_weights.py --from diffusers ddpm-cifar10-32 --output cifar10_paper.ckpt
    python tools/sample.py --ckpt cifar10_paper.ckpt --out samples/paper --num-samples 64

PATH is a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or ``.bin``) or a
pipeline folder (``unet/`` + ``scheduler/``, e.g. a downloaded google/ddpm-cifar10-32). The output (``.ckpt`` or
``.safetensors``) is what ``tools/convert_ckpt.py`` writes: float32 weights under ddpm-dist's names with the model
section (from the U-Net's config), diffusion section (from the scheduler's config; DDPMScheduler's defaults without
one) and data section embedded; a U-Net with ``num_class_embeds`` N becomes a class-conditional model of N - 1
classes, its last row the "no label" row (docs/interop.md). Reading ``.safetensors`` needs no PyTorch; ``.bin``
does. A configuration ddpm-dist's U-Net cannot express is refused. Errors print one line, ``error: <message>``, on
stderr and exit with status 2; no output file is left behind.
"""

from __future__ import annotations

import argparse
import sys

from ddpm_dist.cli_util import Parser, run_main

FORMATS = ("diffusers",)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FORMAT", "PATH"),
                   help="diffusers and a model or pipeline folder")  # fmt: skip
    p.add_argument("--output", required=True, help="the inference checkpoint to write (.ckpt or .safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    if args.source[0] not in FORMATS:
        p.error(f"--from: unknown format {args.source[0]!r} (supported: {', '.join(FORMATS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def body() -> int:
        from ddpm_dist.interop.transfer import import_diffusers

        out, cfg = import_diffusers(args.source[1], args.output, overwrite=args.overwrite)
        m, d = cfg.model, cfg.diffusion
        classes = f', {m.num_classes} classes + "no label"' if m.num_classes else ""
        print(f"wrote {out}: {m.arch} ch {m.ch} ch_mult {list(m.ch_mult)} attention at {list(m.attn_resolutions)}, "
              f"{cfg.data.channels}x{cfg.data.image_size}x{cfg.data.image_size}{classes}; T={d.timesteps} "
              f"{d.beta_schedule} {d.objective} {d.var_type} clip_x0={d.clip_x0}; from {args.source[1]}")  # fmt: skip
        return 0

    return run_main(body, quiet_mindspore=True, also_input=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
