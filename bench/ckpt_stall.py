"""How long a checkpoint stalls training: a save step against a normal step, ``train.async_save`` false vs true.

Runs the real ``Trainer`` loop (its own save, snapshot and background writer) on the paper U-Net (configs/cifar.yaml,
35.7M parameters; with Adam and EMA a checkpoint holds ~430 MB) at a small batch on CPU, fed synthetic batches; one
child process per mode, so each has the machine to itself. The time of every loop iteration (step + whatever the
trainer does after it) is taken from the gaps between the loop's requests for the next batch. Prints one JSON
object::

    python bench/ckpt_stall.py                      # cifar U-Net, batch 2, saves at steps 5, 10, ... 30 of 31
    python bench/ckpt_stall.py --batch 4 --steps 16 --every 5 model.ch=64

Fields per mode (``sync``, ``async``): ``step_s`` (median iteration without a save, the compiling one and those right
after a save left out), ``save_step_s`` (the iterations that saved), ``save_call_s`` (each ``Trainer.save`` call but the
final one, timed around the call: robust to the step-time noise of a shared machine), ``stall_s`` (their median: how
long every rank waits at a save step), ``overlap_extra_s`` (async only: how much slower the step right after a save,
which runs beside the background write, is than ``step_s`` - on a 2-core CPU the writer competes with the step for
the cores; a cluster host has cores to spare), ``write_s`` (async only: the background writes' own durations, from the
trainer's log). Top level: ``save_s`` (the synchronous save = sync stall: the figure the Young/Daly table in
docs/failure_modes.md uses), ``snapshot_s`` (median of 5 host copies of the whole state, part of the async stall),
``checkpoint_mb``, ``async_stall_ratio`` = async stall / sync stall (target <= 0.10), and ``young_daly``: for 8, 64
and 512 cards, the interval sqrt(2 x stall x job MTBF) and the expected minutes lost per day with each mode's measured
stall (see :func:`young_daly`; ``--card-mtbf-hours``, ``--restart-s``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, BenchError, env, result_json

from ddpm_dist.cli_util import run_main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "cifar.yaml"))
    p.add_argument("--batch", type=int, default=2, help="global batch (default 2)")
    p.add_argument("--steps", type=int, default=30, help="steps after the compiling one (default 30)")
    p.add_argument("--every", type=int, default=5, help="train.ckpt_every (default 5)")
    p.add_argument("--card-mtbf-hours", type=float, default=50_000.0,
                   help="per-card mean time between failures for the Young/Daly table (default 50000: Llama 3's "
                        "419 unexpected interruptions in 54 days on 16384 GPUs)")  # fmt: skip
    p.add_argument("--restart-s", type=float, default=75.0,
                   help="seconds from a failure to training again (default 75: ~40 s until msrun ends the job + "
                        "~35 s compile of the paper U-Net, bench/results/unet_speed_cifar.json)")  # fmt: skip
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
    from ddpm_dist import parallel
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
    calls = []  # (step, seconds, final) of every Trainer.save call: what every rank waits for at a save step
    untimed = trainer.save

    def timed_save(*, final: bool = False) -> int:
        t0 = time.perf_counter()
        out = untimed(final=final)
        calls.append((trainer.step, time.perf_counter() - t0, final))
        return out

    trainer.save = timed_save
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        trainer.train()
    t = batches.times
    # iteration k (1-based step k) runs from request k to request k+1; the last request ends the loop
    iters = {k: t[k] - t[k - 1] for k in range(2, min(len(t), total + 1))}
    snaps = []
    for _ in range(5):  # the trainer's own reused buffers (warm after the async run's saves)
        t0 = time.perf_counter()
        trainer._host_copy.take(trainer.train_step)  # noqa: SLF001 - what an async save copies
        snaps.append(time.perf_counter() - t0)
    ckpts = sorted((Path(args.out) / "checkpoints").glob("step_*.ckpt"))
    writes = [float(s) for s in re.findall(r"written in the background in ([\d.]+)s", log.getvalue())]
    return {"iters": iters, "save_calls": calls, "snapshot_s": statistics.median(snaps),
            "checkpoint_mb": ckpts[-1].stat().st_size / 1e6, "write_s": writes}  # fmt: skip


def summarise(mode: str, res: dict, every: int) -> dict:
    iters = {int(k): v for k, v in res["iters"].items()}
    plain = [v for k, v in iters.items() if k % every and (k - 1) % every]  # not a save, not right after one
    step_s = statistics.median(plain)
    calls = [seconds for _, seconds, final in res["save_calls"] if not final]
    out = {"step_s": round(step_s, 3), "save_step_s": [round(iters[k], 3) for k in iters if k % every == 0],
           "save_call_s": [round(c, 3) for c in calls], "stall_s": round(statistics.median(calls), 3)}  # fmt: skip
    if mode == "async":  # the steps right after a save run beside the background write
        after = [v for k, v in iters.items() if k > every and (k - 1) % every == 0]
        out["overlap_extra_s"] = round(statistics.mean(after) - step_s, 3) if after else None
        out["write_s"] = res["write_s"]
    return out


def young_daly(stall_s: float, *, cards: int, card_mtbf_h: float, restart_s: float, write_s: float = 0.0) -> dict:
    """Young/Daly for a job of ``cards`` cards: job MTBF M = card MTBF / cards, interval tau = sqrt(2 x stall x M);
    time lost per day = checkpoint stalls (stall / tau) + per failure the work since the last complete checkpoint
    (tau / 2, plus ``write_s`` for a background write still in flight) and the restart (``restart_s``)."""
    m = card_mtbf_h * 3600.0 / cards
    tau = math.sqrt(2.0 * stall_s * m)
    lost = stall_s / tau + (tau / 2.0 + write_s + restart_s) / m
    return {"cards": cards, "job_mtbf_h": round(m / 3600, 1), "failures_per_day": round(86400 / m, 3),
            "interval_min": round(tau / 60, 1), "lost_min_per_day": round(1440 * lost, 1)}  # fmt: skip


def young_daly_tables(sync: dict, asyn: dict, *, card_mtbf_h: float, restart_s: float) -> dict:
    """Rows for 8, 64 and 512 cards: ``sync`` (delta = the synchronous stall), ``async`` (delta = the async stall: a
    host with cores to spare for the writer), ``async_with_overlap`` (delta = async stall + the slowdown of the step
    beside the write: what this 2-core CPU pays)."""
    write = statistics.median(asyn["write_s"] or [0.0])
    deltas = {"sync": (sync["stall_s"], 0.0), "async": (asyn["stall_s"], write),
              "async_with_overlap": (asyn["stall_s"] + max(asyn["overlap_extra_s"] or 0.0, 0.0), write)}  # fmt: skip
    return {
        mode: [
            young_daly(delta, cards=n, card_mtbf_h=card_mtbf_h, restart_s=restart_s, write_s=w) for n in (8, 64, 512)
        ]
        for mode, (delta, w) in deltas.items()
    }


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
    asyn = summarise("async", results["async"], args.every)
    table = young_daly_tables(sync, asyn, card_mtbf_h=args.card_mtbf_hours, restart_s=args.restart_s)
    return {
        "config": Path(args.config).name, "batch": args.batch, "steps": args.steps, "ckpt_every": args.every,
        "device": "CPU", "checkpoint_mb": round(results["sync"]["checkpoint_mb"], 1),
        "save_s": sync["stall_s"], "snapshot_s": round(results["async"]["snapshot_s"], 3),
        "sync": sync, "async": asyn,
        "async_stall_ratio": round(asyn["stall_s"] / sync["stall_s"], 3) if sync["stall_s"] > 0 else None,
        "young_daly": {"card_mtbf_hours": args.card_mtbf_hours, "restart_s": args.restart_s, **table},
    }  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(one_mode(args)))
        return 0
    return run_main(lambda: print(result_json(run(args))), one_line_faults=(BenchError,))


if __name__ == "__main__":
    sys.exit(main())
