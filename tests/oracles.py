"""Exact denoisers for data whose distribution is known, used to test the samplers without training a network.

Both return what an eps-predicting network would ideally return: E[eps | x_t] under the data distribution.
"""

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops


class _Oracle(nn.Cell):
    """``objective`` picks what is returned: eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""

    def __init__(self, schedule, objective="eps"):
        super().__init__()
        self.objective = objective
        self.sqrt_acp = Tensor(schedule.sqrt_alphas_cumprod, ms.float32)
        self.sqrt_1m_acp = Tensor(schedule.sqrt_one_minus_alphas_cumprod, ms.float32)

    def coefs(self, t):
        a = ops.gather(self.sqrt_acp, t, 0).reshape(-1, 1, 1, 1)
        b = ops.gather(self.sqrt_1m_acp, t, 0).reshape(-1, 1, 1, 1)
        return a, b

    def output(self, x0, eps, a, b):
        if self.objective == "x0":
            return x0
        if self.objective == "v":
            return a * eps - b * x0
        return eps


class PointOracle(_Oracle):
    """Data = the single point x_star: eps(x_t, t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)."""

    def __init__(self, schedule, x_star: np.ndarray, objective="eps"):
        super().__init__(schedule, objective)
        self.x_star = Tensor(x_star, ms.float32)

    def construct(self, x, t):
        a, b = self.coefs(t)
        x0 = ops.broadcast_to(self.x_star, x.shape)
        return self.output(x0, (x - a * x0) / b, a, b)


class GaussianOracle(_Oracle):
    """Data ~ N(mu, s^2) per pixel: E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + b^2) (x_t - a mu); eps = (x_t - a E) / b."""

    def __init__(self, schedule, mu: float, s: float, objective="eps"):
        super().__init__(schedule, objective)
        self.mu = mu
        self.var = s * s

    def construct(self, x, t):
        a, b = self.coefs(t)
        x0 = self.mu + a * self.var / (a * a * self.var + b * b) * (x - a * self.mu)
        return self.output(x0, (x - a * x0) / b, a, b)


def make_loss(schedule, *, objective: str, loss_type: str, loss_weight: str = "none", min_snr_gamma: float = 5.0):
    """The DiffusionLoss of ``schedule`` with these settings (tests' shorthand for build_diffusion without a config)."""
    from ddpm_dist.diffusion.gaussian import DiffusionLoss, GaussianDiffusion

    return DiffusionLoss(
        diffusion=GaussianDiffusion(schedule=schedule, objective=objective),
        schedule=schedule,
        loss_type=loss_type,
        loss_weight=loss_weight,
        min_snr_gamma=min_snr_gamma,
    )
