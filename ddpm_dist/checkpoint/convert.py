"""Inference checkpoints: reading a checkpoint's network weights, and converting a training checkpoint.

A training checkpoint (``meta.kind = ddpm-dist/train``) holds the whole train step: network weights, ``ema.<name>``
EMA weights, Adam moments, loss-scale state. :func:`convert` keeps only one set of network weights (EMA by default) as
float32, with the ``model``, ``diffusion`` and ``data`` config sections embedded, in an inference checkpoint
(``meta.kind = ddpm-dist/inference``): a MindSpore ``.ckpt`` (CRC-checked) or a ``.safetensors`` file (the meta entries
go to its string metadata). :func:`load_for_sampling` takes either kind and returns a ready network;
:func:`read_arrays` reads any ``.ckpt`` or ``.safetensors`` file (the FID Inception weights too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ..config import Config, ConfigError, from_dict, to_dict
from ..errors import first_line
from . import KIND_INFERENCE, KIND_TRAIN, CheckpointError, load, meta_of, write_weights

WEIGHTS = ("ema", "raw")
SUFFIXES = (".ckpt", ".safetensors")
EMBEDDED_SECTIONS = ("model", "diffusion", "data")


@dataclass
class Loaded:
    """A checkpoint's network and what it says about itself.

    ``weights``: the network's ``name -> float32 ndarray``; ``meta``: the ``meta.*`` entries (kind, step, config, ...);
    ``source_weights``: ``ema`` or ``raw``.
    """

    path: Path
    cfg: Config
    meta: dict
    weights: dict
    source_weights: str


def read_arrays(path: Path) -> tuple[dict, dict]:
    """(name -> float ndarray of the non-meta entries, meta dict) of a .ckpt or .safetensors file."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = {k[5:]: v for k, v in (f.metadata() or {}).items() if k.startswith("meta.")}
                arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(err)})") from None
        for key in ("step",):
            if key in meta:
                meta[key] = int(meta[key])
        return arrays, meta
    if path.suffix != ".ckpt":
        raise CheckpointError(f"{path}: expected a MindSpore .ckpt or a .safetensors file")
    params = load(path)
    arrays = {k: v.asnumpy() for k, v in params.items() if not k.startswith("meta.") and hasattr(v, "asnumpy")}
    return arrays, meta_of(params)


def _config(path: Path, meta: dict) -> Config:
    text = meta.get("config")
    if not isinstance(text, str) or not text.strip():
        raise CheckpointError(f"{path}: no embedded config (meta.config)")
    try:
        data = yaml.safe_load(text)
        return from_dict({k: v for k, v in data.items() if k in EMBEDDED_SECTIONS}, source=f"{path} (meta.config)")
    except (yaml.YAMLError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable embedded config ({first_line(err)})") from None
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def read_weights(path, *, weights: str | None = None, kinds: tuple[str, ...] = (KIND_TRAIN, KIND_INFERENCE)) -> Loaded:
    """Read the network weights (float32) and the config from a training or an inference checkpoint.

    ``weights``: ``ema`` or ``raw`` from a training checkpoint (default ``ema``); for an inference checkpoint it must
    be None or match what the file holds. ``kinds``: the accepted ``meta.kind`` values. Raises CheckpointError (one
    line naming the file) for a missing, unreadable, wrong-kind or incomplete file.
    """
    return _read_checked(path, weights=weights, kinds=kinds)[0]


def _read_checked(path, *, weights: str | None, kinds: tuple[str, ...]):
    """(Loaded, the network its config describes - built on the host to check names and shapes, not loaded)."""
    from ..models import build_model

    path = Path(path)
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} (got {weights!r})")
    arrays, meta = read_arrays(path)
    kind = meta.get("kind")
    if kind not in (KIND_TRAIN, KIND_INFERENCE):
        raise CheckpointError(f"{path}: not a ddpm-dist checkpoint (meta.kind is {kind!r})")
    if kind not in kinds:
        wanted = " or ".join("a training" if k == KIND_TRAIN else "an inference" for k in kinds)
        raise CheckpointError(f"{path}: is {'a training' if kind == KIND_TRAIN else 'an inference'} checkpoint; "
                              f"{wanted} checkpoint is needed")  # fmt: skip
    cfg = _config(path, meta)
    net = build_model(cfg)
    expected = {p.name: (tuple(p.shape), p.requires_grad) for p in net.get_parameters()}
    if kind == KIND_INFERENCE:
        stored = meta.get("weights", "ema")
        if weights is not None and weights != stored:
            raise CheckpointError(f"{path}: holds {stored} weights only (asked for {weights})")
        source, prefix = stored, ""
    else:
        source = weights or "ema"
        prefix = "ema." if source == "ema" else ""
    out = {}
    for name, (shape, trainable) in expected.items():
        key = prefix + name if trainable else name  # EMA covers the trainable parameters only
        if key not in arrays:
            raise CheckpointError(f"{path}: missing {key} for the {cfg.model.arch} in its embedded config")
        value = arrays[key]
        if tuple(value.shape) != shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, the model needs {shape}")
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    return Loaded(path=path, cfg=cfg, meta=meta, weights=out, source_weights=source), net


def load_for_sampling(path, *, weights: str | None = None):
    """(cfg, net, meta) from a training or inference checkpoint: ``net`` is the float32 network with the EMA (default)
    or raw weights, in inference mode (``set_train(False)``: no dropout), not yet compiled."""
    import mindspore as ms

    loaded, net = _read_checked(path, weights=weights, kinds=(KIND_TRAIN, KIND_INFERENCE))
    params = {name: ms.Parameter(ms.Tensor(value), name=name) for name, value in loaded.weights.items()}
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:  # read_weights checked every name; this is an internal invariant
        raise CheckpointError(f"{loaded.path}: parameters not loaded: {not_loaded[:3]}")
    net.set_train(False)
    meta = dict(loaded.meta, weights=loaded.source_weights)
    return loaded.cfg, net, meta


def convert(src, dst, *, weights: str = "ema", overwrite: bool = False) -> Path:
    """Write the inference checkpoint of training checkpoint ``src`` to ``dst`` (``.ckpt`` or ``.safetensors``).

    Holds the network's ``weights`` (``ema`` or ``raw``) as float32 under the network's own parameter names, and
    ``meta.kind = ddpm-dist/inference``, ``meta.weights``, ``meta.step``, ``meta.config`` (model, diffusion and data
    sections as YAML), ``meta.source`` and versions. Written to a temporary file, fsynced and renamed: an error
    leaves no ``dst``. Raises CheckpointError.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in SUFFIXES:
        raise CheckpointError(f"{dst}: the output name must end in .ckpt or .safetensors")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: exists; use --overwrite to replace it")
    if dst.resolve() == src.resolve():
        raise CheckpointError(f"{dst}: the output must differ from the input")
    loaded = read_weights(src, weights=weights, kinds=(KIND_TRAIN,))
    return write_inference(
        dst, loaded.weights, loaded.cfg, weights=loaded.source_weights, step=int(loaded.meta.get("step", 0)), source=src
    )


def write_inference(dst, arrays: dict, cfg: Config, *, weights: str, step: int, source, extra: dict | None = None):
    """Write ``arrays`` (the network's ``name -> float32 ndarray``) as an inference checkpoint ``dst`` with ``cfg``'s
    model, diffusion and data sections embedded (see :func:`convert`); ``extra``: more ``meta.*`` entries. Atomic;
    raises CheckpointError."""
    import mindspore as ms

    import ddpm_dist

    sections = {k: v for k, v in to_dict(cfg).items() if k in EMBEDDED_SECTIONS}
    meta = {
        "meta.kind": KIND_INFERENCE,
        "meta.weights": weights,
        "meta.step": int(step),
        "meta.config": yaml.safe_dump(sections, sort_keys=False),
        "meta.source": str(source),
        "meta.mindspore_version": ms.__version__,
        "meta.ddpm_dist_version": ddpm_dist.__version__,
        **(extra or {}),
    }
    return write_weights(dst, arrays, meta)
