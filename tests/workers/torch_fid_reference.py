"""Reference features from pytorch-fid's own FID Inception (PyTorch), with random weights.

    python tests/workers/torch_fid_reference.py OUT_DIR

Builds ``pytorch_fid.inception.InceptionV3`` exactly as pytorch-fid does, except that the weights pytorch-fid would
download are a random state dict (torchvision's initialisation, seeded). Batch-norm statistics are then calibrated
on random images (cumulative averages in train mode), so activations have the scale of real ones instead of
exploding or vanishing through 94 layers. Writes ``OUT_DIR/pt_inception.pth`` (the state dict, in the layout of the
published weights file) and ``OUT_DIR/reference.npz``: for each image size S in SIZES, ``images_S`` (uint8 NHWC) and
the ``pool_S`` (2048-d, pytorch-fid's FID features) and ``logits_S`` (fc on the pool features) it gives them, and
``pool64_S``: the pool features of the same network run in float64.
Runs in its own process so PyTorch and MindSpore never share one.
"""

import sys
from pathlib import Path

import numpy as np
import pytorch_fid.inception as pfi
import torch
import torchvision

SIZES = (32, 299)
NUM_IMAGES = 4


def images_like(rng, size: int, n: int) -> np.ndarray:
    """uint8 [n, size, size, 3]: noise, and from the second one on, smooth gradients (where resizing matters)."""
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, size)
    for i in range(1, n):
        a, b = rng.random(2)
        images[i] = (a * ramp[None, :, None] + b * ramp[:, None, None] + 40 * i) % 256
    return images


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    random_net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=True)
    captured = {}
    original = pfi.fid_inception_v3

    def capture():
        net = original()
        captured["net"] = net
        return net

    pfi.load_state_dict_from_url = lambda *args, **kwargs: random_net.state_dict()
    pfi.fid_inception_v3 = capture
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])  # pytorch-fid's FID network
    inception = captured["net"]

    for module in model.modules():  # calibrate: running stats = mean over the calibration batches
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    rng = np.random.default_rng(1)
    model.train()
    with torch.no_grad():
        for size in SIZES:
            model(torch.from_numpy(images_like(rng, size, 8)).permute(0, 3, 1, 2).float() / 255.0)
    model.eval()
    inception.eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(inception.state_dict(), out / "pt_inception.pth")
    arrays = {}
    with torch.no_grad():
        for size in SIZES:
            images = images_like(rng, size, NUM_IMAGES)
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # what pytorch-fid's ToTensor gives
            pool = model(x)[0].flatten(1)
            arrays[f"images_{size}"] = images
            arrays[f"pool_{size}"] = pool.numpy()
            arrays[f"logits_{size}"] = inception.fc(pool).numpy()
        model.double()  # the same network in float64: how far float32 itself is from exact
        for size in SIZES:
            x = torch.from_numpy(arrays[f"images_{size}"]).permute(0, 3, 1, 2).double() / 255.0
            arrays[f"pool64_{size}"] = model(x)[0].flatten(1).numpy()
    np.savez(out / "reference.npz", **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
