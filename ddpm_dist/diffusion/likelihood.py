"""The variational bound of Ho et al. (2020, eq. 5) in bits per dimension, term by term, on the device.

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                          the prior term (no network)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))        Gaussian KLs, t > 0 in 0-based steps
    L_0     = -log p(x_0 | x_1)                                     the discretized Gaussian decoder (eq. 13)

Each term is a mean over C, H, W divided by log 2 (bits/dim), as Nichol & Dhariwal (2021) report it, so the sum of
the T terms and the prior of one image is its negative log-likelihood bound in bits/dim. p's mean is the posterior
mean of the network's x0 (whatever the objective); its variance is fixed (``fixedlarge`` beta_t, ``fixedsmall``
beta-tilde_t) or learned (``learned_range``: the network's extra output v in [-1, 1] interpolates the log variance
between the two, Nichol & Dhariwal eq. 15).

The decoder's bin probabilities use the exact normal CDF written with ``erfc`` on the side of the mean the bin lies
on, so a bin far in a tail keeps its precision in float32 (a difference of two CDFs near 1 would round to 0); the
reference code's tanh approximation of the CDF differs from it by up to ~1e-3 in probability. Probabilities are
clamped at 1e-12 before the log, as in the reference code.

Shapes: x0, xt, outputs float32 [B, C, H, W], x0 in [-1, 1] on the 256-level grid; t int32 [B]. Results float32 [B].
"""

from __future__ import annotations

import math

import numpy as np
from mindspore import Tensor, nn, ops

from .gaussian import GaussianDiffusion, table
from .schedule import Schedule

VAR_TYPES = ("fixedlarge", "fixedsmall", "learned_range")
BIN_HALF_WIDTH = 1.0 / 255.0  # x0 in [-1, 1] on 256 levels: bins of width 2/255 centred on each level
MIN_PROB = 1e-12
LOG2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    diff = logvar2 - logvar1  # first, so that equal distributions give exactly 0
    return 0.5 * (diff - 1.0 + ops.exp(-diff) + ops.square(mean1 - mean2) * ops.exp(-logvar2))


def _upper_tail(z: Tensor) -> Tensor:
    """P(N(0, 1) > z) = erfc(z / sqrt 2) / 2, precise for large z."""
    return 0.5 * ops.erfc(z * _SQRT_HALF)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) elementwise, in nats, for x on the 256-level grid of [-1, 1] under N(mean, exp(log_scale)^2)
    discretized into its bins (Ho et al. eq. 13): the edge bins reach to -inf and +inf."""
    inv = ops.exp(-log_scale)
    lo = (x - BIN_HALF_WIDTH - mean) * inv  # the bin's edges in standard units
    hi = (x + BIN_HALF_WIDTH - mean) * inv
    # P(lo < Z < hi) from the tail on the bin's side of the mean: Q(lo) - Q(hi) above it, Q(-hi) - Q(-lo) below it
    above = _upper_tail(lo) - _upper_tail(hi)
    below = _upper_tail(-hi) - _upper_tail(-lo)
    prob = ops.select(lo + hi >= 0, above, below)
    prob = ops.select(x < -1.0 + BIN_HALF_WIDTH, _upper_tail(-hi), prob)  # the first bin: P(Z < hi)
    prob = ops.select(x > 1.0 - BIN_HALF_WIDTH, _upper_tail(lo), prob)  # the last bin: P(Z > lo)
    return ops.log(ops.clamp(prob, min=MIN_PROB))


def interpolate_log_variance(var_out: Tensor, log_tilde: Tensor, log_beta: Tensor) -> Tensor:
    """A ``learned_range`` network's log variance (Nichol & Dhariwal eq. 15): v in [-1, 1] (the network's variance
    output) -> (v + 1) / 2 log beta_t + (1 - v) / 2 log beta-tilde_t."""
    frac = (var_out + 1.0) * 0.5
    return frac * log_beta + (1.0 - frac) * log_tilde


def split_output(out: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """A ``learned_range`` network's output [B, 2C, H, W] -> (prediction, variance output), each [B, C, H, W]."""
    return out[:, :channels], out[:, channels:]


def _bits(x: Tensor) -> Tensor:
    """Mean over C, H, W, in bits."""
    return x.mean(axis=(1, 2, 3)) / LOG2


class VariationalBound(nn.Cell):
    """The terms of the bound for one (full or respaced) schedule.

    Args:
        diffusion: the schedule's GaussianDiffusion (the network's objective, the posterior coefficients).
        schedule: the same schedule.
        var_type: ``fixedlarge``, ``fixedsmall`` or ``learned_range``.
        clip_x0: clip the network's x0 to [-1, 1] before p's mean (the reference code does for evaluation, not in
            the training loss).
    """

    def __init__(self, *, diffusion: GaussianDiffusion, schedule: Schedule, var_type: str, clip_x0: bool):
        super().__init__(auto_prefix=False)
        if var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES} (got {var_type!r})")
        self.diffusion = diffusion
        self.learned = var_type == "learned_range"
        self.clip_x0 = clip_x0
        self.posterior_log_variance = table(schedule.posterior_log_variance_clipped)
        self.log_betas = table(np.log(schedule.betas))  # the upper end of learned_range
        self.fixed_log_variance = table(schedule.posterior_log_variance_clipped if self.learned else
                                        schedule.model_log_variance(var_type))  # fmt: skip
        abar_last = float(schedule.alphas_cumprod[-1])
        self.prior_mean_coef = math.sqrt(abar_last)
        self.prior_log_variance = math.log(1.0 - abar_last)

    def model_log_variance(self, t: Tensor, var_out: Tensor | None = None) -> Tensor:
        """log sigma_t^2 of p(x_{t-1} | x_t), [B, 1, 1, 1] for fixed variances, like ``var_out`` for learned ones."""
        low = GaussianDiffusion.extract(self.fixed_log_variance, t)
        if not self.learned:
            return low
        return interpolate_log_variance(var_out, low, GaussianDiffusion.extract(self.log_betas, t))

    def terms(self, x0: Tensor, xt: Tensor, t: Tensor, out: Tensor, var_out: Tensor | None = None) -> Tensor:
        """The term of step t for each sample, bits/dim [B]: L_{t-1} for t > 0, L_0 for t = 0.

        ``out``: the network's prediction for its objective (eps, x0 or v); ``var_out``: its variance output
        (``learned_range`` only). The hybrid loss passes ``ops.stop_gradient(out)``, so that this term trains only
        the variance (Nichol & Dhariwal Sec. 3.1).
        """
        x0_hat = self.diffusion.predict_x0(xt, t, out)
        if self.clip_x0:
            x0_hat = ops.clamp(x0_hat, -1.0, 1.0)
        mean = self.diffusion.q_posterior_mean(x0_hat, xt, t)
        log_var = self.model_log_variance(t, var_out)
        true_mean = self.diffusion.q_posterior_mean(x0, xt, t)
        true_log_var = GaussianDiffusion.extract(self.posterior_log_variance, t)
        kl = _bits(normal_kl(true_mean, true_log_var, mean, ops.broadcast_to(log_var, mean.shape)))
        decoder = -_bits(discretized_gaussian_log_likelihood(x0, mean, 0.5 * ops.broadcast_to(log_var, mean.shape)))
        return ops.select(t == 0, decoder, kl)

    def prior_bits(self, x0: Tensor) -> Tensor:
        """L_T for each sample, bits/dim [B]: KL(q(x_T | x_0) || N(0, I))."""
        mean = self.prior_mean_coef * x0
        log_var = ops.full_like(x0, self.prior_log_variance)
        zeros = ops.zeros_like(x0)
        return _bits(normal_kl(mean, log_var, zeros, zeros))
