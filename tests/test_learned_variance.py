"""Learned variances (``diffusion.var_type=learned_range``): the hybrid loss and its stop-gradient, the respaced
ancestral sampler with the network's variances, DDIM / DPM-Solver++ on the mean part, and a short training run."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops
from train_helpers import TINY, final_state, prepare_digits, run_train, scalars

from ddpm_dist.config import ConfigError, load_config
from ddpm_dist.diffusion import build_diffusion
from ddpm_dist.diffusion.gaussian import DiffusionLoss, GaussianDiffusion
from ddpm_dist.diffusion.likelihood import VariationalBound
from ddpm_dist.diffusion.sampling import build_sampler
from ddpm_dist.diffusion.schedule import make_schedule, respace, space_timesteps
from ddpm_dist.models import build_model, output_channels

pytestmark = pytest.mark.usefixtures("cpu_graph")


class TwoHeads(nn.Cell):
    """pred = a * x_t + b t / T, var = tanh(c * x_t - d): separate parameters for the prediction and the variance."""

    def __init__(self, T: int):
        super().__init__()
        self.T = float(T)
        self.a, self.b = Parameter(Tensor(0.7, ms.float32), "a"), Parameter(Tensor(0.2, ms.float32), "b")
        self.c, self.d = Parameter(Tensor(0.5, ms.float32), "c"), Parameter(Tensor(0.1, ms.float32), "d")

    def construct(self, x, t):
        tt = t.astype(ms.float32).reshape(-1, 1, 1, 1) / self.T
        return ops.concat((self.a * x + self.b * tt, ops.tanh(self.c * x - self.d)), axis=1)


class PredictionOnly(nn.Cell):
    """The first C channels of a two-headed network: what L_simple alone sees."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, t):
        return self.net(x, t)[:, : x.shape[1]]


def _losses(T=50, weight=0.001):
    schedule = make_schedule("linear", T, beta_start=1e-3, beta_end=0.05)
    diffusion = GaussianDiffusion(schedule=schedule, objective="eps")
    bound = VariationalBound(diffusion=diffusion, schedule=schedule, var_type="learned_range", clip_x0=False)
    common = dict(diffusion=diffusion, schedule=schedule, loss_type="mse", loss_weight="none", min_snr_gamma=5.0)
    return DiffusionLoss(**common, bound=bound, vlb_weight=weight), DiffusionLoss(**common), bound


def _batch(T, B=4, C=2, seed=0):
    rng = np.random.default_rng(seed)
    x0 = Tensor((rng.integers(0, 256, (B, C, 4, 4)) / 127.5 - 1).astype(np.float32))
    t = Tensor(np.array([0, 1, T // 2, T - 1][:B], np.int32))
    return x0, t, Tensor(rng.normal(size=(B, C, 4, 4)).astype(np.float32))


def test_the_hybrid_loss_is_l_simple_plus_lambda_t_times_the_term():
    T = 50
    hybrid, _, bound = _losses(T)
    net = TwoHeads(T)
    x0, t, noise = _batch(T)
    got = hybrid.training_losses(net, x0, t, noise).asnumpy()
    xt = hybrid.diffusion.q_sample(x0, t, noise)
    out = net(xt, t)
    pred, var = out[:, :2], out[:, 2:]
    simple = ((noise - pred) ** 2).mean(axis=(1, 2, 3)).asnumpy()
    term = bound.terms(x0, xt, t, pred, var).asnumpy()
    np.testing.assert_allclose(got, simple + 0.001 * T * term, rtol=1e-6)
    assert np.all(term > 0) and np.all(0.001 * T * term > 1e-4 * simple)  # the term is there, not negligible


def test_the_vlb_term_trains_only_the_variance():
    """Gradients of the hybrid loss: the prediction's parameters get exactly L_simple's gradient (the stop-gradient
    on the mean inside L_vlb); the variance's parameters get a non-zero one from L_vlb alone."""
    T = 50
    hybrid, simple, _ = _losses(T, weight=0.5)  # a large lambda: a leak into the mean would show
    net = TwoHeads(T)
    x0, t, noise = _batch(T)
    pred_only = PredictionOnly(net)  # built first: it renames the parameters (net.a, ...)
    params = net.trainable_params()
    names = [p.name.split(".")[-1] for p in params]

    def grads(loss_cell):
        def mean_loss(a, b, c):
            model = net if loss_cell.hybrid else pred_only
            return loss_cell.training_losses(model, a, b, c).mean()

        fn = ms.value_and_grad(mean_loss, None, params)
        return {n: g.asnumpy() for n, g in zip(names, fn(x0, t, noise)[1], strict=True)}

    g_hybrid, g_simple = grads(hybrid), grads(simple)
    for name in ("a", "b"):
        assert g_hybrid[name] == g_simple[name], name
    for name in ("c", "d"):
        assert g_simple[name] == 0 and abs(g_hybrid[name]) > 1e-3, name


def test_config_builds_a_2c_network_and_the_hybrid_loss():
    cfg = load_config(TINY, ["data.path=unused", "diffusion.var_type=learned_range"])
    assert output_channels(cfg) == 2 * cfg.data.channels
    net = build_model(cfg)
    x = Tensor(np.zeros((1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size), np.float32))
    assert net(x, Tensor(np.array([3], np.int32))).shape[1] == 2 * cfg.data.channels
    assert build_diffusion(cfg).hybrid and build_diffusion(load_config(TINY, ["data.path=unused"])).hybrid is False
    with pytest.raises(ConfigError, match="diffusion.vlb_weight"):
        load_config(TINY, ["data.path=unused", "diffusion.var_type=learned_range", "diffusion.vlb_weight=0"])


class Fixed(nn.Cell):
    def __init__(self, value):
        super().__init__()
        self.value = Tensor(value)

    def construct(self, x, t):
        return self.value


def test_the_respaced_ancestral_step_uses_the_networks_variance():
    """x_prev = mu-tilde'(x_t, x0_hat) + exp(log sigma^2 / 2) z on the respaced schedule, log sigma^2 interpolated
    between its beta'_i and beta-tilde'_i by the network's v (numpy, from the respaced betas alone)."""
    base = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    use = space_timesteps(1000, 25)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
    eps, v = rng.normal(size=(2, 2, 1, 4, 4)).astype(np.float32) * [[[[[0.5]]]], [[[[0.9]]]]]
    v = np.tanh(v).astype(np.float32)
    z = rng.normal(size=x.shape).astype(np.float32)
    step = build_sampler(Fixed(np.concatenate([eps, v], 1)), base, sampler="ddpm", steps=25, objective="eps",
                         clip_x0=False, var_type="learned_range")  # fmt: skip
    betas = 1 - base.alphas_cumprod[use] / np.append(1.0, base.alphas_cumprod[use][:-1])
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    for i in (24, 12, 1, 0):
        x0 = (x - np.sqrt(1 - abar[i]) * eps) / np.sqrt(abar[i])
        mean = (betas[i] * np.sqrt(abar_prev[i]) * x0 + (1 - abar_prev[i]) * np.sqrt(1 - betas[i]) * x) / (1 - abar[i])
        frac = (v + 1) / 2
        log_var = frac * np.log(betas[i]) + (1 - frac) * np.log(tilde[max(i, 1)])
        expect = mean + (i > 0) * np.exp(0.5 * log_var) * z
        got = step(Tensor(x), Tensor(i, ms.int32), Tensor(z)).asnumpy()
        np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5, err_msg=str(i))
    assert respace(base, use).num_timesteps == 25


@pytest.mark.parametrize("sampler", ["ddim", "dpm++2m"])
def test_ddim_and_dpm_solver_use_the_mean_part_of_a_learned_network(sampler):
    base = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    rng = np.random.default_rng(4)
    x, eps, v = rng.normal(size=(3, 2, 1, 4, 4)).astype(np.float32)
    common = dict(sampler=sampler, steps=10, objective="eps", clip_x0=True)
    learned = build_sampler(Fixed(np.concatenate([eps, v], 1)), base, var_type="learned_range", **common)
    plain = build_sampler(Fixed(eps), base, var_type="fixedlarge", **common)
    args = (Tensor(x), Tensor(np.zeros_like(x)), Tensor(5, ms.int32))
    if sampler == "ddim":
        args = (Tensor(x), Tensor(5, ms.int32), Tensor(np.zeros_like(x)))
    a, b = learned(*args), plain(*args)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    assert np.array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.slow
def test_a_learned_variance_run_trains_samples_and_resumes(tmp_path_factory):
    """The tiny config with learned_range: the loss is finite, the ancestral training grid is drawn, and a resumed run
    ends where an uninterrupted one does (bitwise)."""
    data = prepare_digits(tmp_path_factory.mktemp("data") / "digits8")
    tmp = tmp_path_factory.mktemp("learned")
    common = ["--config", TINY, f"data.path={data}", "diffusion.var_type=learned_range", "model.dropout=0",
              "run.sample_every=4", "run.sample_steps=0", "run.log_every=2", "train.ckpt_every=4"]  # fmt: skip
    straight = run_train(*common, "train.total_steps=8", f"run.out_dir={tmp / 'a'}")
    assert straight.returncode == 0, straight.stderr
    loss = scalars(tmp / "a")["train/loss"]
    assert len(loss) >= 3 and all(np.isfinite(v) for _, v in loss)
    assert list((tmp / "a").rglob("*.png")), "no sample grid"
    first = run_train(*common, "train.total_steps=4", f"run.out_dir={tmp / 'b'}")
    assert first.returncode == 0, first.stderr
    resumed = run_train(*common, "train.total_steps=8", f"run.out_dir={tmp / 'b'}")
    assert resumed.returncode == 0 and "at step 4" in resumed.stdout, resumed.stderr
    a, b = final_state(tmp / "a"), final_state(tmp / "b")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
