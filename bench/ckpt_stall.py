"""How long a checkpoint stalls training: a save step against a normal step, ``train.async_save`` false vs true.

Runs the real ``Trainer`` loop (its own save, snapshot and background writer) on the paper U-Net (configs/cifar.yaml,
35.7M parameters; with Adam and EMA a checkpoint holds ~430 MB) at a small batch on CPU, fed synthetic batches; one
child process per mode, so each has the machine to itself. The time of every loop iteration (step + whatever the
trainer does after it) is taken from the gaps between the loop's requests for the next batch. Prints one JSON
object::

    python bench/ckpt_stall.py                      # cifar U-Net, batch 2, saves at steps 4 and 8 of 12
    python bench/ckpt_stall.py --batch 4 --steps 16 --every 5 model.ch=64

Fields per mode (``sync``, ``async``): ``step_s`` (median iteration without a save, the first compiling one left
out), ``save_step_s`` (the iterations that saved), ``stall_s`` (their mean minus ``step_s``: how long every rank waits
for a save), ``overlap_extra_s`` (async only: the extra time of the iterations that ran while the background write
went on, summed per save - on a 2-core machine the writer competes with the step for the CPU; on a cluster host the
writer has a core of its own), ``write_s`` (async only: the background writes' own durations, from the trainer's
log). Top level: ``save_s`` (the synchronous save, = sync stall: the figure the Young/Daly table in
docs/failure_modes.md uses), ``snapshot_s`` (median of 5 host copies of the whole state: what async pays at the save
step), ``checkpoint_mb``, and ``async_stall_ratio`` = async stall / sync stall (target <= 0.10).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, BenchError, env, report


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "cifar.yaml"))
    p.add_argument("--batch", type=int, default=2, help="global batch (default 2)")
    p.add_argument("--steps", type=int, default=12, help="steps after the compiling one (default 12)")
    p.add_argument("--every", type=int, default=4, help="train.ckpt_every (default 4)")
    p.add_argument("--one", choices=["sync", "async"], help=argparse.SUPPRESS)  # the child process of one mode
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    return p.parse_args(argv)


class _TimedBatches:
    """The same synthetic batch forever; records the time of every request (one per loop iteration)."""

    def __init__(self, cfg, batch: int):
        import numpy as np

        rng = np.random.default_rng(0)
        c, s = cfg.data.channels, cfg.data.image_size
        self.batch = (rng.uniform(-1, 1, (batch, c, s, s)).astype(np.float32),
                      rng.integers(0, cfg.diffusion.timesteps, batch).astype(np.int32),
                      rng.standard_normal((batch, c, s, s)).astype(np.float32))  # fmt: skip
        self.times: list[float] = []

    def __iter__(self):
        while True:
            self.times.append(time.perf_counter())
            yield self.batch


def one_mode(args) -> dict:
    """In the child: train ``--steps + 1`` steps saving every ``--every``, return the iteration times."""
    from ddpm_dist.device import prepare_env

    prepare_env()
    from ddpm_dist import checkpoint, parallel
    from ddpm_dist.config import load_config
    from ddpm_dist.device import setup_device
    from ddpm_dist.train.trainer import Trainer

    total = args.steps + 1
    cfg = load_config(args.config, [
        f"run.out_dir={args.out}", f"train.global_batch={args.batch}", f"train.total_steps={total}",
        f"train.ckpt_every={args.every}", f"train.async_save={args.one == 'async'}", "train.keep_last=2",
        "run.sample_every=0", f"run.log_every={total}", "model.dropout=0", *args.overrides,
    ])  # fmt: skip
    device = setup_device("CPU", mode="graph")
    parallel.init()
    batches = _TimedBatches(cfg, args.batch)
    trainer = Trainer(cfg, device=device, data=batches)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        trainer.train()
    t = batches.times
    # iteration k (1-based step k) runs from request k to request k+1; the last request ends the loop
    iters = {k: t[k] - t[k - 1] for k in range(2, min(len(t), total + 1))}
    snaps = []
    for _ in range(5):
        t0 = time.perf_counter()
        checkpoint.snapshot(trainer.step_cell)
        snaps.append(time.perf_counter() - t0)
    ckpts = sorted((Path(args.out) / "checkpoints").glob("step_*.ckpt"))
    writes = [float(s) for s in re.findall(r"written in the background in ([\d.]+)s", log.getvalue())]
    return {"iters": iters, "snapshot_s": statistics.median(snaps), "checkpoint_mb": ckpts[-1].stat().st_size / 1e6,
            "write_s": writes}  # fmt: skip


def summarise(mode: str, res: dict, every: int, normal: float | None = None) -> dict:
    iters = {int(k): v for k, v in res["iters"].items()}
    saves = [k for k in iters if k % every == 0]
    plain = [v for k, v in iters.items() if k % every and (k - 1) % every]  # not a save, not right after one
    step_s = statistics.median(plain)
    base = step_s if normal is None else normal
    out = {"step_s": round(step_s, 3), "save_step_s": [round(iters[k], 3) for k in saves],
           "stall_s": round(statistics.mean(iters[k] for k in saves) - base, 3)}  # fmt: skip
    if mode == "async":
        extra = sum(v - base for k, v in iters.items() if k % every and k > saves[0] and v > base)
        out["overlap_extra_s"] = round(extra / len(saves), 3)
        out["write_s"] = res["write_s"]
    return out


def run(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="ckpt_stall_") as tmp:
        for mode in ("sync", "async"):
            cmd = [sys.executable, __file__, "--one", mode, "--out", str(Path(tmp) / mode), "--config", args.config,
                   "--batch", str(args.batch), "--steps", str(args.steps), "--every", str(args.every),
                   *args.overrides]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=3600)
            if res.returncode:
                raise BenchError(f"the {mode} run failed ({res.returncode}): {res.stderr.strip()[-600:]}")
            results[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    sync = summarise("sync", results["sync"], args.every)
    asyn = summarise("async", results["async"], args.every, normal=sync["step_s"])
    return {
        "config": Path(args.config).name, "batch": args.batch, "steps": args.steps, "ckpt_every": args.every,
        "device": "CPU", "checkpoint_mb": round(results["sync"]["checkpoint_mb"], 1),
        "save_s": sync["stall_s"], "snapshot_s": round(results["async"]["snapshot_s"], 3),
        "sync": sync, "async": asyn,
        "async_stall_ratio": round(asyn["stall_s"] / sync["stall_s"], 3) if sync["stall_s"] > 0 else None,
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one_mode(args)))
        return 0
    return report(lambda: print(json.dumps(run(args), indent=1)))


if __name__ == "__main__":
    sys.exit(main())
