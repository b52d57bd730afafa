"""Ancestral DDPM, DDIM and DPM-Solver++(2M) sampling, one compiled Cell per step.

A sampler step is a Cell ``step(x, i, noise) -> x_prev`` where ``i`` is an int32 scalar tensor indexing the
(respaced) schedule, so one graph serves every timestep and the loop never leaves the device: coefficients are
gathered from tensors in the graph, noise is drawn on the device. The network is called with the original timestep
``timestep_map[i]`` it was trained on. The multistep solver (:class:`DPMSolverPP2MStep`, ``multistep = True``) is
deterministic and carries the previous data prediction instead: ``step(x, x0_prev, i) -> (x_prev, x0)``;
:func:`sample_loop` and :class:`KeyedSampler` run both kinds.

Shapes: x, noise: float32 [B, C, H, W]; x ends in [-1, 1] when ``clip_x0`` is set.

Every conversion between the network output, x0 and eps is :class:`~.gaussian.GaussianDiffusion`'s, on the step's
schedule. :class:`KeyedSampler` draws x_T and every step's noise from :class:`~.keyed_noise.KeyedNoise`, so sample n
depends only on (seed, n).
"""

from __future__ import annotations

from collections.abc import Callable

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..choices import SAMPLERS
from .gaussian import GaussianDiffusion, table
from .guidance import Guided
from .keyed_noise import X_T_STREAM, KeyedNoise, check_keyed_noise, int32_bits, seed_tensor
from .likelihood import interpolate_log_variance, split_output
from .schedule import Schedule, half_log_snr, respace, space_timesteps, space_timesteps_logsnr

SPACINGS = ("time", "logsnr")


class _SamplerStep(nn.Cell):
    """Shared part: the network call and its conversion to (x0_hat, eps_hat) by the step schedule's
    GaussianDiffusion. ``learned``: the network also outputs the variance (2C channels, ``learned_range``)."""

    def __init__(self, *, model: nn.Cell, schedule: Schedule, objective: str, clip_x0: bool, learned: bool = False):
        super().__init__(auto_prefix=False)
        self.model = model
        self.clip_x0 = clip_x0
        self.learned = learned
        self.timestep_map = Tensor(schedule.timestep_map.astype(np.int32), ms.int32)
        self.diffusion = GaussianDiffusion(schedule=schedule, objective=objective)

    def predict(self, xt: Tensor, i: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x0_hat, eps_hat, v) at step i; x0_hat clipped to [-1, 1] if configured, eps_hat consistent with it; v the
        variance output of a ``learned_range`` network (the prediction itself otherwise, unused). ``y``: the labels
        of a class-conditional network (``model(x, t, y)``, e.g. a :class:`~.guidance.Guided` one)."""
        t = ops.broadcast_to(ops.gather(self.timestep_map, i, 0), (xt.shape[0],))
        out = (self.model(xt, t) if y is None else self.model(xt, t, y)).astype(ms.float32)
        var = out
        if self.learned:
            out, var = split_output(out, xt.shape[1])
        x0 = self.diffusion.predict_x0(xt, i, out)
        if self.clip_x0:
            x0 = ops.clamp(x0, -1.0, 1.0)
        return x0, self.diffusion.predict_eps_from_x0(xt, i, x0), var


class DDPMStep(_SamplerStep):
    """x_{t-1} = mu-tilde(x_t, x0_hat) + sigma_t z, z ~ N(0, I), no noise at the last step (Ho et al. Alg. 2).

    ``var_type``: ``fixedlarge`` (sigma^2 = beta_t), ``fixedsmall`` (sigma^2 = beta-tilde_t) or ``learned_range``
    (log sigma^2 interpolated by the network between the two, Nichol & Dhariwal eq. 15). On a respaced schedule
    beta and beta-tilde are the respaced ones (betas recomputed from alpha-bar at the kept steps), as in
    improved-diffusion's respaced sampler.
    """

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool, var_type: str):
        learned = var_type == "learned_range"
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0, learned=learned)
        if learned:
            self.log_betas = table(np.log(schedule.betas))
            self.log_tilde = table(schedule.posterior_log_variance_clipped)
        else:
            self.sigma = table(np.exp(0.5 * schedule.model_log_variance(var_type)))

    def construct(self, xt: Tensor, i: Tensor, noise: Tensor, y: Tensor | None = None) -> Tensor:
        x0, _, var = self.predict(xt, i, y)
        mean = self.diffusion.q_posterior_mean(x0, xt, i)
        nonzero = (i > 0).astype(ms.float32)
        if self.learned:
            log_var = interpolate_log_variance(var, ops.gather(self.log_tilde, i, 0), ops.gather(self.log_betas, i, 0))
            return mean + nonzero * ops.exp(0.5 * log_var) * noise
        return mean + nonzero * ops.gather(self.sigma, i, 0) * noise


class DDIMStep(_SamplerStep):
    """Song et al. 2021, eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
    s = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev). eta = 0 is deterministic."""

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool, eta: float, learned: bool = False):
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0, learned=learned)
        abar = schedule.alphas_cumprod
        abar_prev = schedule.alphas_cumprod_prev
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        self.sqrt_alphas_cumprod_prev = table(np.sqrt(abar_prev))
        self.dir_coef = table(np.sqrt(np.maximum(1 - abar_prev - sigma**2, 0.0)))
        self.sigma = table(sigma)

    def construct(self, xt: Tensor, i: Tensor, noise: Tensor, y: Tensor | None = None) -> Tensor:
        x0, eps, _ = self.predict(xt, i, y)
        return (
            ops.gather(self.sqrt_alphas_cumprod_prev, i, 0) * x0
            + ops.gather(self.dir_coef, i, 0) * eps
            + ops.gather(self.sigma, i, 0) * noise
        )


def dpmpp_2m_coefficients(schedule: Schedule) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-step tables of DPM-Solver++(2M) on a (respaced) schedule, float64 [n] each: (c_x, c_d, w).

    Step i goes from abar_i to abar_prev_i (the next grid point, 1 for i = 0) with alpha = sqrt(abar),
    sigma = sqrt(1 - abar) and the half log-SNR lambda = log(alpha / sigma) (Lu et al. 2022a, "DPM-Solver"). With
    h_i = lambda_prev_i - lambda_i and r_i = h_{i+1} / h_i (the step before over this one), Lu et al. 2022b, Alg. 2:

        D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i+1}
        x_prev = (sigma_prev / sigma_i) x_i - alpha_prev (e^{-h_i} - 1) D_i

    so c_x = sigma_prev / sigma, c_d = alpha_prev (1 - e^{-h}) = alpha_prev - sigma_prev alpha / sigma (finite when
    sigma_prev = 0), and w = 1 / (2 r) (D = x0 + w (x0 - x0_prev)). w = 0 (first order, DPM-Solver++(1), which is
    DDIM with eta 0) at the first step (no history) and at the last step (to sigma = 0: h is infinite, the step
    returns x0).
    """
    abar = schedule.alphas_cumprod
    abar_prev = schedule.alphas_cumprod_prev
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    alpha_prev, sigma_prev = np.sqrt(abar_prev), np.sqrt(1.0 - abar_prev)
    c_x = sigma_prev / sigma
    c_d = alpha_prev - sigma_prev * alpha / sigma
    n = len(abar)
    lam = half_log_snr(abar)
    w = np.zeros(n)
    for i in range(1, n - 1):  # 0 < i < n - 1: a previous step exists and the target is a grid point
        h = lam[i - 1] - lam[i]
        h_before = lam[i] - lam[i + 1]
        w[i] = h / (2.0 * h_before)
    return c_x, c_d, w


class DPMSolverPP2MStep(_SamplerStep):
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): multistep, second order, in the data prediction x0_hat; no noise.

    ``construct(x, x0_prev, i) -> (x_prev, x0)``: ``x0_prev`` is the x0 returned by the step before (anything, e.g.
    zeros, at the first step, where its weight is 0). The coefficients are :func:`dpmpp_2m_coefficients` of the
    step's schedule; x0_hat is clipped to [-1, 1] when ``clip_x0`` is set (static thresholding, which the paper's
    data-prediction form allows).
    """

    multistep = True

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool, learned: bool = False):
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0, learned=learned)
        c_x, c_d, w = dpmpp_2m_coefficients(schedule)
        self.c_x = table(c_x)
        self.c_d = table(c_d)
        self.w = table(w)

    def construct(self, xt: Tensor, x0_prev: Tensor, i: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x0, _, _ = self.predict(xt, i, y)
        w = ops.gather(self.w, i, 0)
        d = x0 + w * (x0 - x0_prev)
        return ops.gather(self.c_x, i, 0) * xt + ops.gather(self.c_d, i, 0) * d, x0


def is_multistep(step: nn.Cell) -> bool:
    """True for steps that carry the previous x0 (``step(x, x0_prev, i)``) rather than take noise."""
    return bool(getattr(step, "multistep", False))


def default_spacing(sampler: str) -> str:
    """The timestep spacing :func:`build_sampler` gives ``sampler``: ``logsnr`` for dpm++2m, else ``time``."""
    return "logsnr" if sampler == "dpm++2m" else "time"


def build_sampler(
    model: nn.Cell,
    base: Schedule,
    *,
    sampler: str,
    objective: str,
    clip_x0: bool,
    var_type: str,
    steps: int = 0,
    eta: float = 0.0,
    spacing: str | None = None,
) -> nn.Cell:
    """A step Cell for ``sampler`` over ``steps`` respaced timesteps (0 or T: the full schedule).

    ``objective``, ``clip_x0`` and ``var_type`` are the model's (``cfg.diffusion``; no defaults here: a v-model
    sampled as an eps-model would give noise without an error - :func:`ddpm_dist.diffusion.build_keyed_sampler`
    passes them from the config).

    ``spacing`` picks the timesteps (both grids hold t = 0 and T-1): ``time`` (:func:`space_timesteps`, evenly
    spaced) or ``logsnr`` (:func:`space_timesteps_logsnr`, evenly spaced half log-SNR). None: the sampler's own -
    ``time`` for DDPM and DDIM (as always), ``logsnr`` for DPM-Solver++(2M), the spacing its authors recommend for
    low-resolution images (on the Gaussian oracle at 20 steps its std is 1.5% off, time-uniform 30%: tests).
    ``eta`` is DDIM's, ``var_type`` DDPM's; DPM-Solver++(2M) takes neither."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (got {sampler!r})")
    spacing = spacing or default_spacing(sampler)
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS} (got {spacing!r})")
    schedule = base
    if steps and steps != base.num_timesteps:
        if spacing == "logsnr":
            use = space_timesteps_logsnr(base, steps)
        else:
            use = space_timesteps(base.num_timesteps, steps)
        schedule = respace(base, use)
    common = dict(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0)
    if sampler == "ddpm":
        return DDPMStep(var_type=var_type, **common)
    learned = var_type == "learned_range"  # DDIM and DPM-Solver++ use the mean part of a learned-variance network
    if sampler == "dpm++2m":
        return DPMSolverPP2MStep(learned=learned, **common)
    return DDIMStep(eta=eta, learned=learned, **common)


def sampler_label(sampler: str, steps: int) -> str:
    """How results name a sampling setting: ``ddpm`` for the full ancestral sampler (``steps`` 0, whatever
    ``sampler`` says), else ``<sampler>-<steps>``, e.g. ``ddim-100``, ``dpm++2m-20``."""
    return f"{sampler}-{steps}" if steps else "ddpm"


def num_steps(step: nn.Cell) -> int:
    return int(step.timestep_map.shape[0])


def sample_loop(
    step: nn.Cell,
    x_T: Tensor,
    *,
    noise_fn: Callable[[tuple], Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """Run ``step`` from pure noise ``x_T`` down to x_0. ``noise_fn(shape)`` draws z on the device
    (default ``ops.standard_normal``; a multistep solver draws none); ``progress(k)`` is called after each of the
    k steps; ``labels`` int32 [B] for a class-conditional network."""
    extra = () if labels is None else (labels,)
    draw = noise_fn or ops.standard_normal
    x = x_T
    x0 = ops.zeros_like(x_T) if is_multistep(step) else None
    n = num_steps(step)
    for k, i in enumerate(range(n - 1, -1, -1)):
        if x0 is not None:
            x, x0 = step(x, x0, Tensor(i, ms.int32), *extra)
        else:
            x = step(x, Tensor(i, ms.int32), draw(x.shape), *extra)
        if progress is not None:
            progress(k + 1)
    return x


class KeyedStep(nn.Cell):
    """One compiled sampler step with its noise drawn in the same graph:
    ``construct(x, i, seed, indices[, y]) = step(x, i, noise(seed, indices, stream=i)[, y])``."""

    def __init__(self, *, step: nn.Cell, noise: KeyedNoise):
        super().__init__(auto_prefix=False)
        self.step = step
        self.noise = noise

    def construct(self, x: Tensor, i: Tensor, seed: Tensor, indices: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            return self.step(x, i, self.noise(seed, indices, i))
        return self.step(x, i, self.noise(seed, indices, i), y)


class KeyedSampler:
    """Sampling in which sample ``n`` depends only on (seed, n): x_T and every step's z come from KeyedNoise.

    ``step``: a step Cell of :func:`build_sampler`; ``shape``: (C, H, W) of one image. The two graphs (x_T, step)
    compile once per batch size; keep the batch size fixed and pad the last batch (its extra rows do not change the
    others). A multistep solver is deterministic: only its x_T is keyed. The first KeyedSampler of a process runs
    :func:`check_keyed_noise` on the current device.
    """

    def __init__(self, step: nn.Cell, *, shape: tuple[int, int, int]):
        check_keyed_noise()
        self.noise = KeyedNoise(shape=shape)
        self.shape = self.noise.shape  # (C, H, W) of one image
        self.multistep = is_multistep(step)
        self.keyed_step = step if self.multistep else KeyedStep(step=step, noise=self.noise)
        self.num_steps = num_steps(step)
        self.conditional = isinstance(step.model, Guided)  # its step takes the labels
        self._steps = [Tensor(i, ms.int32) for i in range(self.num_steps)]
        self._x_T_stream = Tensor(int32_bits(X_T_STREAM), ms.int32)

    def sample(self, indices, *, seed: int, progress: Callable[[int], None] | None = None, labels=None) -> Tensor:
        """x_0 for the samples ``indices`` (int [B], each in [0, 2^31)): float32 [B, C, H, W] on the device.

        ``labels`` (int [B], class-conditional networks): the class of each sample. One host->device copy (the
        indices, and the labels) per call; ``progress(k)`` after each of the k steps."""
        if self.conditional != (labels is not None):
            raise ValueError("labels are needed for a class-conditional model, and only for one")
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1 or indices.size == 0 or indices.min() < 0 or indices.max() >= 2**31:
            raise ValueError("indices must be a non-empty 1-D array of ints in [0, 2^31)")
        idx = Tensor(indices.astype(np.int32))
        seed_t = seed_tensor(seed)
        x = self.noise(seed_t, idx, self._x_T_stream)
        extra = () if labels is None else (Tensor(np.asarray(labels, np.int64).astype(np.int32)),)
        x0 = ops.zeros_like(x) if self.multistep else None
        for k, i in enumerate(range(self.num_steps - 1, -1, -1)):
            if self.multistep:
                x, x0 = self.keyed_step(x, x0, self._steps[i], *extra)
            else:
                x = self.keyed_step(x, self._steps[i], seed_t, idx, *extra)
            if progress is not None:
                progress(k + 1)
        return x
