"""Ancestral DDPM, DDIM and DPM-Solver++(2M) sampling, one compiled Cell per step.

A sampler step is a Cell ``step(x, i, noise) -> x_prev`` where ``i`` is an int32 scalar tensor indexing the
(respaced) schedule, so one graph serves every timestep and the loop never leaves the device: coefficients are
gathered from tensors in the graph, noise is drawn on the device. The network is called with the original timestep
``timestep_map[i]`` it was trained on. The multistep solver (:class:`DPMSolverPP2MStep`, ``multistep = True``) is
deterministic and carries the previous data prediction instead: ``step(x, x0_prev, i) -> (x_prev, x0)``;
:func:`sample_loop` and :class:`KeyedSampler` run both kinds.

Shapes: x, noise: float32 [B, C, H, W]; x ends in [-1, 1] when ``clip_x0`` is set.

Keyed noise (:class:`KeyedNoise`, :class:`KeyedSampler`): the noise of sample n at step i - and its x_T - is a pure
function of (seed, n, i), whatever the batch it is drawn in or the number of cards. Why a counter-based hash rather
than the device RNG: MindSpore's random ops (``ops.standard_normal`` and the like) keep one hidden state per op, so
what sample n receives depends on its position in the batch, the batch size and the draws made before; the images
would change with the batch size and the number of cards. Per-sample numpy generators on the host are reproducible
but copy the whole noise tensor host->device every step. A stateless hash evaluated inside the compiled step has
neither problem: no state, no copy, one graph per step. The hash is Chris Wellons' ``lowbias32`` mixer (two
multiplies, three xor-shifts) over a Weyl sequence per (sample, step) lane - the SplitMix construction - and pairs of
32-bit words become normals by Box-Muller. It is written in int32 (wrapping multiply, xor, masked arithmetic shifts
as logical shifts) because int32 is the integer type with the widest kernel coverage across back ends; only the CPU
kernels were run here. :func:`keyed_noise_reference` is the same function in numpy (the specification). Rows agree
across batch compositions to an ulp (log/cos/sin round differently by SIMD lane position), as the network's own
convolutions do. Limits: 32-bit keys (two (seed, n) pairs collide with probability ~2^-32), 24-bit uniforms (|z| <=
5.9). Cost: ``bench/sampling_speed.py`` (docs/sampling.md has the numbers).
"""

from __future__ import annotations

from collections.abc import Callable

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .schedule import Schedule, respace, space_timesteps, space_timesteps_logsnr

SAMPLERS = ("ddpm", "ddim", "dpm++2m")
SPACINGS = ("time", "logsnr")


def _table(values) -> Tensor:
    return Tensor(np.asarray(values), ms.float32)


class _SamplerStep(nn.Cell):
    """Shared part: the network call and its conversion to (x0_hat, eps_hat) on a given schedule."""

    def __init__(self, *, model: nn.Cell, schedule: Schedule, objective: str, clip_x0: bool):
        super().__init__(auto_prefix=False)
        self.model = model
        self.objective = objective
        self.clip_x0 = clip_x0
        self.timestep_map = Tensor(schedule.timestep_map.astype(np.int32), ms.int32)
        self.sqrt_acp = _table(schedule.sqrt_alphas_cumprod)
        self.sqrt_1m_acp = _table(schedule.sqrt_one_minus_alphas_cumprod)
        self.sqrt_recip_acp = _table(schedule.sqrt_recip_alphas_cumprod)
        self.sqrt_recipm1_acp = _table(schedule.sqrt_recipm1_alphas_cumprod)

    def predict(self, x: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        """(x0_hat, eps_hat) at step i; x0_hat clipped to [-1, 1] if configured, eps_hat consistent with it."""
        t = ops.broadcast_to(ops.gather(self.timestep_map, i, 0), (x.shape[0],))
        out = self.model(x, t).astype(ms.float32)
        sa = ops.gather(self.sqrt_acp, i, 0)
        s1m = ops.gather(self.sqrt_1m_acp, i, 0)
        sr = ops.gather(self.sqrt_recip_acp, i, 0)
        srm1 = ops.gather(self.sqrt_recipm1_acp, i, 0)
        if self.objective == "eps":
            x0 = sr * x - srm1 * out
        elif self.objective == "v":
            x0 = sa * x - s1m * out
        else:
            x0 = out
        if self.clip_x0:
            x0 = ops.clamp(x0, -1.0, 1.0)
        eps = (sr * x - x0) / srm1
        return x0, eps


class DDPMStep(_SamplerStep):
    """x_{t-1} = mu-tilde(x_t, x0_hat) + sigma_t z, z ~ N(0, I), no noise at the last step (Ho et al. Alg. 2).

    ``var_type``: ``fixedlarge`` (sigma^2 = beta_t) or ``fixedsmall`` (sigma^2 = beta-tilde_t).
    """

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool, var_type: str):
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0)
        self.coef1 = _table(schedule.posterior_mean_coef1)
        self.coef2 = _table(schedule.posterior_mean_coef2)
        self.sigma = _table(np.exp(0.5 * schedule.model_log_variance(var_type)))

    def construct(self, x: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        x0, _ = self.predict(x, i)
        mean = ops.gather(self.coef1, i, 0) * x0 + ops.gather(self.coef2, i, 0) * x
        nonzero = (i > 0).astype(ms.float32)
        return mean + nonzero * ops.gather(self.sigma, i, 0) * noise


class DDIMStep(_SamplerStep):
    """Song et al. 2021, eq. 12: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z,
    s = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev). eta = 0 is deterministic."""

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool, eta: float):
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0)
        abar = schedule.alphas_cumprod
        abar_prev = schedule.alphas_cumprod_prev
        sigma = eta * np.sqrt((1 - abar_prev) / (1 - abar)) * np.sqrt(1 - abar / abar_prev)
        self.sqrt_acp_prev = _table(np.sqrt(abar_prev))
        self.dir_coef = _table(np.sqrt(np.maximum(1 - abar_prev - sigma**2, 0.0)))
        self.sigma = _table(sigma)

    def construct(self, x: Tensor, i: Tensor, noise: Tensor) -> Tensor:
        x0, eps = self.predict(x, i)
        return (
            ops.gather(self.sqrt_acp_prev, i, 0) * x0
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
    lam = np.log(alpha / sigma)
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

    def __init__(self, *, model, schedule: Schedule, objective: str, clip_x0: bool):
        super().__init__(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0)
        c_x, c_d, w = dpmpp_2m_coefficients(schedule)
        self.c_x = _table(c_x)
        self.c_d = _table(c_d)
        self.w = _table(w)

    def construct(self, x: Tensor, x0_prev: Tensor, i: Tensor) -> tuple[Tensor, Tensor]:
        x0, _ = self.predict(x, i)
        w = ops.gather(self.w, i, 0)
        d = x0 + w * (x0 - x0_prev)
        return ops.gather(self.c_x, i, 0) * x + ops.gather(self.c_d, i, 0) * d, x0


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
    sampler: str = "ddpm",
    steps: int = 0,
    eta: float = 0.0,
    objective: str = "eps",
    clip_x0: bool = True,
    var_type: str = "fixedlarge",
    spacing: str | None = None,
) -> nn.Cell:
    """A step Cell for ``sampler`` over ``steps`` respaced timesteps (0 or T: the full schedule).

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
    if sampler == "dpm++2m":
        return DPMSolverPP2MStep(**common)
    return DDIMStep(eta=eta, **common)


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
) -> Tensor:
    """Run ``step`` from pure noise ``x_T`` down to x_0. ``noise_fn(shape)`` draws z on the device
    (default ``ops.standard_normal``; a multistep solver draws none); ``progress(k)`` is called after each of the
    k steps."""
    draw = noise_fn or ops.standard_normal
    x = x_T
    x0 = ops.zeros_like(x_T) if is_multistep(step) else None
    n = num_steps(step)
    for k, i in enumerate(range(n - 1, -1, -1)):
        if x0 is not None:
            x, x0 = step(x, x0, Tensor(i, ms.int32))
        else:
            x = step(x, Tensor(i, ms.int32), draw(x.shape))
        if progress is not None:
            progress(k + 1)
    return x


# ---------------------------------------------------------------------------------------------------- keyed noise
_MUL1 = 0x7FEB352D  # lowbias32 constants (https://nullprogram.com/blog/2018/07/31/)
_MUL2 = 0x846CA68B
_WEYL = 0x9E3779B9  # 2^32 / golden ratio
_SEED_SALT = 0x243F6A88  # digits of pi: keep h(seed) away from h's fixed point h(0) = 0
_STREAM_SALT = 0x85A308D3
X_T_STREAM = 0xFFFFFFFF  # the stream of x_T; step i of the sampler uses stream i


def _i32(value: int) -> int:
    """The int32 with the bits of ``value`` mod 2^32."""
    return int(np.array(value & 0xFFFFFFFF, np.uint32).view(np.int32))


def _mix(x: Tensor) -> Tensor:
    """lowbias32 on int32 bits: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16."""
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF))
    x = x * _i32(_MUL1)
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 15), 0x1FFFF))
    x = x * _i32(_MUL2)
    return ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF))


class KeyedNoise(nn.Cell):
    """z = N(0, I) noise of shape [B, *shape] whose row b is a pure function of (seed, indices[b], stream).

    ``construct(seed, indices, stream)``: seed int32 scalar (the bits of a uint32 seed, see :func:`seed_tensor`),
    indices int32 [B] (global sample indices >= 0), stream int32 scalar (the sampler step i, or ``X_T_STREAM``
    for x_T) -> float32 [B, *shape].

    Per row: key = h(h(seed + a) ^ index); two lanes s_j = h(key ^ h(2 stream + j + b)), j = 0, 1; words
    w_j[c] = h(s_j + c * 0x9E3779B9) for pair c; u_j = (w_j >> 8 + 0.5) / 2^24; (z[2c], z[2c+1]) =
    sqrt(-2 ln u_0) (cos 2 pi u_1, sin 2 pi u_1) (Box-Muller), with h = lowbias32, salts a, b, and all arithmetic
    mod 2^32. Key and lane are hashed apart and joined by xor: a symmetric join such as h(h(n) + h(2 stream + j))
    gives equal lanes to (n, j) and (j, n) - correlated samples, which the test of row correlations catches.
    """

    def __init__(self, *, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape))
        pairs = (self.size + 1) // 2
        weyl = (np.arange(pairs, dtype=np.uint64) * _WEYL % 2**32).astype(np.uint32).view(np.int32)
        self.weyl = Tensor(weyl.reshape(1, 1, pairs), ms.int32)
        self.lanes = Tensor(np.array([0, 1], np.int32), ms.int32)

    def words(self, seed: Tensor, indices: Tensor, stream: Tensor) -> Tensor:
        """The hash words: int32 [B, 2, pairs], the bits of :func:`keyed_noise_words`."""
        key = _mix(ops.bitwise_xor(_mix(seed + _i32(_SEED_SALT)), indices))  # [B]
        lane = _mix(stream * 2 + self.lanes + _i32(_STREAM_SALT))  # [2]
        base = _mix(ops.bitwise_xor(ops.expand_dims(key, 1), ops.expand_dims(lane, 0)))  # [B, 2]
        return _mix(ops.expand_dims(base, 2) + self.weyl)  # [B, 2, pairs]

    def construct(self, seed: Tensor, indices: Tensor, stream: Tensor) -> Tensor:
        words = self.words(seed, indices, stream)
        u = (ops.bitwise_and(ops.bitwise_right_shift(words, 8), 0xFFFFFF).astype(ms.float32) + 0.5) * (2.0**-24)
        radius = ops.sqrt(-2.0 * ops.log(u[:, 0]))
        theta = (2.0 * np.pi) * u[:, 1]
        z = ops.stack((radius * ops.cos(theta), radius * ops.sin(theta)), axis=-1)  # [B, pairs, 2]
        b = indices.shape[0]
        return ops.reshape(ops.reshape(z, (b, -1))[:, : self.size], (b,) + self.shape)


def seed_tensor(seed: int) -> Tensor:
    """The int32 scalar tensor KeyedNoise takes for a seed in [0, 2^32)."""
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2^32) (got {seed})")
    return Tensor(_i32(int(seed)), ms.int32)


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(_MUL1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_MUL2)
    x ^= x >> np.uint32(16)
    return x


def keyed_noise_words(seed: int, indices, stream: int, pairs: int) -> np.ndarray:
    """The specification of KeyedNoise's hash in numpy: uint32 [B, 2, pairs]."""
    with np.errstate(over="ignore"):
        idx = np.asarray(indices, np.int64).astype(np.uint32)
        key = _mix_np(_mix_np(np.array([(seed + _SEED_SALT) & 0xFFFFFFFF], np.uint32)) ^ idx)
        lane = _mix_np(np.array([(2 * stream + j + _STREAM_SALT) & 0xFFFFFFFF for j in (0, 1)], np.uint32))
        base = _mix_np(key[:, None] ^ lane[None, :])
        weyl = (np.arange(pairs, dtype=np.uint64) * _WEYL % 2**32).astype(np.uint32)
        return _mix_np(base[:, :, None] + weyl[None, None, :])


def keyed_noise_reference(seed: int, indices, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """What ``KeyedNoise`` returns, computed in numpy float64: float32 [B, *shape] (equal to ~1e-6)."""
    size = int(np.prod(shape))
    words = keyed_noise_words(seed, indices, stream, (size + 1) // 2)
    u = ((words >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0**-24
    radius, theta = np.sqrt(-2.0 * np.log(u[:, 0])), 2.0 * np.pi * u[:, 1]
    z = np.stack((radius * np.cos(theta), radius * np.sin(theta)), axis=-1).reshape(len(words), -1)[:, :size]
    return z.reshape((len(words),) + tuple(shape)).astype(np.float32)


class KeyedStep(nn.Cell):
    """One compiled sampler step with its noise drawn in the same graph:
    ``construct(x, i, seed, indices) = step(x, i, noise(seed, indices, stream=i))``."""

    def __init__(self, step: nn.Cell, noise: KeyedNoise):
        super().__init__(auto_prefix=False)
        self.step = step
        self.noise = noise

    def construct(self, x: Tensor, i: Tensor, seed: Tensor, indices: Tensor) -> Tensor:
        return self.step(x, i, self.noise(seed, indices, i))


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
        self.multistep = is_multistep(step)
        self.keyed_step = step if self.multistep else KeyedStep(step, self.noise)
        self.num_steps = num_steps(step)
        self._steps = [Tensor(i, ms.int32) for i in range(self.num_steps)]
        self._x_T_stream = Tensor(_i32(X_T_STREAM), ms.int32)

    def initial_noise(self, indices, *, seed: int) -> Tensor:
        """x_T: float32 [B, C, H, W] for the sample ``indices`` (int [B])."""
        return self.noise(seed_tensor(seed), Tensor(np.asarray(indices, np.int32)), self._x_T_stream)

    def sample(self, indices, *, seed: int, progress: Callable[[int], None] | None = None) -> Tensor:
        """x_0 for the samples ``indices`` (int [B], each in [0, 2^31)): float32 [B, C, H, W] on the device.

        One host->device copy (the indices) per call; ``progress(k)`` after each of the k steps."""
        indices = np.asarray(indices, np.int64)
        if indices.ndim != 1 or indices.size == 0 or indices.min() < 0 or indices.max() >= 2**31:
            raise ValueError("indices must be a non-empty 1-D array of ints in [0, 2^31)")
        idx = Tensor(indices.astype(np.int32))
        seed_t = seed_tensor(seed)
        x = self.noise(seed_t, idx, self._x_T_stream)
        x0 = ops.zeros_like(x) if self.multistep else None
        for k, i in enumerate(range(self.num_steps - 1, -1, -1)):
            if self.multistep:
                x, x0 = self.keyed_step(x, x0, self._steps[i])
            else:
                x = self.keyed_step(x, self._steps[i], seed_t, idx)
            if progress is not None:
                progress(k + 1)
        return x


# ------------------------------------------------------------------------------------------- device self-check
class KeyedNoiseMismatch(RuntimeError):
    """The device computes a keyed noise different from :func:`keyed_noise_reference` (its int32 kernels do not
    wrap or shift as the hash needs). The message is one line naming the device and the first differing value."""


# seeds, indices and streams at the edges of the int32 arithmetic: sign bits set, the largest values, x_T's stream
_PROBE_SEEDS = (0, 0x9E3779B9, 2**32 - 1)
_PROBE_INDICES = (0, 1, 12345, 2**31 - 1)
_PROBE_STREAMS = (0, 999, X_T_STREAM)
_PROBE_SHAPE = (1, 4, 5)  # 20 values: 10 Box-Muller pairs per row
_PROBE_ATOL = 1e-4  # float32 log/cos/sin against the float64 reference (CPU: ~2e-6)
_checked: dict[str, bool] = {}


class _NoiseProbe(nn.Cell):
    def __init__(self, noise: KeyedNoise):
        super().__init__()
        self.noise = noise

    def construct(self, seed: Tensor, indices: Tensor, stream: Tensor) -> tuple[Tensor, Tensor]:
        return self.noise.words(seed, indices, stream), self.noise(seed, indices, stream)


def device_name() -> str:
    """``<target>:<device id>`` of the current MindSpore context, e.g. ``CPU:0``."""
    target = ms.get_context("device_target")
    try:
        dev = ms.get_context("device_id")
    except (ValueError, RuntimeError):
        dev = 0
    return f"{target}:{dev}"


def check_keyed_noise(*, force: bool = False) -> str:
    """Draw a small keyed-noise probe on the current device and compare it with the numpy specification.

    The hash words must be equal bit for bit and the normals within 1e-4. Runs once per process and device (again
    with ``force``); returns the device name. Raises :class:`KeyedNoiseMismatch` with one line naming the device and
    the first differing value. Why stop rather than fall back to host-drawn noise: a mismatch means the device's
    int32 kernels do not compute what the hash is written for - a back-end defect, which a warning in one of many
    worker logs would hide; the fallback (noise hashed in numpy and copied host->device every step) would be a second
    code path that no test runs on the devices where it would be used. Stopping names the defect before any sampling
    time is spent; ``--device CPU`` still samples.
    """
    device = device_name()
    if _checked.get(device) and not force:
        return device
    _checked.pop(device, None)
    probe = _NoiseProbe(KeyedNoise(shape=_PROBE_SHAPE))
    idx = Tensor(np.array(_PROBE_INDICES, np.int32))
    pairs = (int(np.prod(_PROBE_SHAPE)) + 1) // 2
    for seed in _PROBE_SEEDS:
        for stream in _PROBE_STREAMS:
            words, z = probe(seed_tensor(seed), idx, Tensor(_i32(stream), ms.int32))
            words = words.asnumpy().view(np.uint32)
            want_words = keyed_noise_words(seed, _PROBE_INDICES, stream, pairs)
            where = f"seed {seed}, stream {stream}"
            bad = np.argwhere(words != want_words)
            if len(bad):
                b, lane, c = (int(v) for v in bad[0])
                raise KeyedNoiseMismatch(
                    f"keyed noise self-check failed on {device}: hash word [{b}, {lane}, {c}] ({where}, sample "
                    f"{_PROBE_INDICES[b]}) is {int(words[b, lane, c]):#010x}, the reference is "
                    f"{int(want_words[b, lane, c]):#010x}; this device's int32 kernels do not wrap or shift as "
                    f"the hash needs (sample with --device CPU, and please report it)"
                )
            z = z.asnumpy()
            want = keyed_noise_reference(seed, _PROBE_INDICES, stream, _PROBE_SHAPE)
            bad = np.argwhere(~(np.abs(z - want) <= _PROBE_ATOL))
            if len(bad):
                pos = tuple(int(v) for v in bad[0])
                raise KeyedNoiseMismatch(
                    f"keyed noise self-check failed on {device}: normal {list(pos)} ({where}, sample "
                    f"{_PROBE_INDICES[pos[0]]}) is {float(z[pos]):.7g}, the reference is {float(want[pos]):.7g} "
                    f"(tolerance {_PROBE_ATOL}) (sample with --device CPU, and please report it)"
                )
    _checked[device] = True
    return device
