"""diffusion.loss_weight=min_snr (Hang et al. 2023) against closed forms written independently of the code."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from oracles import make_loss
from train_helpers import TINY, run_train

from ddpm_dist.config import load_config
from ddpm_dist.diffusion import build_diffusion
from ddpm_dist.diffusion.gaussian import min_snr_weights
from ddpm_dist.diffusion.schedule import make_schedule

T_VALUES = np.array([0, 3, 10, 25, 50, 99], np.int32)


@pytest.fixture(autouse=True)
def _graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)  # no set_device: another module's test may have started the runtime already
    yield


def _abar(T: int) -> np.ndarray:
    betas = np.linspace(1e-3, 0.05, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_equal_the_closed_forms(gamma):
    abar = _abar(100)
    for t in T_VALUES:
        snr = abar[t] / (1.0 - abar[t])
        expect = {"x0": min(snr, gamma), "eps": min(snr / gamma, 1.0) * gamma / snr, "v": min(snr, gamma) / (snr + 1)}
        for objective, w in expect.items():
            got = min_snr_weights(abar, objective=objective, gamma=gamma)[t]
            assert got == pytest.approx(w, rel=1e-12), (objective, t)
    snr = abar[T_VALUES] / (1 - abar[T_VALUES])
    assert (snr > 5.0).any() and (snr < 1.0).any()  # both sides of the min are exercised
    eps = min_snr_weights(abar, objective="eps", gamma=5.0)
    assert np.all(eps <= 1.0) and eps[-1] == pytest.approx(1.0)  # low SNR: the plain eps loss


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_weighted_loss_is_min_snr_times_the_x0_error_for_every_objective(objective):
    """The defining property: whatever the network predicts, the weighted loss is min(SNR, gamma) |x0 - x0_hat|^2."""
    gamma, T = 5.0, 100
    rng = np.random.default_rng(7)
    b = len(T_VALUES)
    x0 = np.tanh(rng.standard_normal((b, 2, 4, 4))).astype(np.float32)
    noise = rng.standard_normal((b, 2, 4, 4)).astype(np.float32)
    out = rng.standard_normal((b, 2, 4, 4)).astype(np.float32)  # an arbitrary network output
    schedule = make_schedule("linear", T, beta_start=1e-3, beta_end=0.05)
    d = make_loss(schedule, objective=objective, loss_type="mse", loss_weight="min_snr", min_snr_gamma=gamma)
    model = lambda xt, t: Tensor(out) + xt * 0  # noqa: E731
    got = d.training_losses(model, Tensor(x0), Tensor(T_VALUES), Tensor(noise)).asnumpy()

    abar = _abar(T)[T_VALUES].reshape(-1, 1, 1, 1)
    xt = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise  # Ho et al. eq. 4
    x0_hat = {
        "eps": (xt - np.sqrt(1 - abar) * out) / np.sqrt(abar),
        "v": np.sqrt(abar) * xt - np.sqrt(1 - abar) * out,  # Salimans & Ho 2022
        "x0": out,
    }[objective]
    snr = (abar / (1 - abar)).reshape(-1)
    expect = np.minimum(snr, gamma) * ((x0 - x0_hat) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(got, expect, rtol=2e-4)
    plain = make_loss(schedule, objective=objective, loss_type="mse")
    unweighted = plain.training_losses(model, Tensor(x0), Tensor(T_VALUES), Tensor(noise)).asnumpy()
    assert not np.allclose(unweighted, got, rtol=1e-2)  # the weight is really applied


def test_config_builds_the_weighted_loss_and_rejects_l1():
    cfg = load_config(TINY, ["diffusion.loss_weight=min_snr", "diffusion.min_snr_gamma=2", "diffusion.objective=v"])
    d = build_diffusion(cfg)
    abar = make_schedule("linear", 100, beta_start=1e-4, beta_end=0.02).alphas_cumprod
    np.testing.assert_allclose(d.loss_weights.asnumpy(), min_snr_weights(abar, objective="v", gamma=2.0), rtol=1e-6)
    assert load_config(TINY).diffusion.loss_weight == "none" and load_config(TINY).diffusion.min_snr_gamma == 5.0
    res = run_train("--config", TINY, "--dry-run", "diffusion.loss_weight=min_snr", "diffusion.loss_type=l1")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "diffusion.loss_weight: min_snr needs diffusion.loss_type=mse" in res.stderr
    bad = run_train("--config", TINY, "--dry-run", "diffusion.min_snr_gamma=0")
    assert bad.returncode == 2 and "diffusion.min_snr_gamma: must be > 0" in bad.stderr
