"""Classifier-free guidance (Ho & Salimans 2022) for class-conditional networks, and the labels samples are drawn for.

A class-conditional network (``model.num_classes`` K > 0) takes labels y in [0, K]; K is "no label", the row that
label dropout trained as the unconditional model. :class:`Guided` wraps it into the ``net(x, t, y)`` the samplers
call, with the guidance scale S:

    out = out(x, t, K) + S * (out(x, t, y) - out(x, t, K))

S = 1 is the conditional model alone, S = 0 the unconditional one, S > 1 pushes samples towards their class. This is
GLIDE's and diffusers' ``guidance_scale`` convention; Ho & Salimans write eps = (1 + w) eps_c - w eps_u, so S = 1 + w
(their w = 0.3 is S = 1.3). The mix is applied to the network output whatever it predicts (eps, x0 or v): each is an
affine function of the others given x_t with coefficients that do not depend on the network, and the mix's weights sum
to 1, so mixing v or x0 is mixing eps. A ``learned_range`` network's variance channels are the conditional pass's
(as GLIDE does). Both passes run as one batched forward of 2B rows; S = 0 and S = 1 need one pass of B rows only.

Labels are a function of the sample index (:func:`sample_labels`), so with keyed noise the images depend only on
(seed, index, label): not on the batch size or the number of cards.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

LABEL_SPECS = "balanced | all-<k> | k1,k2,... | none"


class Guided(nn.Cell):
    """``construct(x, t, y)`` -> the guided output of ``net`` (see the module docstring).

    ``num_classes`` K of the network (its "no label" row is K); ``channels``: the prediction's channels C (a
    ``learned_range`` network outputs 2C, the last C of which are taken from the conditional pass); ``scale``: S."""

    def __init__(self, net: nn.Cell, *, num_classes: int, channels: int, scale: float):
        super().__init__(auto_prefix=False)
        if num_classes < 1:
            raise ValueError(f"guidance needs a class-conditional network (num_classes {num_classes})")
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"the guidance scale must be a finite number >= 0 (got {scale})")
        self.net = net
        self.null = int(num_classes)
        self.channels = int(channels)
        self.scale = float(scale)

    def construct(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        if self.scale == 1.0:
            return self.net(x, t, y)
        null = ops.full_like(y, self.null)
        if self.scale == 0.0:
            return self.net(x, t, null)
        b = x.shape[0]
        out = self.net(ops.concat((x, x)), ops.concat((t, t)), ops.concat((y, null)))
        cond, uncond = out[:b], out[b:]
        c = self.channels
        guided = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        if out.shape[1] == c:
            return guided
        return ops.concat((guided, cond[:, c:]), axis=1)


class NoLabel(nn.Cell):
    """``construct(x, t)`` -> ``net(x, t, K)``: a class-conditional network as its unconditional ("no label") model,
    for code that calls ``net(x, t)`` (the likelihood of an image under the model without its class)."""

    def __init__(self, net: nn.Cell, *, num_classes: int):
        super().__init__(auto_prefix=False)
        self.net = net
        self.null = int(num_classes)

    def construct(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(x, t, ops.full((x.shape[0],), self.null, dtype=t.dtype))


def sample_labels(spec: str, *, num_classes: int, num_samples: int) -> np.ndarray:
    """The label of every sample index 0..N-1 (int64 [N]) for a ``--labels`` spec:

    - ``balanced``: n mod K (every class equally often, in turn);
    - ``all-<k>``: class k for every sample;
    - ``k1,k2,...``: the list in turn (sample n gets k_{n mod len});
    - ``none``: K, "no label" (unconditional samples of a conditional network).

    ValueError naming the problem for anything else or a class outside 0..K-1."""
    if num_classes < 1:
        raise ValueError("labels need a class-conditional model (model.num_classes > 0)")
    n = np.arange(num_samples, dtype=np.int64)
    text = spec.strip().lower()
    if text == "balanced":
        return n % num_classes
    if text == "none":
        return np.full(num_samples, num_classes, np.int64)
    if text.startswith("all-"):
        classes = [text[4:]]
    else:
        classes = [part.strip() for part in text.split(",")]
    if not all(c.isdigit() for c in classes):
        raise ValueError(f"unknown labels {spec!r} (choose {LABEL_SPECS})")
    values = np.array([int(c) for c in classes], np.int64)
    bad = values[values >= num_classes]
    if bad.size:
        raise ValueError(f"label {int(bad[0])} is outside the model's classes 0..{num_classes - 1}")
    return values[n % len(values)]


def grid_labels(num_classes: int, num_samples: int) -> tuple[np.ndarray, int]:
    """Labels of a class grid: one row per class, ``max(1, num_samples // K)`` samples each; (labels int64
    [K * per_row], per_row). Row i is class i."""
    per_row = max(1, num_samples // num_classes)
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_row), per_row
