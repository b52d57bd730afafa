"""The negative log-likelihood bound of a data set in bits/dim: every term of Ho et al. (2020, eq. 5), sharded.

For image n (x0 on the 256-level grid of [-1, 1]) the bound is

    NLL(x0) <= L_T + sum_{t=1}^{T-1} L_{t-1} + L_0        (bits/dim; ``diffusion.likelihood.VariationalBound``)

with L_T the prior term (no network), L_{t-1} the KL of step t (0-based: t = 1 .. T-1) and L_0 the discretized
decoder (t = 0): one network call per t, T calls per image. x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z with
z = ``KeyedNoise``(seed, n, stream t): a pure function of (seed, image index, t), so an image's terms do not depend on
the batch it is in or the number of workers (the convolutions' rounding aside). The data set is split over the ranks
by ``parallel.shards.sharded_map`` (contiguous shares, equal padded batches); each batch runs the T steps of one
compiled GRAPH Cell (:class:`BoundTerms`, t an input) and the [B, 1 + T] terms are gathered once per batch. Sums over
t and images are taken on rank 0 in float64 in one fixed order, so 1 and W workers add the same float32 terms.

p's mean uses the network's x0, clipped to [-1, 1] when ``diffusion.clip_x0`` is set (as improved-diffusion's
``image_nll.py`` evaluates), and its variance ``diffusion.var_type``: fixed (``fixedlarge``, ``fixedsmall``) or
``learned_range`` (the network's second C output channels, Nichol & Dhariwal eq. 15).

Terms array (:func:`dataset_terms`): float32 [N, 1 + T], column 0 the prior L_T, column 1 + t the term of step t
(column 1: the decoder L_0). :func:`summarize` turns it into the reported numbers.

Strided estimate (``strided_timesteps``, ``tools/eval.py --nll-steps K``): the decoder (t = 0) and one t per stratum
of K - 1 geometrically growing strata of t = 1 .. T-1, each KL weighted by its stratum's size, so K network calls per
image instead of T. The terms it evaluates are the full bound's own (the noise is keyed by t), so its error is
the quadrature error alone; K = T is the full bound. docs/evaluation.md gives the error measured on a test model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..diffusion.gaussian import GaussianDiffusion
from ..diffusion.keyed_noise import KeyedNoise, check_keyed_noise, seed_tensor
from ..diffusion.likelihood import VariationalBound, split_output
from ..diffusion.schedule import Schedule
from . import EvalError


class LikelihoodError(EvalError):
    """Data the bound cannot be computed on (missing, other image size or channels). The message is one line."""


def x0_from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] on the 256-level grid of [-1, 1]: u / 127.5 - 1 (the training
    pipeline's rescale, ``data.pipeline``)."""
    x0 = images.transpose(0, 3, 1, 2).astype(np.float32)
    return x0 / np.float32(127.5) - np.float32(1.0)


class BoundTerms(nn.Cell):
    """One step of the bound for a batch, compiled once for all t.

    ``construct(x0, indices, seed, t)``: x0 float32 [B, C, H, W] on the 256-level grid, indices int32 [B] (global
    image indices), seed int32 scalar (``seed_tensor``), t int32 scalar in [0, T) -> bits/dim float32 [B]: the KL
    L_{t-1} for t > 0, the decoder L_0 for t = 0.
    """

    def __init__(self, *, model: nn.Cell, bound: VariationalBound, shape: tuple[int, int, int], learned: bool):
        super().__init__(auto_prefix=False)
        self.model = model
        self.bound = bound
        self.noise = KeyedNoise(shape=shape)
        self.channels = int(shape[0])
        self.learned = learned

    def construct(self, x0: Tensor, indices: Tensor, seed: Tensor, t: Tensor) -> Tensor:
        tt = ops.broadcast_to(t, (x0.shape[0],))
        xt = self.bound.diffusion.q_sample(x0, tt, self.noise(seed, indices, t))
        out = self.model(xt, tt).astype(ms.float32)
        if self.learned:
            pred, var_out = split_output(out, self.channels)
            return self.bound.terms(x0, xt, tt, pred, var_out)
        return self.bound.terms(x0, xt, tt, out)


class _Prior(nn.Cell):
    def __init__(self, bound: VariationalBound):
        super().__init__(auto_prefix=False)
        self.bound = bound

    def construct(self, x0: Tensor) -> Tensor:
        return self.bound.prior_bits(x0)


def strided_timesteps(num_timesteps: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(t int64 [steps], weights float64 [steps]) of the strided estimate: t = 0 (weight 1), then one step per
    stratum of ``steps - 1`` strata of 1 .. T-1 that grow geometrically (each at least one step: the first strata are
    single steps), its geometric middle, weighted by the stratum's size (the weights add up to T).

    Why geometric: the terms fall roughly like 1/t (the first KLs carry most of the bound), so equal strata
    represented by their middle step miss the head - measured on the test model (T = 50): -18% at K = 10, -7.6% at
    K = 25, against +0.4% and +0.5% with geometric strata (docs/evaluation.md)."""
    if not 2 <= steps <= num_timesteps:
        raise ValueError(f"the strided estimate needs 2 <= steps <= T = {num_timesteps} (got {steps})")
    start, t, weights = 1, [0], [1.0]
    for left in range(steps - 1, 0, -1):  # strata still to place, this one included
        end = num_timesteps if left == 1 else round(start * (num_timesteps / start) ** (1.0 / left))
        end = min(max(end, start + 1), num_timesteps - (left - 1))  # >= 1 step here, >= 1 for each one after
        t.append(min(max(round(math.sqrt(start * (end - 1))), start), end - 1))
        weights.append(float(end - start))
        start = end
    return np.array(t, np.int64), np.array(weights)


class Likelihood:
    """The bound's terms of batches of images under ``model`` (in inference mode).

    Args:
        model: ``model(xt, t)`` -> [B, C, H, W] (fixed variances) or [B, 2C, H, W] (``learned_range``).
        schedule: the model's full diffusion schedule (T steps).
        objective: what the network predicts (eps, x0, v).
        var_type: ``fixedlarge``, ``fixedsmall`` or ``learned_range``.
        clip_x0: clip the network's x0 to [-1, 1] before p's mean.
        shape: (C, H, W) of one image.
        timesteps: the steps t to evaluate, ascending, starting at 0 (default: all T, the full bound).

    The first instance of a process runs the keyed-noise self-check on the current device.
    """

    def __init__(self, *, model: nn.Cell, schedule: Schedule, objective: str, var_type: str, clip_x0: bool,
                 shape: tuple[int, int, int], timesteps=None):  # fmt: skip
        check_keyed_noise()
        bound = VariationalBound(diffusion=GaussianDiffusion(schedule=schedule, objective=objective),
                                 schedule=schedule, var_type=var_type, clip_x0=clip_x0)  # fmt: skip
        self.shape = tuple(int(s) for s in shape)
        self.num_timesteps = schedule.num_timesteps
        self.var_type = var_type
        self.step = BoundTerms(model=model, bound=bound, shape=self.shape, learned=var_type == "learned_range")
        self.prior = _Prior(bound)
        self.timesteps = np.arange(self.num_timesteps) if timesteps is None else np.asarray(timesteps, np.int64)
        assert self.timesteps[0] == 0 and np.all(np.diff(self.timesteps) > 0), self.timesteps
        self._t = [Tensor(int(t), ms.int32) for t in self.timesteps]

    def batch_terms(self, x0: np.ndarray, indices, *, seed: int, progress: Callable[[int], None] | None = None):
        """The terms of one batch: a device tensor float32 [B, 1 + K] (column 0 the prior, 1 + k step
        ``timesteps[k]``; K = T and k = t for the full bound).

        x0: float32 [B, C, H, W] on the 256-level grid; indices: int [B] in [0, 2^31), the images' global indices
        (their noise keys); ``progress(k)`` after k of the K network calls."""
        x = Tensor(np.ascontiguousarray(x0, np.float32))
        idx = Tensor(np.asarray(indices, np.int64).astype(np.int32))
        s = seed_tensor(seed)
        columns = [self.prior(x)]
        for k, t in enumerate(self._t):
            columns.append(self.step(x, idx, s, t))
            if progress is not None:
                progress(k + 1)
        return ops.stack(columns, axis=1)


def dataset_terms(
    likelihood: Likelihood,
    images: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray | None:
    """The terms of ``images`` (uint8 [N, H, W, C], the same on every rank): float32 [N, 1 + K] on rank 0, None on
    the other ranks. Every rank must call it alike (``parallel.shards.sharded_map``); ``batch_size`` is per rank.
    ``progress(done, total)`` counts this rank's network calls."""
    from ..parallel import rank, world_size
    from ..parallel.shards import shard_plan, sharded_map

    n = len(images)
    c, h, w = likelihood.shape
    if images.dtype != np.uint8 or tuple(images.shape[1:]) != (h, w, c):
        raise LikelihoodError(
            f"images are {images.dtype} {list(images.shape)}, the model takes uint8 [N, {h}, {w}, {c}]"
        )
    T = len(likelihood.timesteps)  # network calls per batch
    total = shard_plan(n, world_size(), batch_size)[1] * T

    def run(indices: np.ndarray, batch: int):
        tick = None if progress is None else (lambda k: progress(batch * T + k, total))
        return likelihood.batch_terms(x0_from_uint8(images[indices]), indices, seed=seed, progress=tick)

    out = np.zeros((n, 1 + T), np.float32) if rank() == 0 else None
    sharded_map(run, num_samples=n, batch_size=batch_size, out=out)
    return out


def summarize(terms: np.ndarray, *, timesteps=None, weights=None, num_timesteps: int | None = None) -> dict:
    """The reported numbers of a terms array (float32 [N, 1 + K]), summed in float64: per image the total, and the
    means over images of the total (``nll_bpd``), the prior, the decoder L_0 and the KL sum (t = 1 .. T-1), the
    standard error of the mean, and the mean of every evaluated term (``terms_bpd`` [K], at the steps ``terms_t``).
    Full bound by default; a strided estimate passes its ``timesteps``, ``weights`` (``strided_timesteps``) and T."""
    terms = np.asarray(terms, np.float64)
    k = terms.shape[1] - 1
    t = np.arange(k) if timesteps is None else np.asarray(timesteps)
    w = np.concatenate([[1.0], np.ones(k) if weights is None else np.asarray(weights, np.float64)])
    per_image = terms @ w
    n = len(per_image)
    return {
        "metric": "nll",
        "nll_bpd": float(per_image.mean()),
        "nll_bpd_stderr": float(per_image.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        "prior_bpd": float(terms[:, 0].mean()),
        "decoder_bpd": float(terms[:, 1].mean()),
        "kl_bpd": float((terms[:, 2:] @ w[2:]).mean()),
        "num_images": int(n),
        "timesteps": int(num_timesteps or k),
        "estimate": "full" if weights is None else f"strided {k} of {num_timesteps}",
        "per_image_bpd": per_image.tolist(),
        "terms_t": t.tolist(),
        "terms_bpd": terms[:, 1:].mean(axis=0).tolist(),
    }


def summary(result: dict) -> str:
    """One line: ``nll: X bits/dim over N images (prior P, decoder D, KL K; T terms, ...)``."""
    extra = ", ".join(f"{k} {result[k]}" for k in ("var_type", "weights", "seed") if k in result)
    stderr = result.get("nll_bpd_stderr")
    pm = f" +- {stderr:.4f}" if stderr is not None else ""
    return (f"nll: {result['nll_bpd']:.4f}{pm} bits/dim over {result['num_images']} images (prior "
            f"{result['prior_bpd']:.4f}, decoder {result['decoder_bpd']:.4f}, KL {result['kl_bpd']:.4f}; "
            f"{_terms_label(result)}{', ' + extra if extra else ''})")  # fmt: skip


def _terms_label(result: dict) -> str:
    if result.get("estimate", "full") == "full":
        return f"{result['timesteps']} terms, full bound"
    return f"{len(result['terms_t'])} of {result['timesteps']} terms, strided estimate"


def build_likelihood(cfg, net: nn.Cell, *, timesteps=None) -> Likelihood:
    """The :class:`Likelihood` of ``net`` under ``cfg.diffusion`` (schedule, objective, variance, clipping) for
    ``cfg.data``'s images; ``timesteps``: a strided estimate's steps (default: all T). A class-conditional network
    (``model.num_classes`` > 0) is evaluated as its unconditional model, the "no label" row: the bound on log p(x)."""
    from ..diffusion import build_schedule

    if cfg.model.num_classes:
        from ..diffusion.guidance import NoLabel

        net = NoLabel(net, num_classes=cfg.model.num_classes)
    d, s = cfg.diffusion, cfg.data.image_size
    return Likelihood(model=net, schedule=build_schedule(cfg), objective=d.objective, var_type=d.var_type,
                      clip_x0=d.clip_x0, shape=(cfg.data.channels, s, s), timesteps=timesteps)  # fmt: skip


def load_images(path: str, cfg, *, limit: int | None) -> np.ndarray:
    """The first ``limit`` (default all; at most the data set's count) images of the prepared data set ``path``,
    uint8 [N, H, W, C], checked against ``cfg.data``'s image size and channels. Raises LikelihoodError."""
    from ..data import DataError, read_images, read_manifest

    try:
        manifest = read_manifest(path)
    except DataError as err:
        raise LikelihoodError(str(err)) from None
    s, c = cfg.data.image_size, cfg.data.channels
    if (manifest["image_size"], manifest["channels"]) != (s, c):
        raise LikelihoodError(
            f"{path}: holds {manifest['image_size']}x{manifest['image_size']}x{manifest['channels']} images, the "
            f"model takes {s}x{s}x{c}; prepare the data at the model's size (tools/prepare_data.py --image-size {s})"
        )
    try:
        return read_images(manifest, limit=limit)
    except DataError as err:
        raise LikelihoodError(str(err)) from None
