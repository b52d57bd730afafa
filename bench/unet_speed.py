"""Time the denoising U-Net's train step and forward pass, side by side with diffusers' UNet2DModel on PyTorch.

Three train steps are timed on the same random batch, interleaved step by step so that a busy machine slows them
alike (the ratios are the result; absolute times vary +-20% between runs):

- ``bare``: MindSpore ``value_and_grad`` of the eps MSE -> global-norm clip -> Adam, one GRAPH_MODE Cell;
- ``framework``: ddpm-dist's own compiled ``TrainStep`` (the one training runs: diffusion loss, loss scaling,
  the finite check from the global norm, clip, Adam with the lr schedule, EMA, device-side statistics);
- ``diffusers``: the same architecture as a diffusers ``UNet2DModel`` on PyTorch (the google/ddpm-cifar10-32 layout
  for configs/cifar.yaml), MSE -> backward -> ``clip_grad_norm_`` -> Adam, and ``diffusers_ema`` the same plus an EMA
  update of every weight as diffusers' ``train_unconditional`` does. It runs in a child process (its own threads and
  memory), fed step by step through a pipe. Skipped when torch or diffusers is not installed.

Prints one JSON object::

    python bench/unet_speed.py                          # configs/cifar.yaml (the 35.7M paper U-Net), batch 8
    python bench/unet_speed.py --config configs/digits.yaml --batch 64 --steps 10
    python bench/unet_speed.py --no-reference model.ch=64     # MindSpore only; dotted overrides as for training

Fields: device, arch, params (MindSpore and diffusers counts), image, batch, steps, ``<name>_compile_s`` (first
step), ``<name>_step_s`` (median of the timed steps), ``<name>_img_s``, forward ``fwd_img_s`` / ``diffusers_fwd_img_s``
(batch ``--fwd-batch``), the ratios ``framework_vs_diffusers_ema``, ``bare_vs_diffusers`` and ``fwd_vs_diffusers``
(> 1: MindSpore is faster), and peak RSS of each process (the MindSpore process holds both of its steps).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

from benchlib import result_json

from ddpm_dist.choices import DEVICE_CHOICES
from ddpm_dist.cli_util import fail, run_main
from ddpm_dist.device import setup_device

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cifar.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML config (default: configs/cifar.yaml)")
    p.add_argument("--batch", type=int, default=8, help="train-step batch (default 8)")
    p.add_argument("--fwd-batch", type=int, default=None, help="forward batch (default 2 * --batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the first (compiling) one (default 5)")
    p.add_argument("--no-reference", action="store_true", help="skip the diffusers/PyTorch reference")
    p.add_argument("--torch-threads", type=int, default=0, help="PyTorch intra-op threads (default: all cores)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.ch=64")
    return p.parse_args(argv)


def diffusers_config(cfg) -> dict:
    """UNet2DModel config for ddpm-dist's DDPM U-Net (the interop module's mapping: google/ddpm-cifar10-32 layout)."""
    from ddpm_dist.config import to_dict
    from ddpm_dist.interop.diffusers import unet_config

    sections = to_dict(cfg)
    return unet_config(sections["model"], sections["data"])


def _torch_worker(conn, unet_kwargs: dict, batch: int, fwd_batch: int, timesteps: int, lr: float, clip: float,
                  ema_decay: float, threads: int) -> None:  # fmt: skip
    """Child process: build the diffusers U-Net, then run the step named by each message and send its time."""
    import torch
    from diffusers import UNet2DModel

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet2DModel.from_config(unet_kwargs)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = [p.detach().clone() for p in net.parameters()]
    params = list(net.parameters())
    c, s = unet_kwargs["in_channels"], unet_kwargs["sample_size"]
    x = torch.rand(batch, c, s, s) * 2 - 1
    t = torch.randint(0, timesteps, (batch,))
    target = torch.randn(batch, c, s, s)
    xf, tf = torch.rand(fwd_batch, c, s, s) * 2 - 1, torch.randint(0, timesteps, (fwd_batch,))

    def step(with_ema: bool) -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x, t).sample, target)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if with_ema:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay)

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(xf, tf)
        net.train()

    conn.send(sum(p.numel() for p in params))
    while True:
        msg = conn.recv()
        if msg == "quit":
            conn.send(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
            return
        start = time.perf_counter()
        if msg == "fwd":
            forward()
        else:
            step(with_ema=msg == "step_ema")
        conn.send(time.perf_counter() - start)


class TorchReference:
    """The diffusers U-Net in a child process; ``run(kind)`` times one ``step``, ``step_ema`` or ``fwd`` there."""

    def __init__(self, cfg, *, batch: int, fwd_batch: int, threads: int) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        args = (child, diffusers_config(cfg), batch, fwd_batch, cfg.diffusion.timesteps, cfg.train.lr,
                cfg.train.grad_clip, cfg.train.ema_decay, threads)  # fmt: skip
        self.proc = ctx.Process(target=_torch_worker, args=args, daemon=True)
        self.proc.start()
        self.params = self.conn.recv()

    def run(self, kind: str) -> float:
        self.conn.send(kind)
        return self.conn.recv()

    def close(self) -> int:
        self.conn.send("quit")
        rss = self.conn.recv()
        self.proc.join(timeout=30)
        return rss


def reference_available() -> str | None:
    """None if torch and diffusers import, else the reason they do not."""
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means no reference
        return f"{type(err).__name__}: {err}"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        return fail("--batch and --steps must be >= 1")
    return run_main(lambda: run(args), quiet_mindspore=True)


def run(args) -> int:
    """Time the train steps (ours, and diffusers' unless skipped); print the JSON document; 0."""
    from ddpm_dist.config import load_config

    config = args.config or str(DEFAULT_CONFIG)
    cfg = load_config(config, ["data.path=unused", *args.overrides])
    fwd_batch = args.fwd_batch or 2 * args.batch
    skip_reason = "--no-reference" if args.no_reference else reference_available()
    if skip_reason is None:
        from ddpm_dist.interop.diffusers import InteropError

        try:
            diffusers_config(cfg)
        except InteropError as err:  # e.g. a test net whose GroupNorm groups differ by width
            skip_reason = f"no diffusers form: {err}"
    # Start the child before MindSpore spins up its threads (spawn: a fresh interpreter either way).
    ref = (
        None if skip_reason else TorchReference(cfg, batch=args.batch, fwd_batch=fwd_batch, threads=args.torch_threads)
    )

    device = setup_device(args.device, mode="graph")
    steps = build_mindspore_steps(cfg, batch=args.batch, fwd_batch=fwd_batch)

    times: dict[str, list[float]] = {}
    order = ["bare", "framework", "fwd"] + (["diffusers", "diffusers_ema", "diffusers_fwd"] if ref else [])
    for _ in range(args.steps + 1):  # round 0 compiles (MindSpore) / warms up (PyTorch)
        for name in order:
            if name.startswith("diffusers"):
                kind = {"diffusers": "step", "diffusers_ema": "step_ema", "diffusers_fwd": "fwd"}[name]
                took = ref.run(kind)
            else:
                took = steps[name]()
            times.setdefault(name, []).append(took)

    report = {
        "device": device,
        "arch": cfg.model.arch,
        "params": steps["params"],
        "image": [cfg.data.channels, cfg.data.image_size, cfg.data.image_size],
        "batch": args.batch,
        "fwd_batch": fwd_batch,
        "steps": args.steps,
    }
    for name, ts in times.items():
        n = fwd_batch if name.endswith("fwd") else args.batch
        med = statistics.median(ts[1:])
        report[f"{name}_compile_s"] = round(ts[0], 3)
        report[f"{name}_step_s"] = round(med, 4)
        report[f"{name}_img_s"] = round(n / med, 3)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if ref:
        report["diffusers_params"] = ref.params
        report["diffusers_peak_rss_mb"] = ref.close()
        for mine, theirs, key in (
            ("framework", "diffusers_ema", "framework_vs_diffusers_ema"),
            ("bare", "diffusers", "bare_vs_diffusers"),
            ("fwd", "diffusers_fwd", "fwd_vs_diffusers"),
        ):
            report[key] = round(report[f"{mine}_img_s"] / report[f"{theirs}_img_s"], 3)
    else:
        report["reference"] = f"skipped ({skip_reason})"
    print(result_json(report))
    return 0


def build_mindspore_steps(cfg, *, batch: int, fwd_batch: int) -> dict:
    """The bare and framework train steps and the forward pass, each as a no-argument callable returning seconds."""
    import mindspore as ms
    import numpy as np
    from mindspore import nn, ops

    from ddpm_dist.models import build_model, count_params
    from ddpm_dist.train.step import build_train_step

    class BareStep(nn.Cell):
        def __init__(self, net: nn.Cell, opt: nn.Optimizer, clip: float) -> None:
            super().__init__(auto_prefix=False)
            self.net = net
            self.opt = opt
            self.clip = clip
            self.grad_fn = ms.value_and_grad(self.loss, grad_position=None, weights=opt.parameters)

        def loss(self, x, t, target):
            return ops.mean(ops.square(self.net(x, t) - target))

        def construct(self, x, t, target):
            loss, grads = self.grad_fn(x, t, target)
            if self.clip > 0:
                grads = ops.clip_by_global_norm(grads, self.clip)
            self.opt(grads)
            return loss

    ms.set_seed(cfg.run.seed)
    c, s, T = cfg.data.channels, cfg.data.image_size, cfg.diffusion.timesteps
    rng = np.random.default_rng(0)

    def batch_of(n: int):
        x = ms.Tensor(rng.uniform(-1.0, 1.0, (n, c, s, s)).astype(np.float32))
        t = ms.Tensor(rng.integers(0, T, n).astype(np.int32))
        return x, t, ms.Tensor(rng.standard_normal((n, c, s, s)).astype(np.float32))

    bare_net = build_model(cfg)
    bare = BareStep(bare_net, nn.Adam(bare_net.trainable_params(), learning_rate=cfg.train.lr), cfg.train.grad_clip)
    bare.set_train(True)

    net = build_model(cfg)
    framework = build_train_step(cfg, net, grad_accum=1)
    framework.set_train(True)
    train_batch, fwd_inputs = batch_of(batch), batch_of(fwd_batch)[:2]

    def timed(fn, *inputs):
        def run() -> float:
            start = time.perf_counter()
            fn(*inputs).asnumpy()  # wait for the device
            return time.perf_counter() - start

        return run

    class Forward(nn.Cell):
        def __init__(self, net: nn.Cell) -> None:
            super().__init__(auto_prefix=False)
            self.net = net

        def construct(self, x, t):
            return self.net(x, t)

    fwd_net = Forward(build_model(cfg))  # its own copy: set_train(False) must not reach the train steps' networks
    fwd_net.set_train(False)
    return {
        "params": count_params(net),
        "bare": timed(bare, *train_batch),
        "framework": timed(framework, *train_batch),
        "fwd": timed(fwd_net, *fwd_inputs),
    }


if __name__ == "__main__":
    sys.exit(main())
