"""Time the denoising U-Net on the current device: a forward pass and a full train step.

The train step is ``value_and_grad`` of an MSE loss plus Adam inside one Cell, compiled in GRAPH_MODE (the fastest
formulation measured on MindSpore 2.10). Inputs are random; no data set is read. Prints one JSON object::

    python bench/unet_speed.py                          # configs/cifar.yaml (the 35.7M paper U-Net), batch 8
    python bench/unet_speed.py --config configs/tiny.yaml --batch 32 --steps 20
    python bench/unet_speed.py model.ch=64 --mode pynative    # dotted overrides as for training

Fields: device, arch, params, image (C, H, W), batch, fwd_batch, steps, mode, compile_s (first train step, mostly
compilation), step_s (mean of the next ``--steps``), train_img_s, fwd_compile_s, fwd_img_s, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from ddpm_dist.device import prepare_env, setup_device

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML config (default: configs/cifar.yaml if present, else defaults)")
    p.add_argument("--batch", type=int, default=8, help="train-step batch (default 8)")
    p.add_argument("--fwd-batch", type=int, default=None, help="forward batch (default 2 * --batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first (compiling) one (default 5)")
    p.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    p.add_argument("--device", default="auto", choices=("auto", "Ascend", "GPU", "CPU"))
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.ch=64")
    return p.parse_args(argv)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    out = fn(*args)
    out.asnumpy()  # wait for the device
    return time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        print("error: --batch and --steps must be >= 1", file=sys.stderr)
        return 2
    prepare_env()
    device = setup_device(args.device, args.mode)

    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from ddpm_dist.config import ConfigError, load_config
    from ddpm_dist.models import build_model, count_params

    config = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    try:
        cfg = load_config(config, ["data.path=unused", *args.overrides])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    class MSELoss(nn.Cell):
        def __init__(self, net: nn.Cell) -> None:
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x, t, target):
            return ops.mean(ops.square(self.net(x, t) - target))

    class TrainStep(nn.Cell):
        def __init__(self, loss_net: nn.Cell, opt: nn.Optimizer) -> None:
            super().__init__(auto_prefix=False)
            self.loss_net = loss_net
            self.opt = opt
            self.grad_fn = ms.value_and_grad(loss_net, grad_position=None, weights=opt.parameters)

        def construct(self, x, t, target):
            loss, grads = self.grad_fn(x, t, target)
            self.opt(grads)
            return loss

    ms.set_seed(cfg.run.seed)
    net = build_model(cfg)
    c, s = cfg.data.channels, cfg.data.image_size
    rng = np.random.default_rng(0)

    def batch_of(n: int):
        x = ms.Tensor(rng.uniform(-1.0, 1.0, (n, c, s, s)).astype(np.float32))
        t = ms.Tensor(rng.integers(0, cfg.diffusion.timesteps, n).astype(np.int32))
        return x, t, ms.Tensor(rng.standard_normal((n, c, s, s)).astype(np.float32))

    opt = nn.Adam(net.trainable_params(), learning_rate=cfg.train.lr)
    step = TrainStep(MSELoss(net), opt)
    step.set_train(True)
    x, t, target = batch_of(args.batch)
    compile_s = _timed(step, x, t, target)
    step_s = sum(_timed(step, x, t, target) for _ in range(args.steps)) / args.steps

    fwd_batch = args.fwd_batch or 2 * args.batch
    net.set_train(False)
    x, t, _ = batch_of(fwd_batch)
    fwd_compile_s = _timed(net, x, t)
    fwd_s = sum(_timed(net, x, t) for _ in range(args.steps)) / args.steps

    report = {
        "device": device,
        "arch": cfg.model.arch,
        "params": count_params(net),
        "image": [c, s, s],
        "batch": args.batch,
        "fwd_batch": fwd_batch,
        "steps": args.steps,
        "mode": args.mode,
        "compile_s": round(compile_s, 3),
        "step_s": round(step_s, 4),
        "train_img_s": round(args.batch / step_s, 3),
        "fwd_compile_s": round(fwd_compile_s, 3),
        "fwd_img_s": round(fwd_batch / fwd_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
