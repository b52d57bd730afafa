"""The DDPM U-Net of Ho et al. 2020 (appendix B; the reference ``diffusion_tf/models/unet.py``), the CIFAR-10 model.

A PixelCNN++-style U-Net: ``num_res_blocks`` ResBlocks per resolution on the way down, ``num_res_blocks + 1`` on the
way up (each fed the matching skip by concatenation), self-attention at ``attn_resolutions`` and in the middle, and a
sinusoidal timestep embedding fed to every ResBlock. With ch=128, ch_mult=(1, 2, 2, 2), 2 ResBlocks, attention at 16
and 32x32x3 images it has 35,746,307 parameters, as the reference.

Initialisation follows the reference: Xavier-uniform weights, zero biases, and zeros for the last conv of every
ResBlock, the attention output projection and the output conv, so that every block starts as the identity and the
network's initial output is exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from mindspore import Tensor, nn, ops

from ddpm_dist.models.layers import (
    ClassEmbedding,
    Downsample,
    SinusoidalEmbedding,
    Softmax32,
    Upsample,
    conv2d,
    dense,
    group_norm,
    recompute_cells,
)


class ResBlock(nn.Cell):
    """x: [B, in_ch, H, W], temb: [B, temb_ch] -> [B, out_ch, H, W].

    GroupNorm -> Swish -> conv3x3 -> + Dense(Swish(temb)) -> GroupNorm -> Swish -> Dropout -> conv3x3 (zero init),
    plus the input (through a 1x1 conv, or a 3x3 one if ``conv_shortcut``, when the channel count changes).
    """

    def __init__(
        self,
        *,
        in_ch: int,
        out_ch: int,
        temb_ch: int,
        dropout: float,
        conv_shortcut: bool = False,
        norm: Callable[[int], nn.Cell] = group_norm,
    ) -> None:
        super().__init__()
        self.act = nn.SiLU()
        self.norm1 = norm(in_ch)
        self.conv1 = conv2d(in_ch, out_ch, 3)
        self.temb_proj = dense(temb_ch, out_ch)
        self.norm2 = norm(out_ch)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = conv2d(out_ch, out_ch, 3, zero_init=True)
        if in_ch == out_ch:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = conv2d(in_ch, out_ch, 3 if conv_shortcut else 1)

    def construct(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + ops.expand_dims(ops.expand_dims(self.temb_proj(self.act(temb)), -1), -1)
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over the H*W positions, with a residual. x: [B, C, H, W] -> [B, C, H, W].

    q, k, v and the output projection are 1x1 convs (the reference's ``nin``); the output projection starts at zero.
    Logits are scaled by C^-1/2 and the softmax runs in float32. The scale multiplies q before Q^T K, not the product:
    under float16 (O2) the unscaled logits can overflow in the forward pass, where no loss scale helps; for C a power
    of 4 (the paper's 128 -> 256 channels at 16x16: 1/16) the scale is a power of two, so the float32 result is the
    same bits either way.
    """

    def __init__(self, *, channels: int, norm: Callable[[int], nn.Cell] = group_norm) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = conv2d(channels, channels, 1)
        self.k = conv2d(channels, channels, 1)
        self.v = conv2d(channels, channels, 1)
        self.proj_out = conv2d(channels, channels, 1, zero_init=True)
        self.scale = float(channels) ** -0.5
        self.softmax = Softmax32(axis=-1)
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)  # [B, C, N]^T @ [B, C, N] -> [B, N, N]
        self.bmm_vw = ops.BatchMatMul(transpose_b=True)  # [B, C, N] @ [B, N, N]^T -> [B, C, N]

    def construct(self, x: Tensor) -> Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = ops.reshape(self.q(h), (b, c, hh * ww))
        k = ops.reshape(self.k(h), (b, c, hh * ww))
        v = ops.reshape(self.v(h), (b, c, hh * ww))
        w = self.softmax(self.bmm_qk(q * self.scale, k))  # w[b, i, j]: query i attends to key j
        h = ops.reshape(self.bmm_vw(v, w), (b, c, hh, ww))
        return x + self.proj_out(h)


class ResAttnBlock(nn.Cell):
    """A ResBlock followed by self-attention if ``attn``. x: [B, in_ch, H, W], temb: [B, temb_ch] -> [B, out_ch, H,
    W]."""

    def __init__(
        self, *, in_ch: int, out_ch: int, temb_ch: int, dropout: float, attn: bool, norm: Callable[[int], nn.Cell]
    ) -> None:
        super().__init__()
        self.res = ResBlock(in_ch=in_ch, out_ch=out_ch, temb_ch=temb_ch, dropout=dropout, norm=norm)
        self.attn = AttnBlock(channels=out_ch, norm=norm) if attn else nn.Identity()

    def construct(self, x: Tensor, temb: Tensor) -> Tensor:
        return self.attn(self.res(x, temb))


class DDPMUNet(nn.Cell):
    """The DDPM U-Net. x: float32 [B, in_channels, H, W], t: int32 [B] in [0, T) -> float32 [B, out_channels, H, W].

    H = W = ``image_size``, divisible by 2 ** (len(ch_mult) - 1). Every GroupNorm has ``norm_groups`` groups where
    they divide its channels (else see :func:`~ddpm_dist.models.layers.norm_groups`) and epsilon ``norm_eps``. The
    output is whatever the diffusion objective trains it to be (eps, x0 or v); the network only knows that it takes t.
    ``recompute``: every ResBlock and AttnBlock recomputes its activations in the backward pass
    (:func:`~ddpm_dist.models.layers.recompute_cells`); same parameters, same results.
    """

    def __init__(
        self,
        *,
        image_size: int,
        in_channels: int,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        resamp_with_conv: bool,
        norm_groups: int,
        norm_eps: float,
        recompute: bool = False,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        norm = partial(group_norm, max_groups=norm_groups, eps=norm_eps)
        num_levels = len(ch_mult)
        if image_size % (2 ** (num_levels - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2 ** (len(ch_mult) - 1)")
        self.num_levels = num_levels
        self.num_res_blocks = num_res_blocks
        temb_ch = 4 * ch

        def block(in_ch: int, out_ch: int, res: int) -> ResAttnBlock:
            return ResAttnBlock(in_ch=in_ch, out_ch=out_ch, temb_ch=temb_ch, dropout=dropout,
                                attn=res in attn_resolutions, norm=norm)  # fmt: skip

        self.temb = nn.SequentialCell(
            SinusoidalEmbedding(dim=ch), dense(ch, temb_ch), nn.SiLU(), dense(temb_ch, temb_ch)
        )
        self.conv_in = conv2d(in_channels, ch, 3)
        skip_chs = self._build_down(block, ch=ch, ch_mult=ch_mult, image_size=image_size, with_conv=resamp_with_conv)
        cur_ch = skip_chs[-1]
        self.mid_block1 = ResBlock(in_ch=cur_ch, out_ch=cur_ch, temb_ch=temb_ch, dropout=dropout, norm=norm)
        self.mid_attn = AttnBlock(channels=cur_ch, norm=norm)
        self.mid_block2 = ResBlock(in_ch=cur_ch, out_ch=cur_ch, temb_ch=temb_ch, dropout=dropout, norm=norm)
        cur_ch = self._build_up(block, skip_chs, ch=ch, ch_mult=ch_mult, image_size=image_size,
                                with_conv=resamp_with_conv)  # fmt: skip
        self.norm_out = norm(cur_ch)
        self.act = nn.SiLU()
        self.conv_out = conv2d(cur_ch, out_channels, 3, zero_init=True)
        self.num_classes = num_classes
        if num_classes:  # built last: the other weights draw the same initial values as the unconditional net's
            self.class_embed = ClassEmbedding(num_classes=num_classes, dim=temb_ch)
        if recompute:
            recompute_cells(self, (ResBlock, AttnBlock))

    def _build_down(self, block, *, ch: int, ch_mult: Sequence[int], image_size: int, with_conv: bool) -> list[int]:
        """``down_blocks`` and ``downsamples``; returns the channels of every tensor pushed on the skip stack, in
        order (the last one is the channels entering the middle)."""
        down_blocks, downsamples = [], []
        skip_chs = [ch]
        cur_ch, res = ch, image_size
        for level, mult in enumerate(ch_mult):
            for _ in range(self.num_res_blocks):
                down_blocks.append(block(cur_ch, ch * mult, res))
                cur_ch = ch * mult
                skip_chs.append(cur_ch)
            if level != self.num_levels - 1:
                downsamples.append(Downsample(channels=cur_ch, with_conv=with_conv))
                skip_chs.append(cur_ch)
                res //= 2
        self.down_blocks = nn.CellList(down_blocks)
        self.downsamples = nn.CellList(downsamples)
        return skip_chs

    def _build_up(
        self, block, skip_chs: list[int], *, ch: int, ch_mult: Sequence[int], image_size: int, with_conv: bool
    ) -> int:
        """``up_blocks`` (levels in reverse order; up_blocks[i * (num_res_blocks + 1) + j] is block j of the i-th
        level up) and ``upsamples``, consuming ``skip_chs``; returns the output channels."""
        up_blocks, upsamples = [], []
        skip_chs = list(skip_chs)
        cur_ch, res = skip_chs[-1], image_size // 2 ** (self.num_levels - 1)
        for level in reversed(range(self.num_levels)):
            for _ in range(self.num_res_blocks + 1):
                up_blocks.append(block(cur_ch + skip_chs.pop(), ch * ch_mult[level], res))
                cur_ch = ch * ch_mult[level]
            if level != 0:
                upsamples.append(Upsample(channels=cur_ch, with_conv=with_conv))
                res *= 2
        assert not skip_chs and res == image_size
        self.up_blocks = nn.CellList(up_blocks)
        self.upsamples = nn.CellList(upsamples)
        return cur_ch

    def construct(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        temb = self.temb(t)
        if self.num_classes:
            temb = temb + self.class_embed(y)
        nrb = self.num_res_blocks
        h = self.conv_in(x)
        hs = [h]
        for level in range(self.num_levels):
            for j in range(nrb):
                h = self.down_blocks[level * nrb + j](h, temb)
                hs.append(h)
            if level != self.num_levels - 1:
                h = self.downsamples[level](h)
                hs.append(h)

        h = self.mid_block2(self.mid_attn(self.mid_block1(h, temb)), temb)

        # Consume the skip stack from the top by index (list.pop does not compile in GRAPH_MODE).
        skip = len(hs) - 1
        for level in range(self.num_levels):
            for j in range(nrb + 1):
                h = self.up_blocks[level * (nrb + 1) + j](ops.cat((h, hs[skip]), axis=1), temb)
                skip -= 1
            if level != self.num_levels - 1:
                h = self.upsamples[level](h)
        return self.conv_out(self.act(self.norm_out(h)))
