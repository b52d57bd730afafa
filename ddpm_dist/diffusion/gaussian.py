"""Gaussian diffusion on the device: forward process, parameterisation conversions and the training loss.

``GaussianDiffusion`` is a Cell holding the schedule's coefficients as float32 tensors, the only owner of the
x0 / eps / v conversions (training and every sampler step call it); its methods are tensor-only so they compile
inside a GRAPH_MODE train or sampling step. ``DiffusionLoss`` is the training loss on top of it. The network is
always an argument (``model(xt, t)``), and ``t`` and ``noise`` are always inputs, so every result is deterministic
under test.

Shapes: x0, xt, noise: float32 [B, C, H, W], x0 in [-1, 1]; t: int32 [B] in [0, T).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .schedule import Schedule, snr

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
    check_objective(objective)
    if not gamma > 0:
        raise ValueError(f"min_snr gamma must be > 0 (got {gamma!r})")
    ratio = snr(alphas_cumprod)
    clipped = np.minimum(ratio, gamma)
    if objective == "eps":
        return clipped / ratio
    if objective == "v":
        return clipped / (ratio + 1.0)
    return clipped


def table(values) -> Tensor:
    """A float32 device table of float64 schedule values, indexed by ``ops.gather`` inside compiled steps."""
    return Tensor(np.asarray(values), ms.float32)


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} (got {objective!r})")


class GaussianDiffusion(nn.Cell):
    """The one owner of a schedule's device tables and of the conversions between x0, eps and v.

    Training uses it on the full schedule (``t`` in [0, T)); each sampler step on its respaced schedule (``t`` is then
    the step index ``i``, an int32 scalar or [B]). Tensor-only methods, so they compile inside GRAPH_MODE steps.

    Args:
        schedule: the (full or respaced) schedule.
        objective: what the network predicts: ``eps`` (Ho et al.), ``x0``, or ``v`` (Salimans & Ho 2022).
    """

    def __init__(self, *, schedule: Schedule, objective: str):
        super().__init__(auto_prefix=False)
        check_objective(objective)
        self.num_timesteps = schedule.num_timesteps
        self.objective = objective
        self.sqrt_alphas_cumprod = table(schedule.sqrt_alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = table(schedule.sqrt_one_minus_alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = table(schedule.sqrt_recip_alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = table(schedule.sqrt_recipm1_alphas_cumprod)
        self.posterior_mean_coef1 = table(schedule.posterior_mean_coef1)
        self.posterior_mean_coef2 = table(schedule.posterior_mean_coef2)

    @staticmethod
    def extract(values: Tensor, t: Tensor) -> Tensor:
        """values[t] reshaped to [B, 1, 1, 1] (or [1, 1, 1, 1] for a scalar t) for broadcasting against images."""
        return ops.gather(values, t, 0).reshape(-1, 1, 1, 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. eq. 4)."""
        return (
            self.extract(self.sqrt_alphas_cumprod, t) * x0 + self.extract(self.sqrt_one_minus_alphas_cumprod, t) * noise
        )

    def q_posterior_mean(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The mean mu-tilde of q(x_{t-1} | x_t, x0) (Ho et al. eq. 7)."""
        return self.extract(self.posterior_mean_coef1, t) * x0 + self.extract(self.posterior_mean_coef2, t) * xt

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (Ho et al. eq. 4 solved for x0)."""
        return (
            self.extract(self.sqrt_recip_alphas_cumprod, t) * xt
            - self.extract(self.sqrt_recipm1_alphas_cumprod, t) * eps
        )

    def predict_eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1) (Ho et al. eq. 4 solved for eps)."""
        return (self.extract(self.sqrt_recip_alphas_cumprod, t) * xt - x0) / self.extract(
            self.sqrt_recipm1_alphas_cumprod, t
        )

    def predict_x0_from_v(self, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """v = sqrt(abar) eps - sqrt(1 - abar) x0  =>  x0 = sqrt(abar) x_t - sqrt(1 - abar) v (Salimans & Ho, eq. 8)."""
        return self.extract(self.sqrt_alphas_cumprod, t) * xt - self.extract(self.sqrt_one_minus_alphas_cumprod, t) * v

    def v_target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, Sec. 4)."""
        return (
            self.extract(self.sqrt_alphas_cumprod, t) * noise - self.extract(self.sqrt_one_minus_alphas_cumprod, t) * x0
        )

    def predict_x0(self, xt: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """x0 from the network output ``out``, whatever the objective."""
        if self.objective == "eps":
            return self.predict_x0_from_eps(xt, t, out)
        if self.objective == "v":
            return self.predict_x0_from_v(xt, t, out)
        return out

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network is trained to output for (x0, t, noise)."""
        if self.objective == "eps":
            return noise
        if self.objective == "v":
            return self.v_target(x0, t, noise)
        return x0


class DiffusionLoss(nn.Cell):
    """The training loss of one GaussianDiffusion.

    Args:
        diffusion: the full training schedule's GaussianDiffusion (its objective is the target).
        loss_type: ``mse`` (the paper's L_simple) or ``l1``.
        loss_weight: ``none`` (every t weighs 1) or ``min_snr`` (:func:`min_snr_weights`, MSE only).
        min_snr_gamma: gamma of ``min_snr`` (ignored for ``none``).
        schedule: the same full schedule (its alphas_cumprod give the min-SNR weights).
        bound: for a ``learned_range`` network (2C output channels), the schedule's
            :class:`~.likelihood.VariationalBound` (without clipping): the loss becomes the hybrid loss of Nichol &
            Dhariwal (2021, Sec. 3.1), L_simple + ``vlb_weight`` L_vlb, where L_vlb is estimated from the sampled t as
            T L_t (bits/dim) and the prediction enters L_t through a stop-gradient, so L_vlb trains only the variance.
        vlb_weight: lambda of the hybrid loss (the paper's 0.001).
    """

    def __init__(
        self,
        *,
        diffusion: GaussianDiffusion,
        schedule: Schedule,
        loss_type: str,
        loss_weight: str,
        min_snr_gamma: float,
        bound: nn.Cell | None = None,
        vlb_weight: float = 0.0,
    ):
        super().__init__(auto_prefix=False)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES} (got {loss_type!r})")
        if loss_weight not in LOSS_WEIGHTS:
            raise ValueError(f"loss_weight must be one of {LOSS_WEIGHTS} (got {loss_weight!r})")
        if loss_weight == "min_snr" and loss_type != "mse":
            raise ValueError("loss_weight min_snr is defined for the MSE loss only (loss_type mse)")
        self.diffusion = diffusion
        self.num_timesteps = diffusion.num_timesteps
        self.use_l1 = loss_type == "l1"
        self.weighted = loss_weight != "none"
        if self.weighted:
            weights = min_snr_weights(schedule.alphas_cumprod, objective=diffusion.objective, gamma=min_snr_gamma)
            self.loss_weights = table(weights)
        self.hybrid = bound is not None
        if self.hybrid:
            self.bound = bound
            self.vlb_scale = float(vlb_weight * self.num_timesteps)  # lambda x T: L_vlb = T E_t[L_t]

    def training_losses(self, model, x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-sample loss float32 [B]: mean over C, H, W of (target - model(x_t, t))^2 (or |.|), times the
        timestep's loss weight if one is set; plus lambda T L_t for a learned-variance network. ``y``: the labels of a
        class-conditional network (``model(x_t, t, y)``).

        With ``objective='eps'``, MSE and no weight this is L_simple (Ho et al. eq. 14). The loss is computed in
        float32 whatever the network's dtype.
        """
        xt = self.diffusion.q_sample(x0, t, noise)
        out = (model(xt, t) if y is None else model(xt, t, y)).astype(ms.float32)
        if self.hybrid:
            channels = x0.shape[1]
            out, var = out[:, :channels], out[:, channels:]
        err = self.diffusion.target(x0, t, noise) - out
        err = ops.abs(err) if self.use_l1 else err * err
        loss = err.mean(axis=(1, 2, 3))
        if self.weighted:
            loss = loss * ops.gather(self.loss_weights, t, 0)
        if self.hybrid:
            loss = loss + self.vlb_scale * self.bound.terms(x0, xt, t, ops.stop_gradient(out), var)
        return loss
