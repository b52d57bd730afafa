"""The variational bound's terms (ddpm_dist/diffusion/likelihood.py) against independent float64 formulas: the
Gaussian KL in closed form, the decoder's bin probabilities with Python's math.erf / math.erfc, the prior term, and
the whole bound of a small deterministic network against a slow numpy loop over every t."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from ddpm_dist.diffusion.gaussian import GaussianDiffusion
from ddpm_dist.diffusion.likelihood import VariationalBound, discretized_gaussian_log_likelihood, normal_kl
from ddpm_dist.diffusion.schedule import make_schedule

pytestmark = pytest.mark.usefixtures("cpu_graph")


def f32(x) -> Tensor:
    return Tensor(np.asarray(x, np.float32))


# ---------------------------------------------------------------- the pieces
def test_normal_kl_is_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 64))
    lv1, lv2 = rng.uniform(-8, 1, size=(2, 64))
    # KL(N1 || N2) = log(s2 / s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    s1, s2 = np.exp(0.5 * lv1), np.exp(0.5 * lv2)
    expect = np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    got = normal_kl(f32(m1), f32(lv1), f32(m2), f32(lv2)).asnumpy()
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=2e-6)
    assert np.all(normal_kl(f32(m1), f32(lv1), f32(m1), f32(lv1)).asnumpy() == 0.0)


def _bin_log_prob(x: float, mean: float, scale: float) -> float:
    """log P(bin of x) in float64 with math.erf / math.erfc; edge bins open; clamped at 1e-12 like the code."""
    cdf = lambda z: 0.5 * math.erfc(-z / math.sqrt(2))  # noqa: E731
    lo, hi = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
    if x < -0.999:
        p = cdf(hi)
    elif x > 0.999:
        p = 1 - cdf(lo) if lo < 0 else 0.5 * math.erfc(lo / math.sqrt(2))
    elif lo > 0:  # above the mean: the upper tails, exact in float64 far out
        p = 0.5 * (math.erfc(lo / math.sqrt(2)) - math.erfc(hi / math.sqrt(2)))
    else:
        p = cdf(hi) - cdf(lo)
    return math.log(max(p, 1e-12))


def test_decoder_log_likelihood_equals_erf_bin_probabilities():
    rng = np.random.default_rng(1)
    levels = np.arange(256) / 127.5 - 1.0
    x = np.concatenate([levels[[0, 1, 2, 127, 128, 253, 254, 255]], rng.choice(levels, 200)])
    mean = np.clip(x + rng.normal(scale=0.05, size=x.shape), -1.2, 1.2)
    log_scale = rng.uniform(np.log(0.002), np.log(0.5), size=x.shape)
    got = discretized_gaussian_log_likelihood(f32(x), f32(mean), f32(log_scale)).asnumpy()
    expect = np.array([_bin_log_prob(a, m, math.exp(s)) for a, m, s in zip(x, mean, log_scale, strict=True)])
    np.testing.assert_allclose(got, expect, atol=2e-4, rtol=2e-4)


def test_a_far_tail_bin_keeps_its_probability_in_float32():
    """A bin 5.6 to 5.9 standard deviations above the mean has P ~ 9e-9: a difference of two float32 CDFs near 1
    rounds to 0 (-> log 1e-12 = -27.6); the tail form gives log P within rounding."""
    x, scale = 0.0, 0.5 / 255 / 0.15  # bin half-width = 0.15 scale
    mean = x - 5.75 * scale
    expect = _bin_log_prob(x, mean, scale)
    assert -20 < expect < -17  # the regime in question
    got = discretized_gaussian_log_likelihood(f32([x]), f32([mean]), f32([math.log(scale)])).asnumpy()[0]
    assert got == pytest.approx(expect, abs=1e-3)
    mirrored = discretized_gaussian_log_likelihood(f32([-x]), f32([-mean]), f32([math.log(scale)])).asnumpy()[0]
    assert mirrored == pytest.approx(expect, abs=1e-3)


def test_decoder_probabilities_of_all_256_bins_sum_to_one():
    levels = np.arange(256) / 127.5 - 1.0
    for mean, scale in [(0.3, 0.01), (-0.97, 0.2), (1.1, 0.05)]:
        full = lambda v: f32(np.full(256, v))  # noqa: E731
        logp = discretized_gaussian_log_likelihood(f32(levels), full(mean), full(np.log(scale)))
        assert float(np.exp(logp.asnumpy().astype(np.float64)).sum()) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- the whole bound against a slow numpy loop
class Toy(nn.Cell):
    """A fixed smooth function of (x_t, t) with 2C outputs: prediction and a variance output in (-1, 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.c = channels

    def construct(self, xt, t):
        tt = t.astype(ms.float32).reshape(-1, 1, 1, 1)
        pred = 0.8 * ops.tanh(xt) + 0.01 * tt * 0.1
        var = ops.tanh(0.5 * xt - 0.02 * tt)
        return ops.concat((pred, var), axis=1)


def _numpy_bound(betas, x0, noises, outs, *, objective, var_type, clip):
    """Per-image bound in bits/dim, float64, from the betas alone (no ddpm_dist code)."""
    T = len(betas)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    c1, c2 = betas * np.sqrt(abar_prev) / (1 - abar), (1 - abar_prev) * np.sqrt(alphas) / (1 - abar)
    total = np.zeros(x0.shape[0])
    C = x0.shape[1]
    for t in range(T):
        xt = np.sqrt(abar[t]) * x0 + np.sqrt(1 - abar[t]) * noises[t]
        pred, v = outs[t][:, :C], outs[t][:, C:]
        if objective == "eps":
            x0_hat = (xt - np.sqrt(1 - abar[t]) * pred) / np.sqrt(abar[t])
        elif objective == "v":
            x0_hat = np.sqrt(abar[t]) * xt - np.sqrt(1 - abar[t]) * pred
        else:
            x0_hat = pred
        if clip:
            x0_hat = np.clip(x0_hat, -1, 1)
        mean = c1[t] * x0_hat + c2[t] * xt
        if var_type == "fixedsmall":
            logvar = np.full_like(xt, post_logvar[t])
        elif var_type == "fixedlarge":
            logvar = np.full_like(xt, np.log(post_var[1]) if t == 0 else np.log(betas[t]))
        else:
            frac = (v + 1) / 2
            logvar = frac * np.log(betas[t]) + (1 - frac) * post_logvar[t]
        if t == 0:
            s = np.exp(0.5 * logvar)
            lp = np.vectorize(_bin_log_prob)(x0, mean, s)
            term = -lp
        else:
            true_mean = c1[t] * x0 + c2[t] * xt
            tv, mv = np.exp(post_logvar[t]), np.exp(logvar)
            term = 0.5 * (np.log(mv / tv) + (tv + (true_mean - mean) ** 2) / mv - 1)
        total += term.reshape(len(x0), -1).mean(axis=1) / np.log(2)
    prior_var = 1 - abar[-1]
    prior = 0.5 * (-np.log(prior_var) + prior_var + abar[-1] * x0**2 - 1)
    return total + prior.reshape(len(x0), -1).mean(axis=1) / np.log(2)


@pytest.mark.parametrize(
    "objective,var_type,clip",
    [("eps", "fixedlarge", True), ("eps", "fixedsmall", False), ("eps", "learned_range", False),
     ("v", "learned_range", True), ("x0", "fixedlarge", False)],
)  # fmt: skip
def test_the_bound_of_a_small_network_equals_a_slow_numpy_loop(objective, var_type, clip):
    T, B, C = 12, 3, 2
    schedule = make_schedule("linear", T, beta_start=1e-3, beta_end=0.2)
    vb = VariationalBound(diffusion=GaussianDiffusion(schedule=schedule, objective=objective), schedule=schedule,
                          var_type=var_type, clip_x0=clip)  # fmt: skip
    net = Toy(C)
    rng = np.random.default_rng(2)
    x0 = (rng.integers(0, 256, size=(B, C, 4, 4)) / 127.5 - 1.0).astype(np.float32)
    noises = rng.normal(size=(T, B, C, 4, 4)).astype(np.float32)
    got = vb.prior_bits(f32(x0)).asnumpy().astype(np.float64)
    outs = []
    for t in range(T):
        tt = Tensor(np.full(B, t, np.int32))
        xt = vb.diffusion.q_sample(f32(x0), tt, f32(noises[t]))
        out = net(xt, tt)
        outs.append(out.asnumpy().astype(np.float64))
        pred, var = out[:, :C], out[:, C:]
        got += vb.terms(f32(x0), xt, tt, pred, var if var_type == "learned_range" else None).asnumpy()
    expect = _numpy_bound(schedule.betas, x0.astype(np.float64), noises.astype(np.float64), outs,
                          objective=objective, var_type=var_type, clip=clip)  # fmt: skip
    np.testing.assert_allclose(got, expect, rtol=2e-4)
    assert np.all(got > 0)


# ---------------------------------------------------------------- respacing (the ancestral sampler's K < T steps)
def _sections(T: int, counts: list[int]) -> set[int]:
    """improved-diffusion's section spacing, rewritten: T split into len(counts) near-equal sections, each visited
    at counts[i] points with a fractional stride that lands on both of its ends."""
    size, extra = divmod(T, len(counts))
    kept, start = set(), 0
    for i, n in enumerate(counts):
        length = size + (1 if i < extra else 0)
        stride = (length - 1) / (n - 1) if n > 1 else 1
        kept |= {start + round(stride * k) for k in range(n)}
        start += length
    return kept


@pytest.mark.parametrize("spacing", [[10], [25], [100], [10, 15, 20], [50, 10, 10, 30]])
def test_respaced_schedule_equals_the_improved_ddpm_construction(spacing):
    from ddpm_dist.diffusion.schedule import respace

    base = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    use = _sections(1000, spacing)
    assert len(use) == sum(spacing)
    betas, last = [], 1.0  # walk the full schedule; a kept step's beta spans everything since the last kept one
    for t, abar in enumerate(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))):
        if t in use:
            betas.append(1 - abar / last)
            last = abar
    r = respace(base, np.array(sorted(use)))
    np.testing.assert_allclose(r.betas, betas, rtol=1e-12)
    assert list(r.timestep_map) == sorted(use)
    # the learned-range ends of the respaced schedule: log beta'_i and the clipped log beta-tilde'_i
    abar = np.cumprod(1 - np.array(betas))
    tilde = np.array(betas) * (1 - np.append(1.0, abar[:-1])) / (1 - abar)
    np.testing.assert_allclose(r.posterior_log_variance_clipped, np.log(np.append(tilde[1], tilde[1:])), rtol=1e-12)
