"""Denoising networks: ``net(x, t)`` with x float32 [B, C, H, W], t int32 [B] in [0, T) -> float32 [B, C, H, W]
(``net(x, t, y)`` with labels y int32 [B] if class-conditional: :func:`build_model`)
([B, 2C, H, W] with learned variances: :func:`output_channels`).

:func:`build_model` is the only code here that reads the config. :func:`fp32_cells` lists the Cell types that must
stay in float32 under float16 mixed precision; the amp code should black-list them, e.g.::

    net = ms.amp.custom_mixed_precision(net, black_list=ms.amp.get_black_list() + fp32_cells(), dtype=ms.float16)

Plain ``auto_mixed_precision(net, "O2")`` black-lists none of them: in GRAPH_MODE they still compute in float32
(their explicit casts are kept) but read GroupNorm's parameters through float16 casts; in PyNative mode they run in
float16 (a float16 Cell casts the inputs of every op in it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mindspore import nn

from ddpm_dist.models.convnext_unet import ConvNextUNet
from ddpm_dist.models.layers import GroupNorm32, SinusoidalEmbedding, Softmax32
from ddpm_dist.models.unet import DDPMUNet

if TYPE_CHECKING:
    from ddpm_dist.config import Config

__all__ = ["ConvNextUNet", "DDPMUNet", "build_model", "fp32_cells", "count_params", "output_channels"]


def build_model(cfg: Config) -> nn.Cell:
    """The network named by ``cfg.model.arch`` for ``cfg.data.channels`` x ``cfg.data.image_size``^2 images.

    ``ddpm_unet`` reads model.ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resamp_with_conv, norm_groups,
    norm_eps;
    ``convnext_unet`` reads model.ch, ch_mult, convnext_mult; both read model.recompute (activation recomputation) and
    model.num_classes (class-conditional: ``net(x, t, y)``, y in [0, K], K meaning "no label").
    """
    m, d = cfg.model, cfg.data
    out_channels = output_channels(cfg)
    shared = dict(image_size=d.image_size, in_channels=d.channels, out_channels=out_channels, ch=m.ch,
                  ch_mult=tuple(m.ch_mult), recompute=m.recompute, num_classes=m.num_classes)  # fmt: skip
    if m.arch == "ddpm_unet":
        return DDPMUNet(
            **shared,
            num_res_blocks=m.num_res_blocks,
            attn_resolutions=tuple(m.attn_resolutions),
            dropout=m.dropout,
            resamp_with_conv=m.resamp_with_conv,
            norm_groups=m.norm_groups,
            norm_eps=m.norm_eps,
        )
    if m.arch == "convnext_unet":
        return ConvNextUNet(**shared, convnext_mult=m.convnext_mult)
    raise ValueError(f"model.arch: unknown architecture {m.arch!r} (choose ddpm_unet or convnext_unet)")


def output_channels(cfg: Config) -> int:
    """C for a network that predicts eps / x0 / v; 2C with ``diffusion.var_type=learned_range`` (the second half is
    the variance output v in [-1, 1], Nichol & Dhariwal 2021 eq. 15)."""
    return cfg.data.channels * (2 if cfg.diffusion.var_type == "learned_range" else 1)


def fp32_cells() -> list[type]:
    """Cell types that must run in float32 under float16 mixed precision (add them to the amp black list)."""
    return [GroupNorm32, SinusoidalEmbedding, Softmax32]


def count_params(net: nn.Cell) -> int:
    """Number of trainable scalars."""
    return sum(int(p.size) for p in net.trainable_params())
