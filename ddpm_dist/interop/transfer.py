"""Import a diffusers DDPM model as a ddpm-dist inference checkpoint, and export a ddpm-dist checkpoint as a diffusers
``DDPMPipeline`` folder. The format mapping is :mod:`ddpm_dist.interop.diffusers`; this module reads, checks against
the network ddpm-dist would build, and writes atomically (an error leaves no output behind).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..checkpoint import CheckpointError
from ..checkpoint.convert import read_weights, write_inference
from ..checkpoint.io import check_output
from ..config import ConfigError, from_dict, to_dict
from ..errors import first_line
from ..storage import fsync_dir
from . import diffusers as fmt

IMPORTED_WEIGHTS = "ema"  # what diffusers' released DDPM models hold (one set of weights; the EMA for Ho et al.'s)


def import_diffusers(src, dst, *, overwrite: bool = False):
    """Write the inference checkpoint ``dst`` (``.ckpt`` or ``.safetensors``) of the diffusers model or pipeline
    folder ``src``. Returns (dst, Config). Raises InteropError or CheckpointError (one line); nothing is written then.
    """
    from ..models import build_model

    src, dst = Path(src), check_output(dst, overwrite=overwrite)
    folder = fmt.read_folder(src)
    model, data, flip = fmt.unet_sections(folder.unet_config, source=str(folder.unet_config_path))
    diffusion = fmt.diffusion_section(folder.scheduler_config, source=str(folder.scheduler_config_path or src))
    if folder.scheduler_config is None and fmt.learns_variance(folder.unet_config):
        diffusion["var_type"] = "learned_range"  # a bare model folder: its 2C outputs say what the scheduler would
    fmt.check_variance_channels(folder.unet_config, diffusion, source=str(folder.unet_config_path))
    try:  # data.path: no data set comes with released weights; FID references are given to tools/eval.py
        cfg = from_dict(
            {"model": model, "diffusion": diffusion, "data": {**data, "path": ""}},
            source=f"{folder.unet_config_path} (as a ddpm-dist config)",
        )
    except ConfigError as err:
        raise fmt.InteropError(str(err)) from None
    expected = {p.name: tuple(p.shape) for p in build_model(cfg).get_parameters()}
    arrays = fmt.to_ddpm(
        folder.weights,
        expected,
        num_res_blocks=cfg.model.num_res_blocks,
        flip_sin_to_cos=flip,
        source=str(folder.weights_path),
    )
    extra = {"meta.source_format": "diffusers"}
    write_inference(dst, arrays, cfg, weights=IMPORTED_WEIGHTS, step=0, source=src, extra=extra)
    return dst, cfg


def export_diffusers(ckpt, out_dir, *, weights: str | None = None, overwrite: bool = False) -> Path:
    """Write the ``DDPMPipeline`` folder ``out_dir`` (``model_index.json``, ``unet/config.json`` +
    ``diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``) of a training or inference
    checkpoint (``weights``: ema or raw of a training checkpoint). The folder is assembled beside ``out_dir`` and
    renamed into place. Raises InteropError or CheckpointError (one line); nothing is written then."""
    from safetensors.numpy import save_file

    from ..models import output_channels

    ckpt, out = Path(ckpt), check_output(out_dir, overwrite=overwrite, directory=True)
    loaded = read_weights(ckpt, weights=weights)
    sections = to_dict(loaded.cfg)
    unet = fmt.unet_config(sections["model"], sections["data"], out_channels=output_channels(loaded.cfg))
    scheduler = fmt.scheduler_config(sections["diffusion"])
    tensors = fmt.to_diffusers(loaded.weights, num_res_blocks=loaded.cfg.model.num_res_blocks)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        (stage / "unet").mkdir(parents=True)
        (stage / "scheduler").mkdir()
        _write_json(stage / fmt.MODEL_INDEX, fmt.model_index())
        _write_json(stage / "unet" / fmt.CONFIG, unet)
        _write_json(stage / "scheduler" / fmt.SCHEDULER_CONFIG, scheduler)
        save_file(tensors, str(stage / "unet" / fmt.SAFETENSORS), metadata={"format": "pt"})
        if out.exists():
            out.rename(old)
        stage.rename(out)
        fsync_dir(out.parent)
    except (OSError, ValueError) as err:
        if old.exists() and not out.exists():
            old.rename(out)
        raise CheckpointError(f"could not write {out}: {first_line(err)}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
