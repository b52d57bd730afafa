"""Time the compiled sampler: images/s for DDPM (all T steps) and DDIM-50, and the per-step cost beyond the network.

Every timing is one compiled graph called ``--measure`` times back to back (outputs chained, one device sync at the
end), best of ``--rounds`` interleaved rounds; images/s extrapolate from the step time: batch / (steps * step_s + the
x_T draw). ``--full`` also times whole DDIM-50 ``KeyedSampler.sample`` calls (best of the rounds) to check that
extrapolation. Prints one JSON object::

    python bench/sampling_speed.py                                   # configs/cifar.yaml (35.7M U-Net), batch 16
    python bench/sampling_speed.py --config configs/tiny.yaml --batch-size 64 --full
    python bench/sampling_speed.py --ckpt cifar_ema.ckpt             # the checkpoint's config and weights

Fields (seconds per call unless named otherwise): forward_s (the network alone), ddpm_step_s / ddim_step_s (a keyed
sampler step: noise + network + update), step_no_noise_s (a DDPM step given a ready noise tensor), keyed_noise_s
(the noise alone), standard_normal_step_s (the old ``sample_loop`` path: ``ops.standard_normal`` then the step, two
launches), overhead_ms (ddpm_step_s - forward_s, in ms, and as a fraction of forward_s), ddpm_img_s, ddim50_img_s,
and with --full ddim50_full_img_s.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--config", default=None, help="YAML config (default: configs/cifar.yaml); random weights")
    p.add_argument("--ckpt", default=None, help="a training or inference checkpoint instead of --config")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--measure", type=int, default=5, help="timed calls per round (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="keep the best of this many rounds (default 5)")
    p.add_argument("--full", action="store_true", help="also time a complete DDIM-50 sampling call")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.ch=64 (not with --ckpt)")
    return p.parse_args(argv)


def best_times(fns: dict, x0, *, measure: int, rounds: int) -> dict:
    """name -> seconds per call of ``x = fn(x)`` chained ``measure`` times, best of ``rounds``.

    One warm-up (compiling) call each, then the rounds interleave the functions, so a load spike from other processes
    hits every candidate alike instead of one of them.
    """
    for fn in fns.values():
        fn(x0).asnumpy()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            x = x0
            for _ in range(measure):
                x = fn(x)
            x.asnumpy()
            best[name] = min(best[name], (time.perf_counter() - start) / measure)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1 or args.measure < 1 or args.rounds < 1:
        return fail("--batch-size, --measure and --rounds must be >= 1")
    return run_main(lambda: run(args), quiet_mindspore=True)


def run(args) -> int:
    """Time the sampler steps (and with --full a whole DDIM-50 call); print the JSON document; 0."""
    device = setup_device(args.device, mode="graph")

    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, ops

    from ddpm_dist.checkpoint.convert import load_for_sampling
    from ddpm_dist.config import load_config
    from ddpm_dist.diffusion import build_schedule
    from ddpm_dist.diffusion.keyed_noise import KeyedNoise, seed_tensor
    from ddpm_dist.diffusion.sampling import KeyedSampler, KeyedStep, build_sampler
    from ddpm_dist.models import build_model, count_params

    if args.ckpt:
        cfg, net, _ = load_for_sampling(args.ckpt)
    else:
        config = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
        cfg = load_config(config, ["data.path=unused", *args.overrides])
        ms.set_seed(cfg.run.seed)
        net = build_model(cfg)
        net.set_train(False)

    b, c, s, T = args.batch_size, cfg.data.channels, cfg.data.image_size, cfg.diffusion.timesteps
    d = cfg.diffusion
    common = dict(objective=d.objective, clip_x0=d.clip_x0, var_type=d.var_type)
    ddpm = build_sampler(net, build_schedule(cfg), sampler="ddpm", **common)
    ddim_steps = min(50, T)
    ddim = build_sampler(net, build_schedule(cfg), sampler="ddim", steps=ddim_steps, eta=0.0, **common)
    noise = KeyedNoise(shape=(c, s, s))
    keyed_ddpm, keyed_ddim = KeyedStep(step=ddpm, noise=noise), KeyedStep(step=ddim, noise=noise)

    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((b, c, s, s)).astype(np.float32))
    z = Tensor(rng.standard_normal((b, c, s, s)).astype(np.float32))
    t = Tensor(np.full(b, T // 2, np.int32))
    i_ddpm, i_ddim = Tensor(T // 2, ms.int32), Tensor(ddim_steps // 2, ms.int32)
    seed, idx = seed_tensor(0), Tensor(np.arange(b, dtype=np.int32))
    fns = {
        "forward": lambda v: net(v, t),
        "ddpm_step": lambda v: keyed_ddpm(v, i_ddpm, seed, idx),
        "ddim_step": lambda v: keyed_ddim(v, i_ddim, seed, idx),
        "step_no_noise": lambda v: ddpm(v, i_ddpm, z),
        "keyed_noise": lambda v: noise(seed, idx, i_ddpm),
        "standard_normal_step": lambda v: ddpm(v, i_ddpm, ops.standard_normal(v.shape)),
    }
    sec = best_times(fns, x, measure=args.measure, rounds=args.rounds)
    forward_s, ddpm_step_s, ddim_step_s = sec["forward"], sec["ddpm_step"], sec["ddim_step"]
    x_T_s = sec["keyed_noise"]  # one KeyedNoise call per batch

    report = {
        "device": device,
        "arch": cfg.model.arch,
        "params": count_params(net),
        "image": [c, s, s],
        "batch": b,
        "timesteps": T,
        "forward_s": round(forward_s, 5),
        "ddpm_step_s": round(ddpm_step_s, 5),
        "ddim_step_s": round(ddim_step_s, 5),
        "step_no_noise_s": round(sec["step_no_noise"], 5),
        "keyed_noise_s": round(sec["keyed_noise"], 5),
        "standard_normal_step_s": round(sec["standard_normal_step"], 5),
        "overhead_ms": round(1e3 * (ddpm_step_s - forward_s), 3),
        "overhead_frac": round((ddpm_step_s - forward_s) / forward_s, 4),
        "ddpm_img_s": round(b / (T * ddpm_step_s + x_T_s), 4),
        "ddim50_img_s": round(b / (ddim_steps * ddim_step_s + x_T_s), 4),
    }
    if args.full:
        sampler = KeyedSampler(ddim, shape=(c, s, s))
        sampler.sample(np.arange(b), seed=0).asnumpy()  # compile
        full_s = float("inf")
        for r in range(args.rounds):
            start = time.perf_counter()
            sampler.sample(np.arange(b), seed=r + 1).asnumpy()
            full_s = min(full_s, time.perf_counter() - start)
        report["ddim50_full_img_s"] = round(b / full_s, 4)
    print(result_json(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
