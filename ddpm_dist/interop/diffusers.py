"""diffusers <-> ddpm-dist: ``UNet2DModel`` + ``DDPMScheduler`` configs and weights, both ways, in numpy.

Neither diffusers nor PyTorch is imported: configs are JSON, weights are read and written with the ``safetensors``
package's numpy API. Only a ``diffusion_pytorch_model.bin`` needs PyTorch
(:func:`ddpm_dist.interop.torch_state.read_torch_state`).

What maps onto what (checked by ``tests/test_interop.py`` against diffusers itself):

- ``UNet2DModel`` -> the ``model`` section: ``block_out_channels`` = ch * ch_mult (so ch_mult[0] = 1),
  ``layers_per_block`` = num_res_blocks, an ``AttnDownBlock2D`` / ``AttnUpBlock2D`` level = its resolution in
  attn_resolutions, ``norm_num_groups`` / ``norm_eps`` = norm_groups / norm_eps, ``dropout``; ``sample_size`` and
  ``in_channels`` go to the ``data`` section. The timestep embedding must be Ho et al.'s (``positional``,
  ``freq_shift`` 1); ``flip_sin_to_cos`` (cos first) is absorbed by permuting the input columns of the first time
  embedding layer. ``num_class_embeds`` N (with ``class_embed_type`` null: an ``nn.Embedding`` added to the time
  embedding) = model.num_classes N - 1, the last row being ddpm-dist's "no label" row (:func:`num_classes`).
  Everything else that changes the network (multi-head attention, symmetric downsampling padding, scale-shift time
  conditioning, other class embeddings, ...) is refused with :class:`InteropError` naming the setting.
- ``DDPMScheduler`` (or ``DDIMScheduler``) -> the ``diffusion`` section: ``num_train_timesteps`` = timesteps,
  ``beta_schedule`` linear (``beta_start``/``beta_end``) or ``squaredcos_cap_v2`` = cosine, ``variance_type``
  fixed_large / fixed_small (or their ``_log`` forms) = var_type fixedlarge / fixedsmall, learned_range =
  learned_range (the U-Net's ``out_channels`` is then 2 x ``in_channels``, and only then), ``clip_sample`` = clip_x0
  (range 1 only), ``prediction_type`` epsilon / sample / v_prediction = objective eps / x0 / v.
- Weights: ddpm-dist parameter names <-> diffusers keys by :func:`diffusers_key`; attention projections are 1x1
  convs here and Linear layers there ([C, C, 1, 1] <-> [C, C]); old diffusers files name them query / key / value /
  proj_attn, which are read as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError, first_line

CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
MODEL_INDEX = "model_index.json"
SAFETENSORS = "diffusion_pytorch_model.safetensors"
TORCH_BIN = "diffusion_pytorch_model.bin"
# The diffusers release whose loaders the exported folders were tested with (written as _diffusers_version).
DIFFUSERS_VERSION = "0.42.1"

# UNet2DModel's constructor defaults (diffusers 0.42), for keys an older config.json does not list.
UNET_DEFAULTS = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896],
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}
# DDPMScheduler's constructor defaults (diffusers 0.42).
SCHEDULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "variance_type": "fixed_small",
    "clip_sample": True,
    "prediction_type": "epsilon",
    "thresholding": False,
    "clip_sample_range": 1.0,
    "rescale_betas_zero_snr": False,
}
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
_BETA_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine"}
_VARIANCES = {"fixed_large": "fixedlarge", "fixed_large_log": "fixedlarge", "fixed_small": "fixedsmall",
              "fixed_small_log": "fixedsmall", "learned_range": "learned_range"}  # fmt: skip
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
# Settings whose value must be exactly this (diffusers option -> the only value ddpm-dist's U-Net expresses).
_FIXED = {
    "time_embedding_type": "positional",
    "freq_shift": 1,
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
}


class InteropError(UserError, ValueError):
    """A diffusers folder, config or weights file that ddpm-dist cannot use, or a model diffusers cannot express.
    The message is one line naming the file and the setting."""


@dataclass
class DiffusersFolder:
    """What a diffusers model or pipeline folder holds: the U-Net's config and weights (``key -> ndarray`` as
    stored) and the scheduler's config (None when the folder has none)."""

    unet_config: dict
    unet_config_path: Path
    weights: dict
    weights_path: Path
    scheduler_config: dict | None
    scheduler_config_path: Path | None


# --------------------------------------------------------------------------------------------------- reading
def read_folder(path) -> DiffusersFolder:
    """Read a diffusers model folder (``config.json`` + weights) or a pipeline folder (``unet/`` + ``scheduler/``).

    Raises InteropError for a missing folder or config, unreadable JSON or weights, a sharded or missing weights file.
    """
    path = Path(path)
    if not path.is_dir():
        raise InteropError(f"{path}: not a directory (expected a diffusers model or pipeline folder)")
    if (path / CONFIG).is_file():
        unet_dir, scheduler_path = path, None
    elif (path / "unet" / CONFIG).is_file():
        unet_dir, scheduler_path = path / "unet", path / "scheduler" / SCHEDULER_CONFIG
        if not scheduler_path.is_file():
            scheduler_path = None
    else:
        raise InteropError(f"{path}: no {CONFIG} (expected a diffusers model folder, or a pipeline folder with unet/)")
    unet_config = read_json(unet_dir / CONFIG)
    scheduler_config = read_json(scheduler_path) if scheduler_path else None
    weights, weights_path = read_weights_file(unet_dir)
    return DiffusersFolder(unet_config, unet_dir / CONFIG, weights, weights_path, scheduler_config, scheduler_path)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InteropError(f"{path}: unreadable ({first_line(err)})") from None
    except ValueError as err:
        raise InteropError(f"{path}: not valid JSON ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise InteropError(f"{path}: expected a JSON object")
    return data


def read_weights_file(unet_dir: Path) -> tuple[dict, Path]:
    """(``key -> float32 ndarray``, file) from ``diffusion_pytorch_model.safetensors`` (no PyTorch needed) or, if
    there is none, ``diffusion_pytorch_model.bin`` (needs PyTorch)."""
    safe, binary = unet_dir / SAFETENSORS, unet_dir / TORCH_BIN
    if safe.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            arrays = load_file(str(safe))
        except (SafetensorError, OSError, ValueError, TypeError) as err:
            raise InteropError(f"{safe}: not a readable safetensors file ({first_line(err)})") from None
        return {k: _float32(v, safe, k) for k, v in arrays.items()}, safe
    if binary.is_file():
        from .torch_state import read_torch_state

        try:
            return read_torch_state(binary), binary
        except ValueError as err:
            raise InteropError(str(err)) from None
    if any(unet_dir.glob("diffusion_pytorch_model*.index.json")):
        raise InteropError(f"{unet_dir}: sharded weights are not supported (save the model in one file)")
    raise InteropError(f"{unet_dir}: no {SAFETENSORS} or {TORCH_BIN}")


def _float32(value: np.ndarray, path: Path, key: str) -> np.ndarray:
    if value.dtype.kind != "f":
        raise InteropError(f"{path}: {key} has dtype {value.dtype}, expected floating point weights")
    return np.ascontiguousarray(value, dtype=np.float32)


# ------------------------------------------------------------------------------------------ configs, both ways
def unet_sections(config: dict, *, source: str) -> tuple[dict, dict, bool]:
    """(model section, data section without ``path``, flip_sin_to_cos) for a ``UNet2DModel`` config.

    Raises InteropError naming ``source`` and the first setting ddpm-dist's DDPM U-Net cannot express.
    """
    name = config.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise InteropError(f"{source}: _class_name is {name!r}; only diffusers' UNet2DModel (DDPM) can be imported")
    c = {**UNET_DEFAULTS, **config}
    for key, wanted in _FIXED.items():
        if c[key] != wanted:
            raise InteropError(f"{source}: {key} = {c[key]!r} is not expressible in ddpm-dist's U-Net "
                               f"(needs {wanted!r})")  # fmt: skip
    boc, down, up = c["block_out_channels"], c["down_block_types"], c["up_block_types"]
    if not (isinstance(boc, list) and boc and all(isinstance(b, int) and b > 0 for b in boc)):
        raise InteropError(f"{source}: block_out_channels = {boc!r} is not a list of positive ints")
    if not (isinstance(down, list) and isinstance(up, list) and len(down) == len(up) == len(boc)):
        raise InteropError(f"{source}: down_block_types, up_block_types and block_out_channels differ in length")
    ch = boc[0]
    bad = [b for b in boc if b % ch]
    if bad:
        raise InteropError(f"{source}: block_out_channels = {boc}: {bad[0]} is not a multiple of the first "
                           f"width {ch} (ddpm-dist's widths are ch * ch_mult)")  # fmt: skip
    attn_levels = _attention_levels(down, up, source=source)
    head = c["attention_head_dim"]
    for width in sorted({boc[level] for level in attn_levels} | {boc[-1]}):  # the middle always has attention
        if head is not None and head != width:
            raise InteropError(
                f"{source}: attention_head_dim = {head} splits width {width} into heads; "
                f"ddpm-dist's attention has one head (needs null or {width})"
            )
    if c["time_embedding_dim"] not in (None, 4 * ch):
        raise InteropError(f"{source}: time_embedding_dim = {c['time_embedding_dim']} (needs null or {4 * ch})")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1 or any(b % groups for b in boc):
        raise InteropError(f"{source}: norm_num_groups = {groups!r} does not divide every block_out_channels {boc}")
    if c["attn_norm_num_groups"] not in (None, groups):
        raise InteropError(f"{source}: attn_norm_num_groups = {c['attn_norm_num_groups']} (needs null or "
                           f"norm_num_groups {groups})")  # fmt: skip
    if c["out_channels"] not in (c["in_channels"], 2 * c["in_channels"]):
        raise InteropError(f"{source}: out_channels {c['out_channels']} is neither in_channels {c['in_channels']} nor "
                           "twice that (a learned-variance model)")  # fmt: skip
    size = c["sample_size"]
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int):
        raise InteropError(f"{source}: sample_size = {c['sample_size']!r} (needs one square image size)")
    model = {
        "arch": "ddpm_unet",
        "ch": ch,
        "ch_mult": [b // ch for b in boc],
        "num_res_blocks": c["layers_per_block"],
        "attn_resolutions": [size // 2**level for level in attn_levels],
        "dropout": float(c["dropout"]),
        "resamp_with_conv": True,
        "norm_groups": groups,
        "norm_eps": float(c["norm_eps"]),
        "num_classes": num_classes(c["num_class_embeds"], source=source),
    }
    return model, {"image_size": size, "channels": c["in_channels"]}, bool(c["flip_sin_to_cos"])


def num_classes(num_class_embeds, *, source: str) -> int:
    """model.num_classes for ``UNet2DModel``'s ``num_class_embeds`` (null: 0, unconditional).

    The convention, both ways: ddpm-dist's table has K + 1 rows, row K being "no label" (classifier-free guidance);
    it is exported as ``num_class_embeds = K + 1`` and a table of N rows is imported as K = N - 1, its last row taken
    as "no label". The table size is all a diffusers config says, so this is the one rule under which import and
    export are exact inverses. A diffusers model trained without a "no label" row imports with its last class in that
    role (docs/interop.md). N < 2 leaves no class besides "no label" and is refused.
    """
    if num_class_embeds is None:
        return 0
    if isinstance(num_class_embeds, bool) or not isinstance(num_class_embeds, int) or num_class_embeds < 2:
        raise InteropError(f"{source}: num_class_embeds = {num_class_embeds!r}: ddpm-dist needs an int >= 2 (K "
                           "classes and the last row as \"no label\") or null")  # fmt: skip
    return num_class_embeds - 1


def _attention_levels(down: list, up: list, *, source: str) -> list[int]:
    """The levels whose down blocks have attention; the up blocks must mirror the down blocks."""
    levels = len(down)
    attn_levels = []
    for level, kind in enumerate(down):
        if kind not in ("DownBlock2D", "AttnDownBlock2D"):
            raise InteropError(f"{source}: down_block_types[{level}] = {kind!r} (only DownBlock2D, AttnDownBlock2D)")
        upkind = up[levels - 1 - level]
        if upkind != kind.replace("Down", "Up"):
            raise InteropError(f"{source}: up_block_types[{levels - 1 - level}] = {upkind!r} does not mirror "
                               f"down_block_types[{level}] = {kind!r}")  # fmt: skip
        if kind == "AttnDownBlock2D":
            attn_levels.append(level)
    return attn_levels


def diffusion_section(config: dict | None, *, source: str) -> dict:
    """The ``diffusion`` section for a ``DDPMScheduler``/``DDIMScheduler`` config (None, or a key it lacks:
    DDPMScheduler's defaults, e.g. variance fixed_small). Raises InteropError naming ``source`` and the setting
    ddpm-dist's samplers cannot express."""
    name = (config or {}).get("_class_name", "DDPMScheduler")
    if name not in SCHEDULERS:
        raise InteropError(f"{source}: _class_name is {name!r}; only {' or '.join(SCHEDULERS)} configs are read")
    c = {**SCHEDULER_DEFAULTS, **(config or {})}
    for key, value, why in (
        ("trained_betas", None, "an explicit beta list"),
        ("thresholding", False, "dynamic thresholding"),
        ("rescale_betas_zero_snr", False, "zero-terminal-SNR rescaling"),
    ):
        if c[key] != value:
            raise InteropError(f"{source}: {key} = {c[key]!r}: ddpm-dist has no {why} (needs {value!r})")
    table = (("beta_schedule", _BETA_SCHEDULES), ("prediction_type", _PREDICTIONS), ("variance_type", _VARIANCES))
    for key, choices in table:
        if c[key] not in choices:
            raise InteropError(f"{source}: {key} = {c[key]!r} is not supported (one of {', '.join(choices)})")
    if c["clip_sample"] and float(c["clip_sample_range"]) != 1.0:
        raise InteropError(f"{source}: clip_sample_range = {c['clip_sample_range']}: ddpm-dist clips x0 to [-1, 1]")
    return {
        "timesteps": int(c["num_train_timesteps"]),
        "beta_schedule": _BETA_SCHEDULES[c["beta_schedule"]],
        "beta_start": float(c["beta_start"]),
        "beta_end": float(c["beta_end"]),
        "objective": _PREDICTIONS[c["prediction_type"]],
        "var_type": _VARIANCES[c["variance_type"]],
        "clip_x0": bool(c["clip_sample"]),
    }


def learns_variance(unet: dict) -> bool:
    """True for a ``UNet2DModel`` config with 2 x in_channels outputs (prediction and variance)."""
    c = {**UNET_DEFAULTS, **unet}
    return c["out_channels"] == 2 * c["in_channels"]


def check_variance_channels(unet: dict, diffusion: dict, *, source: str) -> None:
    """A U-Net with 2C output channels goes with ``variance_type`` learned_range and only with it."""
    c = {**UNET_DEFAULTS, **unet}
    if learns_variance(unet) != (diffusion["var_type"] == "learned_range"):
        raise InteropError(
            f"{source}: out_channels {c['out_channels']} with in_channels {c['in_channels']} does not fit the "
            f"scheduler's variance_type ({diffusion['var_type']}): 2 x in_channels goes with learned_range only"
        )


def unet_config(model: dict, data: dict, *, out_channels: int | None = None) -> dict:
    """The ``UNet2DModel`` config.json for ddpm-dist ``model`` and ``data`` sections (plain dicts, see
    ``config.to_dict``); ``out_channels``: 2C for a learned-variance model (default C). Raises InteropError for a
    model diffusers' UNet2DModel cannot express."""
    if model["arch"] != "ddpm_unet":
        raise InteropError(f"model.arch = {model['arch']!r}: only the DDPM U-Net (ddpm_unet) has a diffusers form")
    if not model["resamp_with_conv"]:
        raise InteropError("model.resamp_with_conv = false: UNet2DModel always resamples with convolutions")
    mult, ch, groups = list(model["ch_mult"]), model["ch"], model["norm_groups"]
    if mult[0] != 1:
        raise InteropError(f"model.ch_mult[0] = {mult[0]}: UNet2DModel's first level has the width of its input "
                           "conv (needs 1)")  # fmt: skip
    boc = [ch * m for m in mult]
    if any(b % groups for b in boc):
        raise InteropError(f"model.norm_groups = {groups} does not divide every width {boc}; UNet2DModel uses one "
                           "group count for all GroupNorms")  # fmt: skip
    size, classes = data["image_size"], model.get("num_classes", 0)
    attn = [size // 2**level in model["attn_resolutions"] for level in range(len(mult))]
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        **{k: v for k, v in _FIXED.items()},
        "num_class_embeds": classes + 1 if classes else None,  # row K: "no label" (see num_classes)
        "sample_size": size,
        "in_channels": data["channels"],
        "out_channels": out_channels or data["channels"],
        "flip_sin_to_cos": False,
        "time_embedding_dim": None,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": boc,
        "layers_per_block": model["num_res_blocks"],
        "dropout": model["dropout"],
        "attention_head_dim": None,
        "norm_num_groups": groups,
        "attn_norm_num_groups": None,
        "norm_eps": model["norm_eps"],
        "num_train_timesteps": None,
    }


def scheduler_config(diffusion: dict) -> dict:
    """The ``DDPMScheduler`` scheduler_config.json for a ddpm-dist ``diffusion`` section."""
    inverse = {
        "beta_schedule": {"linear": "linear", "cosine": "squaredcos_cap_v2"},
        "variance_type": {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small", "learned_range": "learned_range"},
        "prediction_type": {v: k for k, v in _PREDICTIONS.items()},
    }
    return {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": diffusion["timesteps"],
        "beta_start": diffusion["beta_start"],
        "beta_end": diffusion["beta_end"],
        "beta_schedule": inverse["beta_schedule"][diffusion["beta_schedule"]],
        "trained_betas": None,
        "variance_type": inverse["variance_type"][diffusion["var_type"]],
        "clip_sample": diffusion["clip_x0"],
        "clip_sample_range": 1.0,
        "prediction_type": inverse["prediction_type"][diffusion["objective"]],
        "thresholding": False,
        "timestep_spacing": "leading",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def model_index() -> dict:
    """``model_index.json`` of a ``DDPMPipeline`` folder (``unet/`` + ``scheduler/``)."""
    return {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }


# ----------------------------------------------------------------------------------------------- weight names
_RES = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
        "shortcut": "conv_shortcut"}  # fmt: skip
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_ATTN_OLD = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}  # diffusers < 0.14 files
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias", "embedding_table": "weight"}
_TOP = {"temb.1": "time_embedding.linear_1", "temb.3": "time_embedding.linear_2", "conv_in": "conv_in",
        "norm_out": "conv_norm_out", "conv_out": "conv_out", "class_embed": "class_embedding"}  # fmt: skip


def diffusers_key(name: str, *, num_res_blocks: int) -> str:
    """The diffusers ``UNet2DModel`` key of ddpm-dist DDPMUNet parameter ``name`` (e.g. ``down_blocks.3.res.norm1
    .gamma`` -> ``down_blocks.1.resnets.1.norm1.weight`` for 2 blocks per level). Raises KeyError for a name that
    is not a DDPMUNet parameter."""
    *path, leaf = name.split(".")
    leaf = _LEAF[leaf]
    head = ".".join(path)
    if head in _TOP:
        return f"{_TOP[head]}.{leaf}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(res|attn)\.(\w+)", head)
    if m:
        per_level = num_res_blocks + (m[1] == "up")
        level, j = divmod(int(m[2]), per_level)
        part = f"resnets.{j}.{_RES[m[4]]}" if m[3] == "res" else f"attentions.{j}.{_ATTN[m[4]]}"
        return f"{m[1]}_blocks.{level}.{part}.{leaf}"
    m = re.fullmatch(r"(mid_block1|mid_block2|mid_attn)\.(\w+)", head)
    if m:
        if m[1] == "mid_attn":
            return f"mid_block.attentions.0.{_ATTN[m[2]]}.{leaf}"
        return f"mid_block.resnets.{int(m[1][-1]) - 1}.{_RES[m[2]]}.{leaf}"
    m = re.fullmatch(r"(downsamples\.(\d+)\.op|upsamples\.(\d+)\.conv)", head)
    if m:
        if m[2] is not None:
            return f"down_blocks.{m[2]}.downsamplers.0.conv.{leaf}"
        return f"up_blocks.{m[3]}.upsamplers.0.conv.{leaf}"
    raise KeyError(name)


def _old_key(key: str) -> str:
    """The same key in diffusers files written before attention blocks were renamed (query/key/value/proj_attn)."""
    for new, old in _ATTN_OLD.items():
        key = key.replace(f".{new}.", f".{old}.")
    return key


def _is_linear_attn(key: str) -> bool:
    return bool(re.search(r"\.(to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.weight$", key))


def to_ddpm(weights: dict, expected: dict, *, num_res_blocks: int, flip_sin_to_cos: bool, source: str) -> dict:
    """ddpm-dist weights (``name -> float32 ndarray``) from diffusers ``weights`` for the parameters ``expected``
    (``name -> shape`` of the DDPMUNet the config describes).

    Raises InteropError naming ``source`` and the diffusers key that is missing, mis-shaped or left over.
    """
    out, used = {}, set()
    for name, shape in expected.items():
        key = diffusers_key(name, num_res_blocks=num_res_blocks)
        if key not in weights and _old_key(key) in weights:
            key = _old_key(key)
        if key not in weights:
            raise InteropError(f"{source}: missing tensor {key} (ddpm-dist {name}, shape {tuple(shape)})")
        value = weights[key]
        if _is_linear_attn(key) and value.ndim == 2:
            value = value[:, :, None, None]  # Linear [C, C] -> 1x1 conv [C, C, 1, 1]
        if tuple(value.shape) != tuple(shape):
            raise InteropError(f"{source}: {key} has shape {tuple(weights[key].shape)}; the config needs "
                               f"{tuple(shape)}")  # fmt: skip
        if name == "temb.1.weight" and flip_sin_to_cos:
            half = value.shape[1] // 2  # diffusers feeds [cos, sin]; ddpm-dist feeds [sin, cos]
            value = np.concatenate([value[:, half:], value[:, :half]], axis=1)
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
        used.add(key)
    extra = sorted(set(weights) - used)
    if extra:
        raise InteropError(f"{source}: tensor {extra[0]} (and {len(extra) - 1} more) is not part of the network "
                           "its config describes")  # fmt: skip
    return out


def to_diffusers(weights: dict, *, num_res_blocks: int) -> dict:
    """diffusers ``UNet2DModel`` weights (``key -> float32 ndarray``) from ddpm-dist DDPMUNet ``weights``."""
    out = {}
    for name, value in weights.items():
        key = diffusers_key(name, num_res_blocks=num_res_blocks)
        if _is_linear_attn(key):
            value = value[:, :, 0, 0]  # 1x1 conv [C, C, 1, 1] -> Linear [C, C]
        out[key] = np.ascontiguousarray(value, dtype=np.float32)
    return out
