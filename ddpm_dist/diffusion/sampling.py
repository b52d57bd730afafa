"""Ancestral DDPM and DDIM sampling, one compiled Cell per step.

A sampler step is a Cell ``step(x, i, noise) -> x_prev`` where ``i`` is an int32 scalar tensor indexing the
(respaced) schedule, so one graph serves every timestep and the loop never leaves the device: coefficients are
gathered from tensors in the graph, noise is drawn on the device. The network is called with the original timestep
``timestep_map[i]`` it was trained on.

Shapes: x, noise: float32 [B, C, H, W]; x ends in [-1, 1] when ``clip_x0`` is set.
"""

from __future__ import annotations

from collections.abc import Callable

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .schedule import Schedule, respace, space_timesteps

SAMPLERS = ("ddpm", "ddim")


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
) -> nn.Cell:
    """A step Cell for ``sampler`` over ``steps`` respaced timesteps (0 or T: the full schedule)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} (got {sampler!r})")
    schedule = base
    if steps and steps != base.num_timesteps:
        schedule = respace(base, space_timesteps(base.num_timesteps, steps))
    common = dict(model=model, schedule=schedule, objective=objective, clip_x0=clip_x0)
    if sampler == "ddpm":
        return DDPMStep(var_type=var_type, **common)
    return DDIMStep(eta=eta, **common)


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
    (default ``ops.standard_normal``); ``progress(k)`` is called after each of the k steps."""
    draw = noise_fn or ops.standard_normal
    x = x_T
    n = num_steps(step)
    for k, i in enumerate(range(n - 1, -1, -1)):
        x = step(x, Tensor(i, ms.int32), draw(x.shape))
        if progress is not None:
            progress(k + 1)
    return x
