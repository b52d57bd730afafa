"""Throughput of the whole framework's training (pipeline + compiled step + logging) for 1 and N workers.

Runs the real entry points - ``python -m ddpm_dist.train`` for 1 worker and ``launch/run_8p.sh`` (msrun) for more -
on a synthetic prepared data set of the config's image size, then reads the trainer's own TensorBoard scalars and
console line back. Prints one JSON object::

    python bench/train_throughput.py          # the paper U-Net (configs/cifar.yaml), batch 8, 1 and 2 workers
    python bench/train_throughput.py --config configs/digits.yaml --batch 64 --steps 40
    python bench/train_throughput.py --grad-accum 2   # also K=2 micro-batches of the same per-device batch

Fields per worker count: workers, global_batch, per_device_batch, compile_s (first step, mostly graph compilation),
step_s (mean over the timed steps, after compilation), images_per_s (global) and images_per_s_per_device,
wall_s (the whole command, including start-up). ``speedup`` is the global images/s of N workers over 1 worker,
measured in this one run.

With ``--grad-accum K`` every worker count also runs with ``train.grad_accum=K`` and a K times larger global batch, so
the micro-batch (what one forward/backward pass sees) is the same as in the K=1 run: ``accum_step_ratio`` is the
optimizer-step time of K over K=1 at the same worker count. Accumulation costs no more than its extra passes when it
is at most K (the all-reduce, Adam, EMA and the loss-scale update run once per optimizer step either way).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import ROOT, BenchError, env, result_json, scalars

from ddpm_dist.cli_util import fail, run_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "cifar.yaml"))
    p.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    p.add_argument("--steps", type=int, default=6, help="timed steps after the compiling one (default 6)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--grad-accum", type=int, default=1, help="also run K micro-batches per step (default 1: off)")
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    return p.parse_args(argv)


def run_one(args, workers: int, data: Path, work: Path, port: int, *, grad_accum: int) -> dict:
    run_dir = work / f"run_{workers}_k{grad_accum}"
    batch = args.batch * grad_accum
    total = args.steps + 1  # step 1 compiles; the log interval of the last `steps` steps is the measurement
    overrides = [
        f"data.path={data}", f"run.out_dir={run_dir}", f"train.global_batch={batch}", f"train.total_steps={total}",
        f"train.grad_accum={grad_accum}",
        "train.ckpt_every=0", "run.sample_every=0", "run.num_samples=1", "run.sample_steps=1",
        f"run.log_every={total}", *args.overrides,
    ]  # fmt: skip
    child_env = env()
    if workers == 1:
        cmd = [sys.executable, "-m", "ddpm_dist.train", "--config", args.config, *overrides]
    else:
        cmd = ["bash", str(ROOT / "launch" / "run_8p.sh"), args.config, *overrides]
        child_env |= {"DEVICE_NUM": str(workers), "MASTER_PORT": str(port), "LOG_DIR": str(run_dir / "logs")}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=child_env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = res.stdout + res.stderr
    if workers > 1 and (run_dir / "logs" / "worker_0.log").is_file():
        text += (run_dir / "logs" / "worker_0.log").read_text(errors="replace")
    if res.returncode:
        raise BenchError(f"{workers}-worker run failed ({res.returncode}): {text.strip()[-800:]}")
    compile_s = float(re.search(r"graph compile\) took ([0-9.]+)s", text).group(1))
    step_s = scalars(run_dir, "perf/step_time_s")[-1]
    img_s = scalars(run_dir, "perf/images_per_sec")[-1]
    return {
        "workers": workers,
        "grad_accum": grad_accum,
        "global_batch": batch,
        "per_device_batch": batch // workers,
        "micro_batch": batch // workers // grad_accum,
        "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 4),
        "images_per_s": round(img_s, 3),
        "images_per_s_per_device": round(img_s / workers, 3),
        "wall_s": round(wall, 1),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), one_line_faults=(BenchError,))


def run(args) -> int:
    """Check the config and the flags, measure, print the JSON document; the exit status."""
    from ddpm_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.grad_accum < 1 or any(args.batch % w for w in args.workers):
        return fail("--grad-accum must be >= 1 and --batch divisible by every --workers count")
    print(result_json(measure(args, cfg)))
    return 0


def measure(args, cfg) -> dict:
    """Every worker count (and K) on a synthetic data set of the config's image size. Raises BenchError."""
    from ddpm_dist.data.convert import write_arrays

    with tempfile.TemporaryDirectory(prefix="ddpm_bench_") as tmp:
        work = Path(tmp)
        n = max(args.batch * args.grad_accum * (args.steps + 2), 64)
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n, cfg.data.image_size, cfg.data.image_size, cfg.data.channels), np.uint8)
        data = work / "data"
        write_arrays(str(data), images, source="bench")
        ks = [1, args.grad_accum] if args.grad_accum > 1 else [1]
        results = [run_one(args, w, data, work, 29000 + 17 * w + k, grad_accum=k) for w in args.workers for k in ks]
    out = {
        "config": args.config,
        "arch": cfg.model.arch,
        "image": [cfg.data.channels, cfg.data.image_size, cfg.data.image_size],
        "timed_steps": args.steps,
        "runs": results,
    }
    plain = [r for r in results if r["grad_accum"] == 1]
    if len(plain) > 1:
        out["speedup"] = round(plain[-1]["images_per_s"] / plain[0]["images_per_s"], 3)
    for r in results:
        if r["grad_accum"] > 1:
            base = next(p for p in plain if p["workers"] == r["workers"])
            r["accum_step_ratio"] = round(r["step_s"] / base["step_s"], 3)
    return out


if __name__ == "__main__":
    sys.exit(main())
