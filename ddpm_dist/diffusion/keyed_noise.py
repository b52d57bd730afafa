"""Keyed noise: a counter-based normal RNG on the device, and its device self-check.

:class:`KeyedNoise` (used by ``sampling.KeyedSampler``): the noise of sample n at step i - and its x_T - is a pure
function of (seed, n, i), whatever the batch it is drawn in or the number of cards. Why a counter-based hash rather
than the device RNG: MindSpore's random ops (``ops.standard_normal`` and the like) keep one hidden state per op, so
what sample n receives depends on its position in the batch, the batch size and the draws made before; the images
would change with the batch size and the number of cards. Per-sample numpy generators on the host are reproducible
but copy the whole noise tensor host->device every step. A stateless hash evaluated inside the compiled step has
neither problem: no state, no copy, one graph per step. The hash is Chris Wellons' ``lowbias32`` mixer (two
multiplies, three xor-shifts) over a Weyl sequence per (sample, step) lane - the SplitMix construction - and pairs of
32-bit words become normals by Box-Muller. It is written in int32 (wrapping multiply, xor, masked arithmetic shifts
as logical shifts) because int32 is the integer type with the widest kernel coverage across back ends; only the CPU
kernels were run here. :func:`keyed_noise_reference` is the same function in numpy (the specification). Rows agree
across batch compositions to an ulp (log/cos/sin round differently by SIMD lane position), as the network's own
convolutions do. Limits: 32-bit keys (two (seed, n) pairs collide with probability ~2^-32), 24-bit uniforms (|z| <=
5.9). Cost: ``bench/sampling_speed.py`` (docs/sampling.md has the numbers).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..errors import UserError

_MUL1 = 0x7FEB352D  # lowbias32 constants (https://nullprogram.com/blog/2018/07/31/)
_MUL2 = 0x846CA68B
_WEYL = 0x9E3779B9  # 2^32 / golden ratio
_SEED_SALT = 0x243F6A88  # digits of pi: keep h(seed) away from h's fixed point h(0) = 0
_STREAM_SALT = 0x85A308D3
X_T_STREAM = 0xFFFFFFFF  # the stream of x_T; step i of the sampler uses stream i


def int32_bits(value: int) -> int:
    """The int32 with the bits of ``value`` mod 2^32."""
    return int(np.array(value & 0xFFFFFFFF, np.uint32).view(np.int32))


def _mix(x: Tensor) -> Tensor:
    """lowbias32 on int32 bits: x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16."""
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF))
    x = x * int32_bits(_MUL1)
    x = ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 15), 0x1FFFF))
    x = x * int32_bits(_MUL2)
    return ops.bitwise_xor(x, ops.bitwise_and(ops.bitwise_right_shift(x, 16), 0xFFFF))


class KeyedNoise(nn.Cell):
    """z = N(0, I) noise of shape [B, *shape] whose row b is a pure function of (seed, indices[b], stream).

    ``construct(seed, indices, stream)``: seed int32 scalar (the bits of a uint32 seed, see :func:`seed_tensor`),
    indices int32 [B] (global sample indices >= 0), stream int32 scalar (the sampler step i, or ``X_T_STREAM``
    for x_T) -> float32 [B, *shape].

    Per row: key = h(h(seed + a) ^ index); two lanes s_j = h(key ^ h(2 stream + j + b)), j = 0, 1; words
    w_j[c] = h(s_j + c * 0x9E3779B9) for pair c; u_j = (w_j >> 8 + 0.5) / 2^24; (z[2c], z[2c+1]) =
    sqrt(-2 ln u_0) (cos 2 pi u_1, sin 2 pi u_1) (Box-Muller), with h = lowbias32, salts a, b, and all arithmetic
    mod 2^32. Key and lane are hashed apart and joined by xor: a symmetric join such as h(h(n) + h(2 stream + j))
    gives equal lanes to (n, j) and (j, n) - correlated samples, which the test of row correlations catches.
    """

    def __init__(self, *, shape: tuple[int, ...]):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape))
        pairs = (self.size + 1) // 2
        weyl = (np.arange(pairs, dtype=np.uint64) * _WEYL % 2**32).astype(np.uint32).view(np.int32)
        self.weyl = Tensor(weyl.reshape(1, 1, pairs), ms.int32)
        self.lanes = Tensor(np.array([0, 1], np.int32), ms.int32)

    def words(self, seed: Tensor, indices: Tensor, stream: Tensor) -> Tensor:
        """The hash words: int32 [B, 2, pairs], the bits of :func:`keyed_noise_words`."""
        key = _mix(ops.bitwise_xor(_mix(seed + int32_bits(_SEED_SALT)), indices))  # [B]
        lane = _mix(stream * 2 + self.lanes + int32_bits(_STREAM_SALT))  # [2]
        base = _mix(ops.bitwise_xor(ops.expand_dims(key, 1), ops.expand_dims(lane, 0)))  # [B, 2]
        return _mix(ops.expand_dims(base, 2) + self.weyl)  # [B, 2, pairs]

    def construct(self, seed: Tensor, indices: Tensor, stream: Tensor) -> Tensor:
        words = self.words(seed, indices, stream)
        u = (ops.bitwise_and(ops.bitwise_right_shift(words, 8), 0xFFFFFF).astype(ms.float32) + 0.5) * (2.0**-24)
        radius = ops.sqrt(-2.0 * ops.log(u[:, 0]))
        theta = (2.0 * np.pi) * u[:, 1]
        z = ops.stack((radius * ops.cos(theta), radius * ops.sin(theta)), axis=-1)  # [B, pairs, 2]
        b = indices.shape[0]
        return ops.reshape(ops.reshape(z, (b, -1))[:, : self.size], (b,) + self.shape)


def seed_tensor(seed: int) -> Tensor:
    """The int32 scalar tensor KeyedNoise takes for a seed in [0, 2^32)."""
    if not 0 <= int(seed) < 2**32:
        raise ValueError(f"seed must be in [0, 2^32) (got {seed})")
    return Tensor(int32_bits(int(seed)), ms.int32)


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(_MUL1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_MUL2)
    x ^= x >> np.uint32(16)
    return x


def keyed_noise_words(seed: int, indices, stream: int, pairs: int) -> np.ndarray:
    """The specification of KeyedNoise's hash in numpy: uint32 [B, 2, pairs]."""
    with np.errstate(over="ignore"):
        idx = np.asarray(indices, np.int64).astype(np.uint32)
        key = _mix_np(_mix_np(np.array([(seed + _SEED_SALT) & 0xFFFFFFFF], np.uint32)) ^ idx)
        lane = _mix_np(np.array([(2 * stream + j + _STREAM_SALT) & 0xFFFFFFFF for j in (0, 1)], np.uint32))
        base = _mix_np(key[:, None] ^ lane[None, :])
        weyl = (np.arange(pairs, dtype=np.uint64) * _WEYL % 2**32).astype(np.uint32)
        return _mix_np(base[:, :, None] + weyl[None, None, :])


def keyed_noise_reference(seed: int, indices, stream: int, shape: tuple[int, ...]) -> np.ndarray:
    """What ``KeyedNoise`` returns, computed in numpy float64: float32 [B, *shape] (equal to ~1e-6)."""
    size = int(np.prod(shape))
    words = keyed_noise_words(seed, indices, stream, (size + 1) // 2)
    u = ((words >> np.uint32(8)).astype(np.float64) + 0.5) * 2.0**-24
    radius, theta = np.sqrt(-2.0 * np.log(u[:, 0])), 2.0 * np.pi * u[:, 1]
    z = np.stack((radius * np.cos(theta), radius * np.sin(theta)), axis=-1).reshape(len(words), -1)[:, :size]
    return z.reshape((len(words),) + tuple(shape)).astype(np.float32)


# ------------------------------------------------------------------------------------------- device self-check
class KeyedNoiseMismatch(UserError, RuntimeError):
    """The device computes a keyed noise different from :func:`keyed_noise_reference` (its int32 kernels do not
    wrap or shift as the hash needs). The message is one line naming the device and the first differing value."""


# seeds, indices and streams at the edges of the int32 arithmetic: sign bits set, the largest values, x_T's stream
_PROBE_SEEDS = (0, 0x9E3779B9, 2**32 - 1)
_PROBE_INDICES = (0, 1, 12345, 2**31 - 1)
_PROBE_STREAMS = (0, 999, X_T_STREAM)
_PROBE_SHAPE = (1, 4, 5)  # 20 values: 10 Box-Muller pairs per row
_PROBE_ATOL = 1e-4  # float32 log/cos/sin against the float64 reference (CPU: ~2e-6)
_checked: dict[str, bool] = {}


class _NoiseProbe(nn.Cell):
    def __init__(self, noise: KeyedNoise):
        super().__init__()
        self.noise = noise

    def construct(self, seed: Tensor, indices: Tensor, stream: Tensor) -> tuple[Tensor, Tensor]:
        return self.noise.words(seed, indices, stream), self.noise(seed, indices, stream)


def device_name() -> str:
    """``<target>:<device id>`` of the current MindSpore context, e.g. ``CPU:0``."""
    target = ms.get_context("device_target")
    try:
        dev = ms.get_context("device_id")
    except (ValueError, RuntimeError):
        dev = 0
    return f"{target}:{dev}"


def check_keyed_noise(*, force: bool = False) -> str:
    """Draw a small keyed-noise probe on the current device and compare it with the numpy specification.

    The hash words must be equal bit for bit and the normals within 1e-4. Runs once per process and device (again
    with ``force``); returns the device name. Raises :class:`KeyedNoiseMismatch` with one line naming the device and
    the first differing value. Why stop rather than fall back to host-drawn noise: a mismatch means the device's
    int32 kernels do not compute what the hash is written for - a back-end defect, which a warning in one of many
    worker logs would hide; the fallback (noise hashed in numpy and copied host->device every step) would be a second
    code path that no test runs on the devices where it would be used. Stopping names the defect before any sampling
    time is spent; ``--device CPU`` still samples.
    """
    device = device_name()
    if _checked.get(device) and not force:
        return device
    _checked.pop(device, None)
    probe = _NoiseProbe(KeyedNoise(shape=_PROBE_SHAPE))
    idx = Tensor(np.array(_PROBE_INDICES, np.int32))
    pairs = (int(np.prod(_PROBE_SHAPE)) + 1) // 2
    for seed in _PROBE_SEEDS:
        for stream in _PROBE_STREAMS:
            words, z = probe(seed_tensor(seed), idx, Tensor(int32_bits(stream), ms.int32))
            words = words.asnumpy().view(np.uint32)
            want_words = keyed_noise_words(seed, _PROBE_INDICES, stream, pairs)
            where = f"seed {seed}, stream {stream}"
            bad = np.argwhere(words != want_words)
            if len(bad):
                b, lane, c = (int(v) for v in bad[0])
                raise KeyedNoiseMismatch(
                    f"keyed noise self-check failed on {device}: hash word [{b}, {lane}, {c}] ({where}, sample "
                    f"{_PROBE_INDICES[b]}) is {int(words[b, lane, c]):#010x}, the reference is "
                    f"{int(want_words[b, lane, c]):#010x}; this device's int32 kernels do not wrap or shift as "
                    f"the hash needs (sample with --device CPU, and please report it)"
                )
            z = z.asnumpy()
            want = keyed_noise_reference(seed, _PROBE_INDICES, stream, _PROBE_SHAPE)
            bad = np.argwhere(~(np.abs(z - want) <= _PROBE_ATOL))
            if len(bad):
                pos = tuple(int(v) for v in bad[0])
                raise KeyedNoiseMismatch(
                    f"keyed noise self-check failed on {device}: normal {list(pos)} ({where}, sample "
                    f"{_PROBE_INDICES[pos[0]]}) is {float(z[pos]):.7g}, the reference is {float(want[pos]):.7g} "
                    f"(tolerance {_PROBE_ATOL}) (sample with --device CPU, and please report it)"
                )
    _checked[device] = True
    return device
