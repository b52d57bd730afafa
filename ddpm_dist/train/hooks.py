"""The trainer's sampling and evaluation hooks: EMA sample grids (``run.sample_every``) and the evaluation metric
(``eval.every``), outside the training loop.

Samples come from a copy of the network that receives the EMA weights before each use; sample n's noise depends only
on (run.seed, n), so the grids of one run are comparable over time and do not depend on the number of workers.
Every rank samples its share through the one generation path (``inference.generate``) with keyed samplers built once
per (sampler, steps) and kept, so their graphs compile once per run; rank 0 writes. The likelihood evaluation
(``eval.metric=nll``) runs the same EMA network on data, not samples (``eval.likelihood``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import Config, ConfigError
from ..diffusion import build_keyed_sampler
from ..diffusion.guidance import grid_labels, sample_labels
from ..diffusion.sampling import KeyedSampler, sampler_label
from ..images import save_grid_png
from ..inference import generate
from ..logging import TensorBoard, info
from ..models import build_model
from .step import CopyParams


class EMAHooks:
    """EMA sample grids and evaluations of one training run.

    Args:
        cfg: the resolved config (``run.*`` and ``eval.*`` choose what and when).
        ema_params: the EMA parameters of the train step (copied into the sampling network before each use).
        rank: this process's rank; rank 0 writes the grids, metrics and TensorBoard entries.
        tb: the run's TensorBoard writer.

    Building it checks the evaluation's inputs (Inception weights, digits reference): a missing or wrong file fails
    now, not after hours of training.
    """

    def __init__(self, cfg: Config, *, ema_params, rank: int, tb: TensorBoard):
        self.cfg = cfg
        self.rank = rank
        self.tb = tb
        self.out_dir = Path(cfg.run.out_dir)
        self._ema_params = ema_params
        self._samplers: dict = {}
        self._sample_net = None
        self._extractor = None
        self._digits_ref = None
        self._nll_images = None
        self._likelihood = None
        if cfg.eval.every and cfg.eval.metric == "nll":
            self._nll_images = _nll_images(cfg)
        if cfg.eval.every and cfg.eval.metric == "fid":
            self._extractor = _feature_extractor(cfg)
        if cfg.eval.every and cfg.eval.metric == "digits" and rank == 0:
            self._digits_ref = _digits_reference(cfg)

    def keyed_sampler(self, sampler: str, steps: int) -> KeyedSampler:
        """The EMA network's keyed sampler: ``sampler`` with ``steps`` steps (0: full ancestral DDPM, whatever
        ``sampler`` says), built once per (sampler, steps)."""
        key = sampler_label(sampler, steps)
        if key not in self._samplers:
            self._samplers[key] = build_keyed_sampler(self.cfg, self.ema_net(), sampler=sampler if steps else "ddpm",
                                                      steps=steps, eta=0.0, guidance=self.cfg.run.guidance)  # fmt: skip
        return self._samplers[key]

    def ema_net(self):
        """The network that samples and evaluates (inference mode), built once; ``self._load_ema()`` copies the
        EMA weights into it."""
        if self._sample_net is None:
            self._sample_net = build_model(self.cfg)
            self._sample_net.set_train(False)
            self._load_ema = CopyParams(self._ema_params, self._sample_net.trainable_params())
        return self._sample_net

    def ema_samples(
        self,
        num: int,
        *,
        sampler: str | None = None,
        steps: int | None = None,
        batch: int | None = None,
        uint8: bool = False,
        all_ranks: bool = False,
        labels: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """``num`` samples from the EMA weights (``inference.generate``; each rank draws its share): float32
        [N, C, H, W] in [-1, 1], with ``uint8`` uint8 [N, H, W, C]; on rank 0 (None elsewhere), with ``all_ranks``
        on every rank.

        ``sampler``, ``steps``: default ``run.sampler``, ``run.sample_steps`` (steps 0: full ancestral DDPM);
        ``batch``: per-rank sampler batch (default: the whole share at once); ``labels``: the class of every sample
        (class-conditional models, with guidance ``run.guidance``; default: balanced, n mod K)."""
        run = self.cfg.run
        keyed = self.keyed_sampler(run.sampler if sampler is None else sampler,
                                   run.sample_steps if steps is None else steps)  # fmt: skip
        self._load_ema()
        if labels is None and self.cfg.model.num_classes:
            labels = sample_labels("balanced", num_classes=self.cfg.model.num_classes, num_samples=num)
        return generate(keyed, num_samples=num, batch_size=num if batch is None else batch, seed=run.seed,
                        uint8=uint8, all_ranks=all_ranks, labels=labels)  # fmt: skip

    def sample_grid(self, step: int) -> Path | None:
        """``run.num_samples`` EMA samples to TensorBoard and ``<run dir>/samples/ema_step_<step>.png``; for a
        class-conditional model one row per class (row i: class i, ``run.num_samples // K`` samples each, at least
        one)."""
        k = self.cfg.model.num_classes
        labels, per_row = grid_labels(k, self.cfg.run.num_samples) if k else (None, None)
        images = self.ema_samples(self.cfg.run.num_samples if k == 0 else labels.size, labels=labels)
        if self.rank != 0:
            return None
        self.tb.images("samples/ema", images, step, nrow=per_row)
        self.tb.flush()
        path = self.out_dir / "samples" / f"ema_step_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid_png(images, path, nrow=per_row)
        info(f"EMA samples -> {path}", rank=self.rank)
        return path

    def evaluate(self, step: int) -> dict | None:
        """``eval.metric`` of ``eval.num_samples`` EMA samples: one line on the console, one JSON line in
        ``<run dir>/metrics.jsonl`` and TensorBoard scalars - ``eval/fid``, ``eval/is`` (FID and IS against
        ``eval.ref``, default the training data; every rank samples and extracts features, rank 0 computes and
        writes), or ``eval/digits_fd``, ``eval/digits_confidence``, ``eval/digits_class_entropy`` (the digits metric
        against ``eval.ref``, default the held-out real digits; every rank samples, rank 0 scores; a class-conditional
        model samples balanced labels and adds ``eval/digits_class_accuracy`` and ``eval/digits_fd_class_mean``), or
        ``eval/nll_bpd`` (and its ``_prior``, ``_decoder``, ``_kl`` parts: the bound in bits/dim of the first
        ``eval.num_samples`` images of ``eval.ref``, default the training data; no sampling)."""
        e = self.cfg.eval
        if e.metric == "nll":
            return self._write_nll(step)
        # FID extracts the features in shards: every rank needs the images
        images = self.ema_samples(e.num_samples, sampler=e.sampler, steps=e.sample_steps, batch=e.batch_size,
                                  uint8=True, all_ranks=e.metric == "fid")  # fmt: skip
        sampler = sampler_label(e.sampler, e.sample_steps)
        if e.metric == "digits":
            return self._write_digits_scores(images, step, sampler)
        return self._write_fid(images, step, sampler)

    def _write_fid(self, images: np.ndarray, step: int, sampler: str) -> dict | None:
        from ..eval.evaluate import evaluate, summary

        e = self.cfg.eval
        result = evaluate(
            images,
            ref=e.ref or self.cfg.data.path,
            extractor=self._extractor,
            cache_dir=e.cache_dir or None,
            ref_limit=e.ref_num or None,
            splits=e.splits,
        )
        if self.rank != 0:
            return None
        result = {"step": step, "weights": "ema", "sampler": sampler, **result}
        is_ = result["inception_score"]
        self.tb.scalars({"eval/fid": result["fid"], "eval/is": is_["mean"], "eval/is_std": is_["std"]}, step)
        self._append_metrics(result, summary(result))
        return result

    def _write_digits_scores(self, images: np.ndarray, step: int, sampler: str) -> dict | None:
        if self.rank != 0:
            return None
        from ..eval.digits import digits_scores, summary

        k = self.cfg.model.num_classes
        labels = sample_labels("balanced", num_classes=k, num_samples=len(images)) if k else None
        result = {"step": step, "weights": "ema", "sampler": sampler, "metric": "digits"}
        result.update(digits_scores(images, reference=self._digits_ref, labels=labels))
        if not isinstance(self._digits_ref, str):
            result["reference"] = self.cfg.eval.ref
        names = ("fd", "confidence", "class_entropy") + (("class_accuracy", "fd_class_mean") if k else ())
        self.tb.scalars({f"eval/digits_{name}": result[name] for name in names}, step)
        self._append_metrics(result, summary(result))
        return result

    def _write_nll(self, step: int) -> dict | None:
        from ..eval.likelihood import build_likelihood, dataset_terms, summarize, summary

        if self._likelihood is None:
            self._likelihood = build_likelihood(self.cfg, self.ema_net())
        self._load_ema()
        terms = dataset_terms(self._likelihood, self._nll_images, batch_size=self.cfg.eval.batch_size,
                              seed=self.cfg.run.seed)  # fmt: skip
        if self.rank != 0:
            return None
        result = {"step": step, "weights": "ema", "sampler": None, **summarize(terms)}
        result.update(data=self.cfg.eval.ref or self.cfg.data.path, var_type=self.cfg.diffusion.var_type)
        del result["per_image_bpd"]  # metrics.jsonl keeps the means and the per-t curve
        self.tb.scalars({"eval/nll_bpd": result["nll_bpd"], "eval/nll_prior_bpd": result["prior_bpd"],
                         "eval/nll_decoder_bpd": result["decoder_bpd"], "eval/nll_kl_bpd": result["kl_bpd"]},
                        step)  # fmt: skip
        self._append_metrics(result, summary(result))
        return result

    def _append_metrics(self, result: dict, line: str) -> None:
        self.tb.flush()
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
        sampler = f" {result['sampler']}" if result["sampler"] else ""
        info(f"step {result['step']} EMA{sampler}: {line}", rank=self.rank)


def _feature_extractor(cfg: Config):
    from ..eval import EvalError
    from ..eval.features import FeatureExtractor

    try:
        return FeatureExtractor(cfg.eval.inception, batch_size=cfg.eval.batch_size)
    except EvalError as err:
        raise ConfigError(f"eval.inception: {err}") from None


def _nll_images(cfg: Config) -> np.ndarray:
    """The first ``eval.num_samples`` images of ``eval.ref`` (default ``data.path``), read now: a missing or
    mismatched data set fails before training."""
    from ..eval.likelihood import LikelihoodError, load_images

    key = "eval.ref" if cfg.eval.ref else "data.path"
    try:
        return load_images(cfg.eval.ref or cfg.data.path, cfg, limit=cfg.eval.num_samples)
    except LikelihoodError as err:
        raise ConfigError(f"{key}: {err}") from None


def _digits_reference(cfg: Config):
    from ..eval import EvalError
    from ..eval.digits import classifier, resolve_reference

    try:  # a bad reference (or no scikit-learn) fails now, not at the first evaluation
        reference = resolve_reference(cfg.eval.ref)
        classifier()
    except EvalError as err:
        raise ConfigError(f"eval.ref: {err}") from None
    return reference
