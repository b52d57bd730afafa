"""Diffusion maths. ``schedule`` is numpy-only; ``gaussian`` and ``sampling`` run on the device and take the network
as an argument (this package never imports ``ddpm_dist.models``)."""

from .schedule import Schedule, make_schedule, respace, space_timesteps

__all__ = ["Schedule", "make_schedule", "respace", "space_timesteps", "build_diffusion", "build_schedule"]


def build_schedule(cfg) -> Schedule:
    d = cfg.diffusion
    return make_schedule(d.beta_schedule, d.timesteps, d.beta_start, d.beta_end)


def build_diffusion(cfg):
    """The training-side GaussianDiffusion Cell for ``cfg.diffusion``."""
    from .gaussian import GaussianDiffusion

    d = cfg.diffusion
    return GaussianDiffusion(
        schedule=build_schedule(cfg),
        objective=d.objective,
        loss_type=d.loss_type,
        loss_weight=d.loss_weight,
        min_snr_gamma=d.min_snr_gamma,
    )
