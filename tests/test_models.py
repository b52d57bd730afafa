"""The denoising networks: parameter count of the paper model, shapes, GRAPH_MODE == PyNative, dropout, t dependence,
float16 mixed precision. CPU, tiny nets (ch=32 or 16) except the parameter count, which never runs a forward."""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from ddpm_dist.config import load_config
from ddpm_dist.models import ConvNextUNet, DDPMUNet, build_model, count_params, fp32_cells
from ddpm_dist.models.layers import GroupNorm32, SinusoidalEmbedding, Softmax32, norm_groups
from ddpm_dist.models.unet import AttnBlock

ARCHS = ("ddpm_unet", "convnext_unet")


@pytest.fixture(autouse=True)
def _pynative(pynative):
    yield


def _cfg(*overrides: str):
    return load_config(None, ["data.path=unused", *overrides])


def _tiny(arch: str, size: int = 16, channels: int = 3, **model):
    """A tiny net of ``arch`` (ch=32, two levels, attention at size/2), seeded."""
    overrides = [
        f"model.arch={arch}",
        "model.ch=32",
        "model.ch_mult=[1,2]",
        f"model.attn_resolutions=[{size // 2}]",
        f"data.image_size={size}",
        f"data.channels={channels}",
    ] + [f"model.{k}={v}" for k, v in model.items()]
    ms.set_seed(0)
    return build_model(_cfg(*overrides))


def _perturb(net: nn.Cell, seed: int = 0, scale: float = 0.05) -> None:
    """Give the zero-initialised weights (last conv of each block, output conv) small random values."""
    rng = np.random.default_rng(seed)
    for p in net.trainable_params():
        if p.ndim > 1 and not np.any(p.asnumpy()):
            p.set_data(ms.Tensor(rng.normal(0.0, scale, p.shape).astype(np.float32)))


def _inputs(batch: int, channels: int, size: int, t=None, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = ms.Tensor(rng.standard_normal((batch, channels, size, size)).astype(np.float32))
    if t is None:
        t = rng.integers(0, 1000, batch)
    return x, ms.Tensor(np.asarray(t, dtype=np.int32))


def test_paper_unet_has_35_7m_params():
    net = build_model(_cfg())  # defaults: ch 128, ch_mult (1,2,2,2), 2 res blocks, attn at 16, 32x32x3
    assert isinstance(net, DDPMUNet)
    assert count_params(net) == 35_746_307
    # attention at 16x16: 2 blocks down, 3 up, plus the middle
    assert sum(isinstance(c, AttnBlock) for _, c in net.cells_and_names()) == 6
    # every GroupNorm of the paper widths (128, 256) has 32 groups
    assert {c.num_groups for _, c in net.cells_and_names() if isinstance(c, GroupNorm32)} == {32}


def test_norm_groups_falls_back_to_largest_power_of_two_divisor():
    assert [norm_groups(c) for c in (128, 256, 96, 48, 16, 8, 24, 12)] == [32, 32, 32, 16, 16, 8, 8, 4]


def test_ddpm_unet_output_starts_at_zero():
    """Reference init: the output conv and each block's last layer are zero, so the initial output is exactly 0."""
    net = _tiny("ddpm_unet")
    x, t = _inputs(2, 3, 16)
    assert not np.any(net(x, t).asnumpy())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("size", "channels"), [(32, 3), (64, 1)])
def test_output_shape(arch, size, channels):
    net = build_model(_cfg(f"model.arch={arch}", "model.ch=32", f"data.image_size={size}", f"data.channels={channels}"))
    net.set_train(False)
    x, t = _inputs(2, channels, size)
    y = net(x, t)
    assert y.shape == (2, channels, size, size)
    assert y.dtype == ms.float32
    assert np.isfinite(y.asnumpy()).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_config_builds_and_runs(arch, repo_root):
    """configs/tiny.yaml (ch 16, 8x8x1, attention at 4) is what smoke runs use."""
    cfg = load_config(str(repo_root / "configs" / "tiny.yaml"), [f"model.arch={arch}"])
    net = build_model(cfg)
    x, t = _inputs(3, cfg.data.channels, cfg.data.image_size)
    assert net(x, t).shape == (3, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_depends_on_t(arch):
    net = _tiny(arch)
    _perturb(net)
    net.set_train(False)
    x, _ = _inputs(2, 3, 16)
    t_a = ms.Tensor(np.array([3, 3], np.int32))
    t_b = ms.Tensor(np.array([700, 700], np.int32))
    y_a, y_a2, y_b = net(x, t_a).asnumpy(), net(x, t_a).asnumpy(), net(x, t_b).asnumpy()
    np.testing.assert_array_equal(y_a, y_a2)
    assert np.abs(y_a - y_b).mean() > 1e-3 * np.abs(y_a).mean()


def test_dropout_only_in_train_mode():
    net = _tiny("ddpm_unet", dropout=0.5)
    _perturb(net)
    x, t = _inputs(2, 3, 16)
    net.set_train(False)
    np.testing.assert_array_equal(net(x, t).asnumpy(), net(x, t).asnumpy())
    net.set_train(True)
    assert not np.allclose(net(x, t).asnumpy(), net(x, t).asnumpy())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_graph_mode_matches_pynative(arch):  # ~2 s each: compiles a tiny net
    net = _tiny(arch)
    _perturb(net)
    net.set_train(False)
    x, t = _inputs(2, 3, 16)
    eager = net(x, t).asnumpy()
    ms.set_context(mode=ms.GRAPH_MODE)
    graph = net(x, t).asnumpy()
    np.testing.assert_allclose(graph, eager, rtol=0, atol=1e-5)


def test_timestep_embedding_values():
    t = np.array([0, 1, 999], np.int32)
    emb = SinusoidalEmbedding(dim=16)(ms.Tensor(t)).asnumpy()
    freqs = np.exp(-math.log(10000.0) * np.arange(8) / 7)
    args = t[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], axis=1), atol=2e-4)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_fp32_cells_stay_float32_when_black_listed(mode):
    """A float16 net that black-lists fp32_cells(): t * f (t ~ 1000) stays exact (float16 would be off by ~0.26),
    softmax and GroupNorm return the input dtype, parameters stay float32."""
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    net = ms.amp.custom_mixed_precision(
        _EmbedNormSoftmax(), black_list=ms.amp.get_black_list() + fp32_cells(), dtype=ms.float16
    )
    t = np.array([0, 999, 517], np.int32)
    emb, normed, probs = (o.asnumpy() for o in net(ms.Tensor(t)))
    freqs = np.exp(-math.log(10000.0) * np.arange(16) / 15)
    args = t[:, None] * freqs[None, :]
    np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], axis=1), atol=2e-3)
    assert np.isfinite(normed).all() and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=5e-3)
    assert {p.dtype for p in net.trainable_params()} == {ms.float32}


class _EmbedNormSoftmax(nn.Cell):
    """t int32 [B] -> (embedding [B, 32], GroupNorm of a Dense of it [B, 8, 2, 2], softmax of it [B, 32])."""

    def __init__(self):
        super().__init__()
        self.embed = SinusoidalEmbedding(dim=32)
        self.dense = nn.Dense(32, 32)
        self.norm = GroupNorm32(num_groups=4, num_channels=8)
        self.softmax = Softmax32(axis=-1)

    def construct(self, t):
        emb = self.embed(t)
        h = self.dense(emb)
        return emb, self.norm(h.reshape((-1, 8, 2, 2))), self.softmax(h * 50.0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("how", ["O2", "black_list"])
def test_float16_forward(arch, how):
    net = _tiny(arch)
    _perturb(net)
    net.set_train(False)
    x, t = _inputs(2, 3, 16, t=[5, 900])
    ref = net(x, t).asnumpy()
    if how == "O2":
        amp_net = ms.amp.auto_mixed_precision(net, "O2")
    else:
        amp_net = ms.amp.custom_mixed_precision(
            net, black_list=ms.amp.get_black_list() + fp32_cells(), dtype=ms.float16
        )
    y = amp_net(x, t)
    assert y.dtype == ms.float32 and y.shape == ref.shape
    y = y.asnumpy()
    assert np.isfinite(y).all()
    err = np.abs(y - ref).max() / np.abs(ref).max()
    assert 0 < err < 2e-2  # float16 did run (not bit-equal), and stayed close
    norms = [c for _, c in net.cells_and_names() if isinstance(c, GroupNorm32)]
    assert norms and all(c.gamma.dtype == ms.float32 and c.beta.dtype == ms.float32 for c in norms)
    for cell_type in fp32_cells():
        assert any(isinstance(c, cell_type) for _, c in net.cells_and_names()), cell_type


def test_convnext_unet_widths():
    net = _tiny("convnext_unet")
    assert isinstance(net, ConvNextUNet)
    assert net.init_conv.out_channels == 32 * 2 // 3
    assert net.final_conv.in_channels == 32 and net.final_conv.out_channels == 3


def test_build_model_rejects_unknown_arch():
    cfg = _cfg()
    cfg.model.arch = "transformer"
    with pytest.raises(ValueError, match="model.arch"):
        build_model(cfg)
