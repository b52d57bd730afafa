"""FID Inception weights: pytorch-fid's published file -> a MindSpore checkpoint -> a ready network.

Nothing is downloaded. The user fetches pytorch-fid's weights file once (``PYTORCH_FID_URL``) and converts it with
``tools/convert_inception.py`` (PyTorch is needed for that step only: ``pip install torch``). The checkpoint holds
float32 weights under :class:`~ddpm_dist.eval.inception.FIDInceptionV3`'s names and ``meta.kind``,
``meta.source_sha256`` (the sha256 of the file it came from: the weights' identity in cached reference statistics)
and ``meta.source``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..storage import sha256_file
from . import EvalError

KIND_INCEPTION = "ddpm-dist/fid-inception"
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PYTORCH_FID_FILE}"
_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


class WeightsError(EvalError):
    """A missing, unreadable or mismatched Inception weights file. The message is one line."""


def how_to_get(dst: str) -> str:
    return (f"download {PYTORCH_FID_URL} and convert it: python tools/convert_inception.py {PYTORCH_FID_FILE} "
            f"{dst} (needs pip install torch)")  # fmt: skip


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of every parameter of the MindSpore network (built on the host, not compiled)."""
    from .inception import FIDInceptionV3

    return {p.name: tuple(p.shape) for p in FIDInceptionV3().get_parameters()}


def ms_name(torch_name: str) -> str | None:
    """The MindSpore name of a pytorch-fid state-dict key (None for ``num_batches_tracked``, which MindSpore lacks)."""
    head, _, leaf = torch_name.rpartition(".")
    if leaf == "num_batches_tracked":
        return None
    if head.endswith(".bn"):
        leaf = _BN.get(leaf, leaf)
    return f"{head}.{leaf}"


def from_torch_state(state: dict[str, np.ndarray], *, source: str) -> dict[str, np.ndarray]:
    """Rename pytorch-fid's ``state`` (``name -> ndarray``) to MindSpore's names, as float32, checking that every
    parameter is there with its shape and nothing else is. Raises WeightsError naming the first problem."""
    expected = expected_shapes()
    out = {}
    for key, value in state.items():
        name = ms_name(key)
        if name is None:
            continue
        if name not in expected:
            raise WeightsError(f"{source}: unexpected entry {key!r}: not pytorch-fid's FID Inception weights")
        if tuple(value.shape) != expected[name]:
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, the FID Inception needs "
                               f"{expected[name]}")  # fmt: skip
        out[name] = np.ascontiguousarray(value, dtype=np.float32)
    missing = [name for name in expected if name not in out]
    if missing:
        raise WeightsError(f"{source}: {len(missing)} parameters missing (first: {missing[0]}): not pytorch-fid's "
                           "FID Inception weights")  # fmt: skip
    return out


def save(dst, weights: dict[str, np.ndarray], *, source: Path) -> Path:
    """Write the converted ``weights`` to ``dst`` (.ckpt or .safetensors), atomically. Raises CheckpointError."""
    import mindspore as ms

    import ddpm_dist
    from ddpm_dist.checkpoint.io import write_weights

    meta = {
        "meta.kind": KIND_INCEPTION,
        "meta.source": str(source),
        "meta.source_sha256": sha256_file(source),
        "meta.mindspore_version": ms.__version__,
        "meta.ddpm_dist_version": ddpm_dist.__version__,
    }
    return write_weights(dst, weights, meta)


def read(path) -> tuple[dict[str, np.ndarray], dict]:
    """(weights, meta) of a converted checkpoint, read by :func:`ddpm_dist.checkpoint.io.read` (a ``.ckpt``'s CRC
    verified). Raises WeightsError with how to get one when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"FID Inception weights not found: {path}; {how_to_get(str(path))}")
    from ddpm_dist.checkpoint.io import CheckpointError
    from ddpm_dist.checkpoint.io import read as read_checkpoint

    try:
        stored = read_checkpoint(path)
        arrays, meta = stored.arrays, stored.meta
    except CheckpointError as err:
        raise WeightsError(str(err)) from None
    if meta.get("kind") != KIND_INCEPTION:
        raise WeightsError(f"{path}: not a converted FID Inception checkpoint (meta.kind is {meta.get('kind')!r}); "
                           f"{how_to_get(str(path))}")  # fmt: skip
    expected = expected_shapes()
    for name, shape in expected.items():
        if name not in arrays or tuple(arrays[name].shape) != shape:
            raise WeightsError(f"{path}: {name} is missing or has the wrong shape; reconvert it")
    return {name: np.asarray(arrays[name], np.float32) for name in expected}, meta


def build_inception(path, *, input_size: tuple[int, int]):
    """(FIDInceptionV3 with the weights of ``path`` in inference mode, meta). Raises WeightsError."""
    weights, meta = read(path)
    return network(weights, input_size=input_size, source=path), meta


def network(weights: dict[str, np.ndarray], *, input_size: tuple[int, int], source):
    """FIDInceptionV3 for ``input_size`` images with ``weights`` (from :func:`read`), in inference mode."""
    from ddpm_dist.checkpoint.io import CheckpointError, load_into

    from .inception import FIDInceptionV3

    net = FIDInceptionV3(input_size=input_size)
    try:
        load_into(net, weights, source=source)
    except CheckpointError as err:
        raise WeightsError(str(err)) from None
    net.set_train(False)
    return net
