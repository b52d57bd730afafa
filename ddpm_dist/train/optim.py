"""Adam with the learning-rate schedule (linear warm-up, then constant, cosine or linear decay)."""

from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops


def lr_at(step: int, *, lr: float, warmup_steps: int, decay: str, total_steps: int) -> float:
    """Host reference of the schedule (for logging and tests). ``step`` counts optimizer updates from 0."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "none":
        return lr
    span = max(total_steps - warmup_steps, 1)
    frac = min(max(step - warmup_steps, 0) / span, 1.0)
    if decay == "linear":
        return lr * (1.0 - frac)
    return lr * 0.5 * (1.0 + math.cos(math.pi * frac))


class WarmupDecayLR(nn.learning_rate_schedule.LearningRateSchedule):
    """The same schedule as :func:`lr_at`, computed in the graph from the optimizer's global step."""

    def __init__(self, *, lr: float, warmup_steps: int, decay: str, total_steps: int):
        super().__init__()
        self.lr = lr
        self.warmup = float(warmup_steps)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.span = float(max(total_steps - warmup_steps, 1))

    def construct(self, global_step):
        step = global_step.astype(ms.float32)
        if self.decay == "none":
            factor = ops.ones_like(step)
        else:
            frac = ops.clamp((step - self.warmup) / self.span, 0.0, 1.0)
            if self.decay == "linear":
                factor = 1.0 - frac
            else:
                factor = 0.5 * (1.0 + ops.cos(math.pi * frac))
        if self.warmup_steps > 0:
            warm = ops.minimum((step + 1.0) / self.warmup, 1.0)
            factor = ops.select(step < self.warmup, warm, factor)
        return self.lr * factor


def build_optimizer(cfg, params) -> nn.Optimizer:
    train_cfg = cfg.train
    schedule = WarmupDecayLR(
        lr=train_cfg.lr,
        warmup_steps=train_cfg.warmup_steps,
        decay=train_cfg.lr_decay,
        total_steps=train_cfg.total_steps,
    )
    return nn.Adam(
        params,
        learning_rate=schedule,
        beta1=train_cfg.adam_beta1,
        beta2=train_cfg.adam_beta2,
        eps=train_cfg.adam_eps,
        weight_decay=train_cfg.weight_decay,
    )
