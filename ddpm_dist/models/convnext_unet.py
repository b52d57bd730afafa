"""The U-Net of the MindSpore "Diffusion 扩散模型" tutorial (after the Hugging Face "Annotated Diffusion Model").

Sinusoidal time embedding -> MLP (ch -> 4ch, GELU, 4ch -> 4ch); a 7x7 input conv to ``init_dim = ch * 2 // 3``
channels; per level two ConvNeXt blocks (Liu et al. 2022) and pre-norm linear attention (Shen et al. 2021) in a
residual, then a 4x4 stride-2 conv down; full attention between two ConvNeXt blocks in the middle; on the way up the
matching skip is concatenated, and a 4x4 stride-2 transposed conv goes up; a final ConvNeXt block and a 1x1 conv.
Level widths: ``[init_dim] + [ch * m for m in ch_mult]``. As in the original, the full-resolution skip is not used
and there are ``len(ch_mult) - 1`` levels up.

Weights use MindSpore's default initialisation (PyTorch-like He-uniform), as the tutorial does.
"""

from __future__ import annotations

from collections.abc import Sequence

from mindspore import Tensor, nn, ops

from ddpm_dist.models.layers import ClassEmbedding, GroupNorm32, SinusoidalEmbedding, Softmax32, recompute_cells


def _conv(in_ch: int, out_ch: int, kernel_size: int, *, stride: int = 1, padding: int = 0, group: int = 1):
    return nn.Conv2d(
        in_ch, out_ch, kernel_size, stride=stride, pad_mode="pad", padding=padding, group=group, has_bias=True
    )


def _layer_norm(channels: int) -> GroupNorm32:
    """GroupNorm with one group: LayerNorm over (C, H, W) with a per-channel affine."""
    return GroupNorm32(num_groups=1, num_channels=channels)


class ConvNextBlock(nn.Cell):
    """x: [B, in_ch, H, W], temb: [B, temb_ch] -> [B, out_ch, H, W].

    depthwise conv7x7 (+ Dense(GELU(temb)) per channel) -> GroupNorm(1) -> conv3x3 to out_ch * mult -> GELU ->
    GroupNorm(1) -> conv3x3 to out_ch, plus the input through a 1x1 conv when the channel count changes.
    """

    def __init__(self, *, in_ch: int, out_ch: int, temb_ch: int, mult: int = 2, norm: bool = True) -> None:
        super().__init__()
        self.mlp = nn.SequentialCell(nn.GELU(approximate=False), nn.Dense(temb_ch, in_ch))
        self.ds_conv = _conv(in_ch, in_ch, 7, padding=3, group=in_ch)
        self.net = nn.SequentialCell(
            _layer_norm(in_ch) if norm else nn.Identity(),
            _conv(in_ch, out_ch * mult, 3, padding=1),
            nn.GELU(approximate=False),
            _layer_norm(out_ch * mult),
            _conv(out_ch * mult, out_ch, 3, padding=1),
        )
        self.res_conv = _conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def construct(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.ds_conv(x)
        h = h + ops.expand_dims(ops.expand_dims(self.mlp(temb), -1), -1)
        return self.net(h) + self.res_conv(x)


class _HeadsQKV(nn.Cell):
    """1x1 conv to q, k, v, each reshaped to [B * heads, dim_head, H * W]."""

    def __init__(self, *, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.to_qkv = nn.Conv2d(channels, heads * dim_head * 3, 1, has_bias=False)

    def construct(self, x: Tensor):
        b, _, hh, ww = x.shape
        qkv = ops.reshape(self.to_qkv(x), (b, 3, self.heads * self.dim_head, hh * ww))
        shape = (b * self.heads, self.dim_head, hh * ww)
        return ops.reshape(qkv[:, 0], shape), ops.reshape(qkv[:, 1], shape), ops.reshape(qkv[:, 2], shape)


class Attention(nn.Cell):
    """Multi-head softmax self-attention (4 heads of 32). x: [B, C, H, W] -> [B, C, H, W] (no residual here)."""

    def __init__(self, *, channels: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.qkv = _HeadsQKV(channels=channels, heads=heads, dim_head=dim_head)
        self.scale = dim_head**-0.5
        self.softmax = Softmax32(axis=-1)
        self.to_out = nn.Conv2d(heads * dim_head, channels, 1, has_bias=True)
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)  # [b, d, n]^T @ [b, d, m] -> [b, n, m]
        self.bmm_v = ops.BatchMatMul(transpose_b=True)  # [b, d, m] @ [b, n, m]^T -> [b, d, n]

    def construct(self, x: Tensor) -> Tensor:
        b, _, hh, ww = x.shape
        q, k, v = self.qkv(x)
        attn = self.softmax(self.bmm_qk(q * self.scale, k))
        out = ops.reshape(self.bmm_v(v, attn), (b, -1, hh, ww))
        return self.to_out(out)


class LinearAttention(nn.Cell):
    """Linear attention (softmax of q over features, of k over positions), 4 heads of 32, then 1x1 conv and
    GroupNorm(1). x: [B, C, H, W] -> [B, C, H, W] (no residual here)."""

    def __init__(self, *, channels: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        self.qkv = _HeadsQKV(channels=channels, heads=heads, dim_head=dim_head)
        self.scale = dim_head**-0.5
        self.softmax_features = Softmax32(axis=-2)
        self.softmax_positions = Softmax32(axis=-1)
        self.to_out = nn.SequentialCell(nn.Conv2d(heads * dim_head, channels, 1, has_bias=True), _layer_norm(channels))
        self.bmm_kv = ops.BatchMatMul(transpose_b=True)  # [b, d, n] @ [b, e, n]^T -> context [b, d, e]
        self.bmm_cq = ops.BatchMatMul(transpose_a=True)  # [b, d, e]^T @ [b, d, n] -> [b, e, n]

    def construct(self, x: Tensor) -> Tensor:
        b, _, hh, ww = x.shape
        q, k, v = self.qkv(x)
        q = self.softmax_features(q) * self.scale
        k = self.softmax_positions(k)
        out = self.bmm_cq(self.bmm_kv(k, v), q)
        return self.to_out(ops.reshape(out, (b, -1, hh, ww)))


class PreNormResidual(nn.Cell):
    """x + fn(GroupNorm(1)(x)). x: [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, *, channels: int, fn: nn.Cell) -> None:
        super().__init__()
        self.norm = _layer_norm(channels)
        self.fn = fn

    def construct(self, x: Tensor) -> Tensor:
        return x + self.fn(self.norm(x))


class _DownLevel(nn.Cell):
    """Two ConvNeXt blocks, linear attention, then downsampling (4x4 stride-2 conv, or none at the last level).
    Returns (skip [B, out_ch, H, W], next [B, out_ch, H', W'])."""

    def __init__(self, *, in_ch: int, out_ch: int, temb_ch: int, mult: int, last: bool) -> None:
        super().__init__()
        self.block1 = ConvNextBlock(in_ch=in_ch, out_ch=out_ch, temb_ch=temb_ch, mult=mult)
        self.block2 = ConvNextBlock(in_ch=out_ch, out_ch=out_ch, temb_ch=temb_ch, mult=mult)
        self.attn = PreNormResidual(channels=out_ch, fn=LinearAttention(channels=out_ch))
        self.down = nn.Identity() if last else _conv(out_ch, out_ch, 4, stride=2, padding=1)

    def construct(self, x: Tensor, temb: Tensor):
        x = self.attn(self.block2(self.block1(x, temb), temb))
        return x, self.down(x)


class _UpLevel(nn.Cell):
    """Concatenate the skip, two ConvNeXt blocks, linear attention, 4x4 stride-2 transposed conv up.
    x: [B, in_ch, H, W], skip: [B, in_ch, H, W] -> [B, out_ch, 2H, 2W]."""

    def __init__(self, *, in_ch: int, out_ch: int, temb_ch: int, mult: int) -> None:
        super().__init__()
        self.block1 = ConvNextBlock(in_ch=in_ch * 2, out_ch=out_ch, temb_ch=temb_ch, mult=mult)
        self.block2 = ConvNextBlock(in_ch=out_ch, out_ch=out_ch, temb_ch=temb_ch, mult=mult)
        self.attn = PreNormResidual(channels=out_ch, fn=LinearAttention(channels=out_ch))
        self.up = nn.Conv2dTranspose(out_ch, out_ch, 4, stride=2, pad_mode="pad", padding=1, has_bias=True)

    def construct(self, x: Tensor, skip: Tensor, temb: Tensor) -> Tensor:
        x = self.block1(ops.cat((x, skip), axis=1), temb)
        return self.up(self.attn(self.block2(x, temb)))


class ConvNextUNet(nn.Cell):
    """The tutorial U-Net. x: float32 [B, in_channels, H, W], t: int32 [B] in [0, T) -> float32 [B, out_channels, H,
    W]; H = W = ``image_size`` divisible by 2 ** (len(ch_mult) - 1). ``recompute``: every ConvNeXt block and
    attention residual recomputes its activations in the backward pass (same parameters, same results).
    ``num_classes`` K > 0: class-conditional, ``net(x, t, y)``, y int32 [B] in [0, K] (K: "no label"), as DDPMUNet."""

    def __init__(self, *, image_size: int, in_channels: int, out_channels: int, ch: int, ch_mult: Sequence[int],
                 convnext_mult: int, recompute: bool = False, num_classes: int = 0) -> None:  # fmt: skip
        super().__init__()
        if image_size % (2 ** (len(ch_mult) - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2 ** (len(ch_mult) - 1)")
        init_dim = ch * 2 // 3
        dims = [init_dim] + [ch * m for m in ch_mult]
        in_out = [(dims[i], dims[i + 1]) for i in range(len(dims) - 1)]  # (in, out) widths per level
        temb_ch = 4 * ch

        self.init_conv = _conv(in_channels, init_dim, 7, padding=3)
        self.time_mlp = nn.SequentialCell(
            SinusoidalEmbedding(dim=ch), nn.Dense(ch, temb_ch), nn.GELU(approximate=False), nn.Dense(temb_ch, temb_ch)
        )
        self.downs = nn.CellList(
            [
                _DownLevel(in_ch=i, out_ch=o, temb_ch=temb_ch, mult=convnext_mult, last=n == len(in_out) - 1)
                for n, (i, o) in enumerate(in_out)
            ]
        )
        mid = dims[-1]
        self.mid_block1 = ConvNextBlock(in_ch=mid, out_ch=mid, temb_ch=temb_ch, mult=convnext_mult)
        self.mid_attn = PreNormResidual(channels=mid, fn=Attention(channels=mid))
        self.mid_block2 = ConvNextBlock(in_ch=mid, out_ch=mid, temb_ch=temb_ch, mult=convnext_mult)
        self.ups = nn.CellList(
            [_UpLevel(in_ch=o, out_ch=i, temb_ch=temb_ch, mult=convnext_mult) for i, o in reversed(in_out[1:])]
        )
        self.final_block = ConvNextBlock(in_ch=dims[1], out_ch=dims[1], temb_ch=temb_ch, mult=convnext_mult)
        self.final_conv = _conv(dims[1], out_channels, 1)
        self.num_classes = num_classes
        if num_classes:  # built last: the other weights draw the same initial values as the unconditional net's
            self.class_embed = ClassEmbedding(num_classes=num_classes, dim=temb_ch)
        if recompute:
            recompute_cells(self, (ConvNextBlock, PreNormResidual))

    def construct(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        temb = self.time_mlp(t)
        if self.num_classes:
            temb = temb + self.class_embed(y)
        h = self.init_conv(x)
        skips = []
        for level in self.downs:
            skip, h = level(h, temb)
            skips.append(skip)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)
        # Skips are consumed from the top by index (list.pop does not compile in GRAPH_MODE); skips[0] is unused.
        i = len(skips) - 1
        for level in self.ups:
            h = level(h, skips[i], temb)
            i -= 1
        return self.final_conv(self.final_block(h, temb))
