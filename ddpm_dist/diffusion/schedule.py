"""Noise schedules and their derived coefficients, in float64 numpy (no MindSpore here).

Notation follows Ho et al. 2020: ``betas[t]`` is beta_{t+1} of the paper (t is 0-based), ``alphas = 1 - betas``,
``alphas_cumprod[t] = prod_{s<=t} alphas[s]`` (alpha-bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """SNR_t = abar_t / (1 - abar_t) (Kingma et al. 2021, eq. 2): float64, the signal-to-noise ratio of x_t."""
    abar = np.asarray(alphas_cumprod, np.float64)
    return abar / (1.0 - abar)


def half_log_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t) = log(SNR_t) / 2 with alpha = sqrt(abar), sigma = sqrt(1 - abar) (Lu et al.
    2022a, "DPM-Solver"): float64, decreasing in t; as 0.5 (log abar - log1p(-abar)), exact near abar = 1."""
    abar = np.asarray(alphas_cumprod, np.float64)
    return 0.5 * (np.log(abar) - np.log1p(-abar))


def linear_betas(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Ho et al. 2020, Sec. 4: betas linear from beta_start to beta_end. Returns float64 [T]."""
    return np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)


def cosine_betas(timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2).

    betas_t = 1 - alpha-bar(t+1)/alpha-bar(t), clipped to ``max_beta`` to avoid the singularity at t = T.
    Returns float64 [T].
    """

    def f(u: np.ndarray) -> np.ndarray:
        return np.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    u = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    alpha_bar = f(u) / f(np.zeros(1))
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def sigmoid_betas(
    timesteps: int, *, start: float = -3.0, end: float = 3.0, tau: float = 1.0, max_beta: float = 0.999
) -> np.ndarray:
    """Jabri et al. 2022 ("Scalable Adaptive Computation for Iterative Generation", the sigmoid schedule of its
    Algorithm / Fig. on noise schedules; the default of lucidrains' denoising-diffusion-pytorch):
    gamma(u) = (sigmoid(end/tau) - sigmoid((u (end - start) + start)/tau)) / (sigmoid(end/tau) - sigmoid(start/tau)),
    u = t/T in [0, 1], and alpha-bar(t) = gamma(t/T) / gamma(0) (gamma(0) = 1, gamma(1) = 0).

    betas_t = 1 - alpha-bar(t+1)/alpha-bar(t), clipped to ``max_beta`` (the last one would be 1). Compared with the
    linear schedule it spends fewer steps near pure noise and more at low noise. Returns float64 [T].
    """

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    u = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    lo, hi = sigmoid(start / tau), sigmoid(end / tau)
    gamma = (hi - sigmoid((u * (end - start) + start) / tau)) / (hi - lo)
    alpha_bar = gamma / gamma[0]
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, max_beta)


BETA_SCHEDULES = ("linear", "cosine", "sigmoid")


def make_betas(
    schedule: str, timesteps: int, *, beta_start: float | None = None, beta_end: float | None = None
) -> np.ndarray:
    """betas float64 [T] of ``schedule``; ``beta_start`` / ``beta_end`` (``diffusion.*`` in config.py) are needed by
    ``linear`` only."""
    if schedule == "linear":
        if beta_start is None or beta_end is None:
            raise ValueError("the linear beta schedule needs beta_start and beta_end")
        return linear_betas(timesteps, beta_start, beta_end)
    if schedule == "cosine":
        return cosine_betas(timesteps)
    if schedule == "sigmoid":
        return sigmoid_betas(timesteps)
    raise ValueError(f"unknown beta schedule {schedule!r} ({', '.join(BETA_SCHEDULES)})")


@dataclass(frozen=True)
class Schedule:
    """All per-timestep coefficients of a schedule, float64 [T] each.

    ``timestep_map[i]`` is the original timestep (what the network was trained with) of step i; the identity for a
    full schedule, a subsequence for a respaced one (DDIM or fewer-step DDPM).
    """

    betas: np.ndarray
    timestep_map: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @property
    def alphas_cumprod_prev(self) -> np.ndarray:
        return np.append(1.0, self.alphas_cumprod[:-1])

    @property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @property
    def sqrt_one_minus_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    @property
    def sqrt_recip_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod)

    @property
    def sqrt_recipm1_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 / self.alphas_cumprod - 1.0)

    @property
    def posterior_variance(self) -> np.ndarray:
        """beta-tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t (Ho et al. eq. 7)."""
        return self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def _t0_variance(self) -> float:
        """The variance that stands in at t=0, where beta-tilde is 0: beta-tilde_1 as in the reference code. A
        one-step schedule (T=1, or sampling with 1 step) has no t=1 and takes beta_0: the value is never used there,
        since the last step (i = 0) adds no noise."""
        return self.posterior_variance[1] if self.num_timesteps > 1 else self.betas[0]

    @property
    def posterior_log_variance_clipped(self) -> np.ndarray:
        """log beta-tilde with the t=0 value (which is 0) replaced by the t=1 value."""
        return np.log(np.append(self._t0_variance, self.posterior_variance[1:]))

    @property
    def posterior_mean_coef1(self) -> np.ndarray:
        """Coefficient of x0 in mu-tilde (Ho et al. eq. 7)."""
        return self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)

    @property
    def posterior_mean_coef2(self) -> np.ndarray:
        """Coefficient of x_t in mu-tilde (Ho et al. eq. 7)."""
        return (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)

    def model_log_variance(self, var_type: str) -> np.ndarray:
        """log sigma_t^2 of p(x_{t-1}|x_t): ``fixedsmall`` = beta-tilde_t, ``fixedlarge`` = beta_t (Ho et al. Sec. 3.2).

        For ``fixedlarge`` the t=0 entry uses beta-tilde_1 as in the reference code (a better decoder variance).
        """
        if var_type == "fixedsmall":
            return self.posterior_log_variance_clipped
        if var_type == "fixedlarge":
            return np.log(np.append(self._t0_variance, self.betas[1:]))
        raise ValueError(f"unknown var_type {var_type!r} (fixedlarge or fixedsmall)")


def make_schedule(
    schedule: str, timesteps: int, *, beta_start: float | None = None, beta_end: float | None = None
) -> Schedule:
    """The full schedule of :func:`make_betas`."""
    betas = make_betas(schedule, timesteps, beta_start=beta_start, beta_end=beta_end)
    return Schedule(betas=betas, timestep_map=np.arange(timesteps, dtype=np.int64))


def space_timesteps(num_timesteps: int, steps: int) -> np.ndarray:
    """``steps`` evenly spaced original timesteps in [0, T), always including 0 and T-1. Returns int64 [steps]."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"sampling steps must be in [1, {num_timesteps}] (got {steps})")
    if steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_timesteps - 1, steps)).astype(np.int64))


def space_timesteps_logsnr(base: Schedule, steps: int) -> np.ndarray:
    """``steps`` distinct original timesteps in [0, T), always including 0 and T-1, whose half log-SNR
    lambda_t = log(sqrt(abar_t) / sqrt(1 - abar_t)) (Lu et al. 2022a, "DPM-Solver") is as close as possible to evenly
    spaced between lambda_{T-1} and lambda_0 - the "logSNR" step spacing of DPM-Solver (its step-size schedule),
    which its authors recommend for low-resolution images. Returns int64 [steps].

    Each target lambda takes the nearest timestep; where several targets meet one timestep (lambda moves by more
    than the target spacing per timestep, e.g. near t = T-1 of the cosine schedule) they are pushed apart to
    consecutive timesteps, so exactly ``steps`` network calls are made.
    """
    T = base.num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"sampling steps must be in [1, {T}] (got {steps})")
    if steps == 1:
        return np.array([T - 1], dtype=np.int64)
    abar = base.alphas_cumprod
    lam = half_log_snr(abar)  # decreasing in t
    targets = np.linspace(lam[0], lam[-1], steps)  # t = 0 first
    t = np.array([int(np.argmin(np.abs(lam - target))) for target in targets], dtype=np.int64)
    t[0], t[-1] = 0, T - 1
    for k in range(1, steps):  # strictly increasing from t = 0 ...
        t[k] = max(t[k], t[k - 1] + 1)
    t[-1] = T - 1
    for k in range(steps - 2, -1, -1):  # ... and below T - 1
        t[k] = min(t[k], t[k + 1] - 1)
    return t


def respace(base: Schedule, use_timesteps: np.ndarray) -> Schedule:
    """A schedule that visits only ``use_timesteps`` (sorted original indices) with the same alpha-bar there.

    New betas: beta'_i = 1 - abar[k_i] / abar[k_{i-1}] (Nichol & Dhariwal 2021, Sec. 4), so q(x_k|x_0) is unchanged.
    """
    use = np.asarray(sorted(set(int(k) for k in use_timesteps)), dtype=np.int64)
    abar = base.alphas_cumprod[use]
    prev = np.append(1.0, abar[:-1])
    return Schedule(betas=1.0 - abar / prev, timestep_map=base.timestep_map[use])
