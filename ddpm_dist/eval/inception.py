"""The Inception-v3 of FID, in MindSpore: the TensorFlow "2015-12-05" graph as pytorch-fid ports it.

This is not torchvision's ImageNet Inception-v3. The network FID numbers are quoted against (Heusel et al. 2017,
TTUR code; DDPM's FID 3.17 and IS 9.46) differs in four places, which :class:`FIDInceptionV3` reproduces:

- the average pools inside the Mixed_5*, Mixed_6b-e and Mixed_7b blocks ignore the zero padding
  (``count_include_pad=False``), and Mixed_7c's pool branch is a 3x3 *max* pool;
- the classifier has 1008 outputs (1000 ImageNet classes plus 8 unused ones);
- batch norm uses eps 1e-3;
- the input is resized to 299x299 with plain bilinear interpolation (half-pixel centres, no antialiasing) and mapped
  from [0, 1] to [-1, 1].

Inputs are float32 [N, 3, H, W] in [0, 1] (uint8 / 255); outputs are the 2048-d pool features ("pool3", what FID uses)
and the 1008 logits (what IS uses), both float32. Parameter names follow pytorch-fid's state dict with MindSpore's
batch-norm names (``gamma, beta, moving_mean, moving_variance``), so ``tools/convert_inception.py`` is a renaming.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from . import FEATURE_DIM, NUM_LOGITS

INPUT_SIZE = 299


def resize_matrix(size_in: int, size_out: int = INPUT_SIZE) -> np.ndarray:
    """float32 [size_out, size_in]: 1-D bilinear resampling with half-pixel centres and edge clamping.

    The rule of ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` (no antialias): output pixel
    o samples the input at ``(o + 0.5) * size_in / size_out - 0.5``, clamped below at 0. Resizing an image is
    ``A_h @ x @ A_w.T``.
    """
    scale = size_in / size_out
    src = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    out = np.zeros((size_out, size_in), np.float64)
    np.add.at(out, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(out, (np.arange(size_out), hi), frac)
    return out.astype(np.float32)


class BasicConv2d(nn.Cell):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU. ``padding`` is (pad_h, pad_w) as in PyTorch."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size, stride: int = 1, padding=(0, 0)):
        super().__init__()
        ph, pw = padding
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride=stride, pad_mode="pad", padding=(ph, ph, pw, pw), has_bias=False
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=1e-3)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class Pool3x3(nn.Cell):
    """3x3, stride 1, padding 1 pooling over an [N, C, H, W] map of fixed size (H, W).

    ``mode="avg"``: the mean over the window's pixels inside the image (padding not counted: each output is the
    zero-padded window sum divided by its own count). ``mode="max"``: padding never wins.
    """

    def __init__(self, size: tuple[int, int], mode: str):
        super().__init__()
        self.avg = mode == "avg"
        if self.avg:
            self.sum_pool = nn.AvgPool2d(kernel_size=3, stride=1, pad_mode="valid")
            h, w = size
            count = np.zeros((h + 2, w + 2), np.float32)
            count[1:-1, 1:-1] = 1.0
            windows = sum(count[i : i + h, j : j + w] for i in range(3) for j in range(3))
            self.rescale = Tensor((9.0 / windows)[None, None].astype(np.float32))
            self.pad = nn.Pad(((0, 0), (0, 0), (1, 1), (1, 1)))
        else:
            self.max_pool = nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="valid")
            self.pad = nn.Pad(((0, 0), (0, 0), (1, 1), (1, 1)), mode="SYMMETRIC")  # edge copies never change a max

    def construct(self, x):
        if self.avg:
            return self.sum_pool(self.pad(x)) * self.rescale
        return self.max_pool(self.pad(x))


class InceptionA(nn.Cell):
    def __init__(self, in_ch: int, pool_features: int, size: tuple[int, int]):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=(2, 2))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=(1, 1))
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=(1, 1))
        self.pool = Pool3x3(size, "avg")
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1)
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(self.pool(x))
        return self.concat((b1, b5, b3, bp))


class InceptionB(nn.Cell):
    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=(1, 1))
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return self.concat((b3, bd, self.max_pool(x)))


class InceptionC(nn.Cell):
    def __init__(self, in_ch: int, channels_7x7: int, size: tuple[int, int]):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.pool = Pool3x3(size, "avg")
        self.branch_pool = BasicConv2d(in_ch, 192, 1)
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(self.pool(x))
        return self.concat((b1, b7, bd, bp))


class InceptionD(nn.Cell):
    def __init__(self, in_ch: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return self.concat((b3, b7, self.max_pool(x)))


class InceptionE(nn.Cell):
    """``pool="avg"``: Mixed_7b (average pool, padding not counted); ``pool="max"``: Mixed_7c (max pool)."""

    def __init__(self, in_ch: int, pool: str, size: tuple[int, int]):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=(1, 1))
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.pool = Pool3x3(size, pool)
        self.branch_pool = BasicConv2d(in_ch, 192, 1)
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = self.concat((self.branch3x3_2a(b3), self.branch3x3_2b(b3)))
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = self.concat((self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)))
        bp = self.branch_pool(self.pool(x))
        return self.concat((b1, b3, bd, bp))


class FIDInceptionV3(nn.Cell):
    """float32 [N, 3, H, W] in [0, 1] -> (pool3 float32 [N, 2048], logits float32 [N, 1008]).

    ``input_size``: the (H, W) of the images it will see; they are resized to 299x299 inside the graph (a no-op
    resampling when they already are). Build with :func:`build_inception` to load weights; a fresh one is random.
    """

    def __init__(self, *, input_size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)):
        super().__init__()
        h, w = input_size
        self.resize_h = Tensor(resize_matrix(h))  # [299, H]
        self.resize_wt = Tensor(resize_matrix(w).T.copy())  # [W, 299]
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)  # 149
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)  # 147
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=(1, 1))
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")  # 73
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)  # 71
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="valid")  # 35
        self.Mixed_5b = InceptionA(192, 32, (35, 35))
        self.Mixed_5c = InceptionA(256, 64, (35, 35))
        self.Mixed_5d = InceptionA(288, 64, (35, 35))
        self.Mixed_6a = InceptionB(288)  # 17
        self.Mixed_6b = InceptionC(768, 128, (17, 17))
        self.Mixed_6c = InceptionC(768, 160, (17, 17))
        self.Mixed_6d = InceptionC(768, 160, (17, 17))
        self.Mixed_6e = InceptionC(768, 192, (17, 17))
        self.Mixed_7a = InceptionD(768)  # 8
        self.Mixed_7b = InceptionE(1280, "avg", (8, 8))
        self.Mixed_7c = InceptionE(2048, "max", (8, 8))
        self.fc = nn.Dense(FEATURE_DIM, NUM_LOGITS)

    def construct(self, x):
        x = ops.matmul(ops.matmul(self.resize_h, x), self.resize_wt)  # bilinear resize to 299x299
        x = 2.0 * x - 1.0
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(axis=(2, 3))
        return pool, self.fc(pool)
