"""Diffusion maths. ``schedule`` is numpy-only; ``gaussian`` and ``sampling`` run on the device and take the network
as an argument (this package never imports ``ddpm_dist.models``)."""

from .schedule import Schedule, make_schedule, respace, space_timesteps

__all__ = [
    "Schedule",
    "make_schedule",
    "respace",
    "space_timesteps",
    "build_diffusion",
    "build_keyed_sampler",
    "build_schedule",
]


def build_schedule(cfg) -> Schedule:
    d = cfg.diffusion
    return make_schedule(d.beta_schedule, d.timesteps, beta_start=d.beta_start, beta_end=d.beta_end)


def build_diffusion(cfg):
    """The training loss (a DiffusionLoss over the full schedule's GaussianDiffusion) for ``cfg.diffusion``: the
    hybrid loss for ``var_type=learned_range``."""
    from .gaussian import DiffusionLoss, GaussianDiffusion

    d = cfg.diffusion
    schedule = build_schedule(cfg)
    diffusion = GaussianDiffusion(schedule=schedule, objective=d.objective)
    bound = None
    if d.var_type == "learned_range":  # the hybrid loss (Nichol & Dhariwal 2021)
        from .likelihood import VariationalBound

        bound = VariationalBound(diffusion=diffusion, schedule=schedule, var_type=d.var_type, clip_x0=False)
    return DiffusionLoss(
        diffusion=diffusion,
        schedule=schedule,
        loss_type=d.loss_type,
        loss_weight=d.loss_weight,
        min_snr_gamma=d.min_snr_gamma,
        bound=bound,
        vlb_weight=d.vlb_weight,
    )


def build_keyed_sampler(cfg, net, *, sampler: str, steps: int, eta: float, guidance: float = 1.0):
    """The one place a keyed sampler is built from a config: ``sampler`` over ``steps`` respaced steps (0: the full
    schedule) of ``cfg.diffusion``'s schedule, with its objective, clipping and variance, for ``cfg.data``'s images.
    ``net``: the network, in inference mode. A class-conditional network (``model.num_classes`` > 0) is sampled
    through classifier-free guidance with scale ``guidance`` (:class:`.guidance.Guided`; 1: the conditional model
    alone); its sampler then takes the labels (``KeyedSampler.sample(..., labels=)``)."""
    from .sampling import KeyedSampler, build_sampler

    d = cfg.diffusion
    if cfg.model.num_classes:
        from .guidance import Guided

        net = Guided(net, num_classes=cfg.model.num_classes, channels=cfg.data.channels, scale=guidance)
    step = build_sampler(
        net,
        build_schedule(cfg),
        sampler=sampler,
        steps=steps,
        eta=eta,
        objective=d.objective,
        clip_x0=d.clip_x0,
        var_type=d.var_type,
    )
    return KeyedSampler(step, shape=(cfg.data.channels, cfg.data.image_size, cfg.data.image_size))
