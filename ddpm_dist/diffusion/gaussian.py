"""Gaussian diffusion on the device: forward process, parameterisation conversions and the training loss.

``GaussianDiffusion`` is a Cell holding the schedule's coefficients as float32 tensors; its methods are tensor-only
so they compile inside a GRAPH_MODE train or sampling step. The network is always an argument (``model(xt, t)``),
and ``t`` and ``noise`` are always inputs, so every result is deterministic under test.

Shapes: x0, xt, noise: float32 [B, C, H, W], x0 in [-1, 1]; t: int32 [B] in [0, T).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .schedule import Schedule

OBJECTIVES = ("eps", "x0", "v")
LOSS_TYPES = ("mse", "l1")
LOSS_WEIGHTS = ("none", "min_snr")


def min_snr_weights(alphas_cumprod: np.ndarray, *, objective: str, gamma: float) -> np.ndarray:
    """Min-SNR-gamma loss weights (Hang et al. 2023, Sec. 3.4) for the MSE of ``objective``: float64 [T].

    With SNR_t = abar_t / (1 - abar_t) (Kingma et al. 2021), the paper weights the error of
    the predicted x0 by min(SNR_t, gamma). The error of the network's own target converts to the x0 error as
    x0 - x0_hat = (eps_hat - eps) sqrt(1 - abar) / sqrt(abar)  =>  |x0 err|^2 = |eps err|^2 / SNR,
    x0 - x0_hat = (v_hat - v) sqrt(1 - abar)                     =>  |x0 err|^2 = |v err|^2 / (SNR + 1),
    so the weight on the objective's loss is min(SNR, gamma) / SNR (eps), min(SNR, gamma) / (SNR + 1) (v) and
    min(SNR, gamma) (x0): each objective then minimises the same min-SNR-weighted x0 error.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")
    if not gamma > 0:
        raise ValueError(f"min_snr gamma must be > 0 (got {gamma!r})")
    abar = np.asarray(alphas_cumprod, np.float64)
    snr = abar / (1.0 - abar)
    clipped = np.minimum(snr, gamma)
    if objective == "eps":
        return clipped / snr
    if objective == "v":
        return clipped / (snr + 1.0)
    return clipped


def _table(values) -> Tensor:
    return Tensor(values, ms.float32)


class GaussianDiffusion(nn.Cell):
    """Coefficients of one schedule plus the maths that uses them.

    Args:
        schedule: the (full) training schedule.
        objective: what the network predicts: ``eps`` (Ho et al.), ``x0``, or ``v`` (Salimans & Ho 2022).
        loss_type: ``mse`` (the paper's L_simple) or ``l1``.
        loss_weight: ``none`` (every t weighs 1) or ``min_snr`` (:func:`min_snr_weights`, MSE only).
        min_snr_gamma: gamma of ``min_snr``.
    """

    def __init__(
        self,
        *,
        schedule: Schedule,
        objective: str = "eps",
        loss_type: str = "mse",
        loss_weight: str = "none",
        min_snr_gamma: float | None = None,
    ):
        super().__init__(auto_prefix=False)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES} (got {loss_type!r})")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS} (got {loss_weight!r})")
        if loss_weight == "min_snr" and loss_type != "mse":
            raise ValueError("loss_weight min_snr is defined for the MSE loss only (loss_type mse)")
        self.num_timesteps = schedule.num_timesteps
        self.objective = objective
        self.use_l1 = loss_type == "l1"
        self.sqrt_alphas_cumprod = _table(schedule.sqrt_alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = _table(schedule.sqrt_one_minus_alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = _table(schedule.sqrt_recip_alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = _table(schedule.sqrt_recipm1_alphas_cumprod)
        self.posterior_mean_coef1 = _table(schedule.posterior_mean_coef1)
        self.posterior_mean_coef2 = _table(schedule.posterior_mean_coef2)
        self.posterior_variance = _table(schedule.posterior_variance)
        self.weighted = loss_weight != "none"
        if self.weighted:
            self.loss_weights = _table(
                min_snr_weights(schedule.alphas_cumprod, objective=objective, gamma=min_snr_gamma or 0.0)
            )

    @staticmethod
    def extract(table: Tensor, t: Tensor) -> Tensor:
        """table[t] reshaped to [B, 1, 1, 1] for broadcasting against images."""
        return ops.gather(table, t, 0).reshape(-1, 1, 1, 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4)."""
        return (
            self.extract(self.sqrt_alphas_cumprod, t) * x0 + self.extract(self.sqrt_one_minus_alphas_cumprod, t) * noise
        )

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x0) (Ho et al. eq. 6-7)."""
        mean = self.extract(self.posterior_mean_coef1, t) * x0 + self.extract(self.posterior_mean_coef2, t) * xt
        return mean, self.extract(self.posterior_variance, t)

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return (
            self.extract(self.sqrt_recip_alphas_cumprod, t) * xt
            - self.extract(self.sqrt_recipm1_alphas_cumprod, t) * eps
        )

    def predict_eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return (self.extract(self.sqrt_recip_alphas_cumprod, t) * xt - x0) / self.extract(
            self.sqrt_recipm1_alphas_cumprod, t
        )

    def predict_x0_from_v(self, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1 - abar) v."""
        return self.extract(self.sqrt_alphas_cumprod, t) * xt - self.extract(self.sqrt_one_minus_alphas_cumprod, t) * v

    def v_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        return (
            self.extract(self.sqrt_alphas_cumprod, t) * noise - self.extract(self.sqrt_one_minus_alphas_cumprod, t) * x0
        )

    def predict_x0(self, xt: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """x0 from the network output, whatever the objective."""
        if self.objective == "eps":
            return self.predict_x0_from_eps(xt, t, out)
        if self.objective == "v":
            return self.predict_x0_from_v(xt, t, out)
        return out

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        if self.objective == "eps":
            return noise
        if self.objective == "v":
            return self.v_target(x0, t, noise)
        return x0

    def training_losses(self, model, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Per-sample loss float32 [B]: mean over C, H, W of (target - model(x_t, t))^2 (or |.|), times the
        timestep's loss weight if one is set.

        With ``objective='eps'``, MSE and no weight this is L_simple (Ho et al. eq. 14). The loss is computed in
        float32 whatever the network's dtype.
        """
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t).astype(ms.float32)
        err = self.target(x0, t, noise) - out
        err = ops.abs(err) if self.use_l1 else err * err
        loss = err.mean(axis=(1, 2, 3))
        if self.weighted:
            loss = loss * ops.gather(self.loss_weights, t, 0)
        return loss
