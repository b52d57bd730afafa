"""Typed configuration: the only place defaults live.

A config is a YAML file with the sections ``model``, ``diffusion``, ``data``, ``train`` and ``run``, merged onto the
dataclasses below, then dotted command-line overrides (``train.lr=1e-4 model.ch=64``). Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError`, whose message names the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .choices import DEVICE_CHOICES, SAMPLERS
from .errors import UserError, first_line


class ConfigError(UserError, ValueError):
    """A user error in a config file or an override. The message is one line meant for the user."""


@dataclass
class ModelConfig:
    arch: str = "ddpm_unet"  # ddpm_unet (Ho et al. 2020) | convnext_unet (the seed tutorial's U-Net)
    ch: int = 128  # base channels
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    num_res_blocks: int = 2
    attn_resolutions: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1
    resamp_with_conv: bool = True
    norm_groups: int = 32  # ddpm_unet: GroupNorm groups (fewer, 16 8 4 2 1, where the channels are not divisible)
    norm_eps: float = 1e-5  # ddpm_unet: GroupNorm epsilon (the TF reference and diffusers' DDPM models use 1e-6)
    convnext_mult: int = 2  # convnext_unet only: expansion of the ConvNeXt block
    # recompute each res/attention block's activations in the backward pass instead of keeping them (MindSpore's
    # Cell.recompute; the same gradients, bit for bit, and the same parameter names). Meant for device memory; in
    # GRAPH mode on CPU MindSpore 2.10 does not lower the peak (docs/benchmarks.md). PyNative only with dropout 0.
    recompute: bool = False
    # class-conditional: K classes (0: unconditional). A learned embedding of K + 1 rows (row K: "no label", for
    # classifier-free guidance) is added to the timestep embedding; labels come from the data set (docs/sampling.md)
    num_classes: int = 0


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T
    beta_schedule: str = "linear"  # linear | cosine | sigmoid (Jabri et al. 2022)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    objective: str = "eps"  # eps | x0 | v : what the network predicts
    loss_type: str = "mse"  # mse | l1
    loss_weight: str = "none"  # none | min_snr (Hang et al. 2023: min(SNR, gamma) on the x0 error; mse only)
    min_snr_gamma: float = 5.0  # gamma of min_snr
    # fixedlarge (beta_t) | fixedsmall (posterior variance) | learned_range (the network outputs 2C channels, the second
    # half interpolating log beta_t and log beta-tilde_t; trained by the hybrid loss, Nichol & Dhariwal 2021)
    var_type: str = "fixedlarge"
    vlb_weight: float = 0.001  # lambda of the hybrid loss L_simple + lambda L_vlb (learned_range only)
    clip_x0: bool = True  # clip the predicted x0 to [-1, 1] while sampling


@dataclass
class DataConfig:
    path: str = MISSING  # directory written by tools/prepare_data.py (MindRecord files + manifest.json)
    image_size: int = 32
    channels: int = 3
    random_flip: bool = True
    num_parallel_workers: int = 2


@dataclass
class TrainConfig:
    global_batch: int = 128  # summed over all workers; per-worker batch = global_batch / world_size
    grad_accum: int = 1  # micro-batches per optimizer step and worker (gradient accumulation); divides the worker batch
    lr: float = 2e-4
    warmup_steps: int = 5000
    lr_decay: str = "none"  # none | cosine | linear (to 0 at total_steps, after warm-up)
    total_steps: int = 800_000
    grad_clip: float = 1.0  # global-norm clip after the all-reduce; 0 disables
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False  # decay = min(ema_decay, (1 + n) / (10 + n)) for the n-th update
    amp_level: str = "auto"  # auto (O2 on Ascend/GPU, O0 on CPU) | O0 | O1 | O2
    loss_scale: str = "dynamic"  # dynamic | static | none
    loss_scale_value: float = 65536.0  # initial (dynamic) or fixed (static) scale
    loss_scale_window: int = 2000  # dynamic: finite steps before the scale doubles
    resume: str = "auto"  # auto | none | <path to a checkpoint>
    ckpt_every: int = 5000  # save every N steps (0: only at the end and on a stop request)
    # Also save once this many minutes of training passed since the last save (0: off); rank 0's clock decides and
    # the workers agree at the stop check every 10 steps (no extra host sync). Young/Daly: docs/failure_modes.md.
    ckpt_every_minutes: float = 0.0
    # Rank 0 copies the state to host memory at the save step (paper U-Net: 0.15 s against 1.7 s sync) and writes
    # it in a background thread while training goes on; same files, CRC, index and retention as a synchronous save.
    # false: every rank waits for the write (what the issue measured as the stall; docs/failure_modes.md).
    async_save: bool = True
    keep_last: int = 3
    milestone_every: int = 0  # also keep every N-th step for good (0: none)
    max_nonfinite: int = 50  # stop after this many consecutive non-finite losses
    # class-conditional models: share of samples whose label is replaced by "no label" (classifier-free guidance);
    # which ones is keyed by (run.seed, global position), like t and the noise
    label_dropout: float = 0.1


@dataclass
class EvalConfig:
    every: int = 0  # evaluate the EMA weights every N steps (0: never)
    # fid (FID / IS, needs eval.inception) | digits (the digits metric, ddpm_dist/eval/digits.py) |
    # nll (the bound in bits/dim of the first eval.num_samples images of eval.ref, ddpm_dist/eval/likelihood.py)
    metric: str = "fid"
    inception: str = ""  # FID Inception checkpoint made by tools/convert_inception.py
    # fid: prepared data set dir, image npz or mu/sigma npz ("": data.path, the training set);
    # digits: heldout | train (the metric's own split of the real digits) | a data set dir or image npz ("": heldout);
    # nll: a prepared data set dir, e.g. a held-out split ("": data.path, the training data)
    ref: str = ""
    ref_num: int = 0  # use the first N reference images (0: all)
    num_samples: int = 1000  # EMA samples per evaluation (the paper's numbers use 50000); nll: images, T calls each
    sampler: str = "ddim"  # ddim | dpm++2m | ddpm : the sampler of those samples (docs/sampling.md)
    sample_steps: int = 100  # its steps (0: full ancestral DDPM, whatever eval.sampler says)
    batch_size: int = 50  # per worker, for the sampler and the Inception network (nll: images per network call)
    splits: int = 10  # Inception Score splits
    cache_dir: str = ""  # reference statistics cache ("": $DDPM_DIST_CACHE/fid or ~/.cache/ddpm_dist/fid)


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    device: str = "auto"  # auto (Ascend, then GPU, then CPU) | Ascend | GPU | CPU
    mode: str = "graph"  # graph | pynative
    log_every: int = 100
    sample_every: int = 10_000  # EMA sample grid to TensorBoard every N steps (0: never)
    num_samples: int = 16  # images in that grid
    sampler: str = "ddim"  # ddim | dpm++2m | ddpm : the sampler of that grid (docs/sampling.md)
    sample_steps: int = 50  # its steps (0: full ancestral DDPM, whatever run.sampler says)
    # class-conditional models: classifier-free guidance scale S of the grids and evaluations (1: the conditional
    # model alone, 0: unconditional; docs/sampling.md); an unconditional model refuses any other value than 1
    guidance: float = 1.0
    barrier_timeout: int = 600  # seconds other ranks wait for rank 0's checkpoint write
    step_timeout: str = "auto"  # hang watchdog: auto (50 x median step time, >= 300 s) | seconds | 0 (off)
    compile_cache: str = "auto"  # graph compile cache: auto (when the launcher may restart) | true | false
    profile: str = ""  # START:END: MindSpore's profiler captures global steps START..END into <out_dir>/profile
    profile_ranks: str = "rank0"  # rank0 | all: which workers profile


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "model.arch": ("ddpm_unet", "convnext_unet"),
    "diffusion.beta_schedule": ("linear", "cosine", "sigmoid"),
    "diffusion.objective": ("eps", "x0", "v"),
    "diffusion.loss_type": ("mse", "l1"),
    "diffusion.loss_weight": ("none", "min_snr"),
    "diffusion.var_type": ("fixedlarge", "fixedsmall", "learned_range"),
    "train.lr_decay": ("none", "cosine", "linear"),
    "train.amp_level": ("auto", "O0", "O1", "O2"),
    "train.loss_scale": ("dynamic", "static", "none"),
    "eval.metric": ("fid", "digits", "nll"),
    "run.device": DEVICE_CHOICES,
    "run.mode": ("graph", "pynative"),
    "run.profile_ranks": ("rank0", "all"),
    "run.compile_cache": ("auto", "true", "false"),
    "run.sampler": SAMPLERS,
    "eval.sampler": SAMPLERS,
}

# key -> (predicate, description of the allowed range); the common ranges are shared by groups of keys
_POSITIVE = (lambda v: v > 0, "> 0")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_AT_LEAST_1 = (lambda v: v >= 1, ">= 1")
_OPEN_UNIT = (lambda v: 0.0 < v < 1.0, "in (0, 1)")
_HALF_OPEN_UNIT = (lambda v: 0.0 <= v < 1.0, "in [0, 1)")
_RANGES = {
    **dict.fromkeys(
        ("model.ch", "diffusion.min_snr_gamma", "diffusion.vlb_weight", "train.lr", "train.adam_eps"), _POSITIVE
    ),
    **dict.fromkeys(
        (
            "train.warmup_steps",
            "train.grad_clip",
            "train.weight_decay",
            "train.ckpt_every",
            "train.ckpt_every_minutes",
            "train.milestone_every",
            "model.num_classes",
            "run.guidance",
            "run.sample_every",
            "run.sample_steps",
            "eval.every",
            "eval.sample_steps",
        ),
        _AT_LEAST_0,
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "model.num_res_blocks",
            "model.convnext_mult",
            "model.norm_groups",
            "diffusion.timesteps",
            "data.num_parallel_workers",
            "train.global_batch",
            "train.grad_accum",
            "train.total_steps",
            "train.loss_scale_window",
            "train.keep_last",
            "train.max_nonfinite",
            "run.log_every",
            "run.num_samples",
            "run.barrier_timeout",
            "eval.batch_size",
            "eval.splits",
        ),
        _AT_LEAST_1,
    ),  # fmt: skip
    **dict.fromkeys(("model.norm_eps", "diffusion.beta_start", "diffusion.beta_end"), _OPEN_UNIT),
    **dict.fromkeys(
        ("model.dropout", "train.label_dropout", "train.adam_beta1", "train.adam_beta2", "train.ema_decay"),
        _HALF_OPEN_UNIT,
    ),
    "model.ch_mult": (lambda v: len(v) > 0 and all(m > 0 for m in v), "a non-empty list of positive ints"),
    "model.attn_resolutions": (lambda v: all(r > 0 for r in v), "a list of positive ints"),
    "data.image_size": (lambda v: v >= 8 and v % 8 == 0, "a multiple of 8, >= 8"),
    "data.channels": (lambda v: v in (1, 3), "1 or 3"),
    "train.loss_scale_value": (lambda v: v >= 1.0, ">= 1"),
    "run.seed": (lambda v: 0 <= v <= 2**32 - 1, "in [0, 2**32 - 1] (what MindSpore's set_seed accepts)"),
    "run.out_dir": (lambda v: bool(v.strip()), "a non-empty path"),
    "eval.ref_num": (lambda v: v == 0 or v >= 2, "0 (all) or >= 2"),
    "eval.num_samples": (lambda v: v >= 2, ">= 2"),
}


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def profile_window(spec: str) -> tuple[int, int] | None:
    """``run.profile`` "START:END" -> (START, END), 1-based inclusive global steps; "" -> None. ValueError if bad."""
    if not spec:
        return None
    start, sep, end = spec.partition(":")
    if not (sep and start.strip().isdigit() and end.strip().isdigit()) or not 1 <= int(start) <= int(end):
        raise ValueError(f"expected START:END with 1 <= START <= END, e.g. 10:15 (got {spec!r})")
    return int(start), int(end)


def per_worker_batch(global_batch: int, workers: int, grad_accum: int = 1) -> int:
    """Each worker's share of ``train.global_batch`` - the one check, for the launcher (before msrun starts), the
    trainer and the data pipeline: ConfigError unless the global batch divides over the workers and the share over
    ``train.grad_accum``."""
    if global_batch < 1 or global_batch % workers:
        raise ConfigError(
            f"train.global_batch={global_batch} is not divisible by the {workers} workers (DEVICE_NUM x NNODES under "
            f"the launcher); choose a multiple of {workers}"
        )
    share = global_batch // workers
    if share % grad_accum:
        raise ConfigError(
            f"train.grad_accum={grad_accum} does not divide the per-worker batch {share} "
            f"(train.global_batch={global_batch} over {workers} workers)"
        )
    return share


def step_timeout_seconds(value: str) -> float | None:
    """``run.step_timeout`` as the hang watchdog takes it: ``auto`` -> None, else seconds (0 disables). ValueError if
    neither ``auto`` nor a finite number >= 0."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    seconds = float(text)  # ValueError for anything else
    if not (0 <= seconds < math.inf):
        raise ValueError(f"must be auto or a number of seconds >= 0 (got {value!r})")
    return seconds


def _check_step_timeout(cfg: Config, source: str) -> None:
    try:
        step_timeout_seconds(cfg.run.step_timeout)
    except ValueError:
        raise ConfigError(
            f"{source}: run.step_timeout: must be auto or a number of seconds >= 0, 0 disables "
            f"(got {cfg.run.step_timeout!r})"
        ) from None


def _check_recompute(cfg: Config, source: str) -> None:
    """PyNative re-runs a recomputed Cell whole, dropout included (models.layers.keep_dropout_masks cannot apply)."""
    if cfg.model.recompute and cfg.run.mode == "pynative" and cfg.model.dropout > 0:
        raise ConfigError(
            f"{source}: model.recompute: in run.mode=pynative a recomputed dropout can draw a new mask, so the "
            f"gradients could be wrong with model.dropout={cfg.model.dropout}; use run.mode=graph or model.dropout=0"
        )


def _check_sample_steps(cfg: Config, source: str) -> None:
    """The sampling steps of the training grids (and of a sampling evaluation) are a subset of the T steps."""
    sampled = cfg.eval.every and cfg.eval.metric != "nll"  # nll evaluates without sampling
    keys = ("run.sample_steps", "eval.sample_steps") if sampled else ("run.sample_steps",)
    for key in keys:
        if _get(cfg, key) > cfg.diffusion.timesteps:
            raise ConfigError(
                f"{source}: {key}: {_get(cfg, key)} exceeds diffusion.timesteps {cfg.diffusion.timesteps} "
                "(DDIM steps are a subset of the T training steps; 0 means all of them)"
            )


def _check_guidance(cfg: Config, source: str) -> None:
    """A guidance scale other than 1 means nothing without labels: refused, as tools/sample.py refuses --guidance."""
    if not cfg.model.num_classes and cfg.run.guidance != 1.0:
        raise ConfigError(
            f"{source}: run.guidance: {cfg.run.guidance:g} needs a class-conditional model, and this one is "
            "unconditional (model.num_classes 0)"
        )


def validate(cfg: Config, source: str = "<config>", *, training: bool = True) -> Config:
    """Check choices, ranges and cross-field rules; raise ConfigError naming the key and ``source``. ``training``:
    also the rules between the run / eval sections and the model's (off for a checkpoint's embedded config)."""
    if cfg.run.compile_cache in ("True", "False"):  # YAML's true/false: a bool, which the str field holds as 'True'
        cfg.run.compile_cache = cfg.run.compile_cache.lower()
    for key in _float_keys():  # inf passes "> 0" and nan fails every range with a confusing message
        value = _get(cfg, key)
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key}: must be a finite number (got {value!r})")
    for key, choices in _CHOICES.items():
        value = _get(cfg, key)
        if value not in choices:
            raise ConfigError(f"{source}: {key}: must be one of {', '.join(choices)} (got {value!r})")
    for key, (ok, allowed) in _RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{source}: {key}: must be {allowed} (got {value!r})")
    if cfg.diffusion.beta_end < cfg.diffusion.beta_start:
        raise ConfigError(f"{source}: diffusion.beta_end: must be >= diffusion.beta_start")
    down = 2 ** (len(cfg.model.ch_mult) - 1)
    if cfg.data.image_size % down:
        raise ConfigError(
            f"{source}: data.image_size: {cfg.data.image_size} is not divisible by {down} "
            f"(2 ** (len(model.ch_mult) - 1) downsamplings)"
        )
    if cfg.eval.every and cfg.eval.metric == "fid" and not cfg.eval.inception:
        raise ConfigError(
            f"{source}: eval.inception: required when eval.every > 0 with eval.metric=fid (see docs/evaluation.md)"
        )
    if cfg.eval.metric == "fid" and cfg.eval.splits > cfg.eval.num_samples:
        raise ConfigError(f"{source}: eval.splits: {cfg.eval.splits} exceeds eval.num_samples {cfg.eval.num_samples}")
    _check_step_timeout(cfg, source)
    try:
        profile_window(cfg.run.profile)
    except ValueError as err:
        hint = ' (in YAML, quote it: profile: "10:15")' if cfg.run.profile.isdigit() else ""
        raise ConfigError(f"{source}: run.profile: {err}{hint}") from None
    if cfg.diffusion.loss_weight == "min_snr" and cfg.diffusion.loss_type != "mse":
        raise ConfigError(f"{source}: diffusion.loss_weight: min_snr needs diffusion.loss_type=mse")
    if cfg.train.global_batch % cfg.train.grad_accum:
        raise ConfigError(
            f"{source}: train.grad_accum: {cfg.train.grad_accum} does not divide train.global_batch "
            f"{cfg.train.global_batch}"
        )
    _check_recompute(cfg, source)
    if cfg.model.ch % 8:
        raise ConfigError(f"{source}: model.ch: must be a multiple of 8 for GroupNorm (got {cfg.model.ch})")
    resolutions = [cfg.data.image_size // 2**i for i in range(len(cfg.model.ch_mult))]
    absent = [r for r in cfg.model.attn_resolutions if r not in resolutions]
    if cfg.model.arch == "ddpm_unet" and absent:
        raise ConfigError(
            f"{source}: model.attn_resolutions: the network has no resolution {absent[0]} "
            f"(data.image_size {cfg.data.image_size} with {len(cfg.model.ch_mult)} levels gives {resolutions})"
        )
    if training:
        _check_sample_steps(cfg, source)
        _check_guidance(cfg, source)
    return cfg


def _format_omegaconf_error(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    msg = first_line(err)
    if "Key '" in msg and "not in" in msg:
        return f"{source}: unknown key {key}"
    return f"{source}: {key}: {msg}"


def _float_keys() -> list[str]:
    return [
        f"{sec.name}.{f.name}"
        for sec in dataclasses.fields(Config)
        for f in dataclasses.fields(sec.default_factory)
        if f.type in ("float", float)
    ]


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently, so a config
    with two ``lr:`` lines trained with whichever came last)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path):
    """The parsed YAML of a config file; ConfigError names the file (and the line, for a duplicate key)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the config as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as err:
        if err.problem and err.problem.startswith("duplicate key"):
            mark = err.problem_mark
            raise ConfigError(f"{path}: line {mark.line + 1}: {err.problem}") from None
        raise ConfigError(f"{path}: not valid YAML: {first_line(err)}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {first_line(err)}") from None


def _str_keys() -> set[str]:
    return {
        f"{sec.name}.{f.name}"
        for sec in dataclasses.fields(Config)
        for f in dataclasses.fields(sec.default_factory)
        if f.type in ("str", str)
    }


def _override(item: str):
    """One dotted override as a config. A string key keeps its text as typed: YAML would read ``run.profile=2:3``
    as the base-60 integer 123 (and ``yes`` as a bool)."""
    key, _, value = item.partition("=")
    if key.strip() in _str_keys():
        section, name = key.strip().split(".")
        return OmegaConf.create({section: {name: value}})
    return OmegaConf.from_dotlist([item])


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (YAML) onto the defaults, apply dotted ``overrides``, validate, return a typed Config.

    Raises ConfigError (one line, names the key and the file) for a missing file, bad YAML, an unknown key,
    a wrong type or an out-of-range value.
    """
    schema = OmegaConf.structured(Config)
    source = path or "<defaults>"
    merged = schema
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = _read_yaml(p)
        if data is None:
            raise ConfigError(
                f"{path}: the config file is empty; start from one in configs/ (every value left out takes its "
                "default from ddpm_dist/config.py)"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise ConfigError(_format_omegaconf_error(err, path)) from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-4")
        try:
            merged = OmegaConf.merge(merged, _override(item))
        except OmegaConfBaseException as err:
            raise ConfigError(_format_omegaconf_error(err, f"{source} (override {item})")) from None
        except yaml.YAMLError as err:  # the value is parsed as YAML: e.g. an unclosed list "[1,2"
            raise ConfigError(f"override {item!r}: not a valid value ({first_line(err)})") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{source}: required key {missing[0]} is not set")
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_format_omegaconf_error(err, source)) from None
    return validate(cfg, source)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (for YAML dumps and checkpoint embedding)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_dict(data: dict, source: str = "<embedded config>", *, training: bool = True) -> Config:
    """Rebuild a validated Config from ``to_dict`` output (e.g. the config embedded in a checkpoint).
    ``training=False``: the sections that say how to train (run, eval) are defaults, not checked against the
    others (a T=20 model is not refused for the default run.sample_steps 50)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ConfigError(_format_omegaconf_error(err, source)) from None
    return validate(cfg, source, training=training)
