"""Time to quality of the quickstart: the real README path for a wall-clock budget, then the digits metric.

    python bench/time_to_quality.py                                  # 600 s budget, 2 msrun workers, 2 x 1000 samples
    python bench/time_to_quality.py --budget 0 train.total_steps=300 # a fixed number of steps instead (recipe A/B)
    python bench/time_to_quality.py --work-dir runs/ttq diffusion.objective=eps   # keep the run, try a recipe change
    python bench/time_to_quality.py --peer     # then the PyTorch peer (bench/peer_digits.py), same data and budget

1. ``bash launch/quickstart.sh`` (data preparation, ``launch/run_8p.sh``, msrun with ``--workers`` workers), with the
   data set and the run directory inside the work directory (a temporary one unless ``--work-dir``). The clock starts
   when the launcher starts, so start-up, data preparation and graph compilation count. When ``--budget`` seconds
   have passed and training is still going, the launcher gets SIGTERM: the workers agree on a stop step (they compare
   every 10 steps), save a checkpoint and exit 0 (the pre-emption path). The signal waits for the first step if
   start-up takes longer than the budget. A run that reaches its ``train.total_steps`` first ends by itself.
2. ``tools/sample.py`` on the newest checkpoint's EMA weights: ``--num-samples`` images for each of ``--seeds``
   (DDIM with ``--sample-steps`` steps), one process each.
3. The digits metric (ddpm_dist/eval/digits.py) of each seed's samples against the run's own training images
   (``vs_train``: the upsampling of the data does not count) and against the metric's held-out real digits
   (``vs_heldout``), and the floors: ``--num-samples`` real training images against the whole training set and
   against the held-out digits (what a perfect model would score with this many samples).
4. With ``--peer``: bench/peer_digits.py (lucidrains' denoising-diffusion-pytorch) on the same prepared data, for
   the same budget (or, without one, the same number of steps), with the same samples, seeds and sampler, after the
   quickstart so it has the machine alone; its JSON goes under ``"peer"`` beside the ratio of the two FDs to the
   training set.

Prints one JSON object: the steps reached, images/s (the trainer's own measure, after compilation), the times, and
the scores. Errors print one line, ``error: <message>``, on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import ROOT, BenchError, env, result_json, run_checked, scalars, score_both, seed_means

from ddpm_dist.cli_util import run_main

CONFIG = ROOT / "configs" / "digits.yaml"  # the quickstart's
STOP_GRACE_S = 600  # after SIGTERM: the current step, the stop agreement (every 10 steps) and the checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=600.0, help="seconds from launch to SIGTERM (0: no budget)")
    p.add_argument("--workers", type=int, default=2, help="msrun workers (DEVICE_NUM, default 2)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per seed (default 1000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps (default 100)")
    p.add_argument("--batch-size", type=int, default=250, help="sampler batch (default 250)")
    p.add_argument("--work-dir", help="keep the data, run and samples here (default: a temporary directory)")
    p.add_argument("--master-port", type=int, default=8231, help="msrun scheduler port (default 8231)")
    p.add_argument(
        "--peer",
        action="store_true",
        help="then train the PyTorch peer (bench/peer_digits.py) on the same data for the same budget",
    )
    p.add_argument("overrides", nargs="*", help="dotted config overrides for the quickstart (configs/digits.yaml)")
    args = p.parse_args(argv)
    minimum = {"--workers": (args.workers, 1), "--num-samples": (args.num_samples, 2),
               "--sample-steps": (args.sample_steps, 1), "--batch-size": (args.batch_size, 1)}  # fmt: skip
    for name, (value, low) in minimum.items():
        if value < low:
            p.error(f"{name} must be >= {low} (got {value})")
    if args.budget < 0:
        p.error(f"--budget must be >= 0 (got {args.budget})")
    return args


def train(args, work: Path) -> dict:
    """Run the quickstart under the budget; return what it reached. Raises BenchError."""
    run_dir, logs = work / "run", work / "logs"
    cmd = ["bash", str(ROOT / "launch" / "quickstart.sh"), f"run.out_dir={run_dir}", *args.overrides]
    child_env = env(DATA=str(work / "data"), DEVICE_NUM=str(args.workers), LOG_DIR=str(logs),
                    MASTER_PORT=str(args.master_port), CONFIG=str(getattr(args, "config", CONFIG)))  # fmt: skip
    t0 = time.perf_counter()
    with open(work / "launcher.log", "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=child_env, stdout=out, stderr=subprocess.STDOUT)
        stopped_at = None
        try:
            while proc.poll() is None:
                over = args.budget and stopped_at is None and time.perf_counter() - t0 >= args.budget
                if over and _training_started(logs):
                    stopped_at = time.perf_counter() - t0
                    proc.send_signal(signal.SIGTERM)  # run_8p.sh forwards it to the workers, which save and stop
                time.sleep(0.5)
                if stopped_at is not None and time.perf_counter() - t0 > stopped_at + STOP_GRACE_S:
                    proc.kill()
                    raise BenchError(f"the run did not stop within {STOP_GRACE_S}s of SIGTERM (see {work})")
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=STOP_GRACE_S)
            raise
    wall = time.perf_counter() - t0
    text = (work / "launcher.log").read_text(errors="replace")
    if (logs / "worker_0.log").is_file():
        text += (logs / "worker_0.log").read_text(errors="replace")
    if proc.returncode:
        tail = " | ".join(line for line in text.strip().splitlines()[-3:])
        raise BenchError(f"the quickstart exited {proc.returncode}: {tail}")
    from ddpm_dist import checkpoint

    index = checkpoint.read_index(checkpoint.checkpoint_dir(str(run_dir)))
    if not index:
        raise BenchError(f"the run wrote no checkpoint (budget {args.budget:.0f}s shorter than its start-up?)")
    compile_s = re.search(r"graph compile\) took ([0-9.]+)s", text)
    rates = scalars(run_dir, "perf/images_per_sec")
    return {
        "steps": int(index[-1]["step"]),
        "stopped_by_budget": stopped_at is not None and "stopped by" in text,
        "wall_s": round(wall, 1),
        "compile_s": float(compile_s.group(1)) if compile_s else None,
        "images_per_s": round(float(np.mean(rates)), 2) if rates else None,
        "checkpoint": str(checkpoint.checkpoint_dir(str(run_dir)) / index[-1]["file"]),
    }


def _training_started(logs: Path) -> bool:
    """Rank 0 has finished its first step, so every worker handles SIGTERM by saving and stopping (never stop earlier:
    a worker still starting up would just die)."""
    log = logs / "worker_0.log"
    return log.is_file() and "graph compile) took" in log.read_text(errors="replace")


def sample(args, ckpt: str, work: Path, seed: int) -> tuple[np.ndarray, float]:
    out = work / f"samples_seed{seed}"
    cmd = [sys.executable, str(ROOT / "tools" / "sample.py"), "--ckpt", ckpt, "--out", str(out), "--sampler", "ddim",
           "--steps", str(args.sample_steps), "--num-samples", str(args.num_samples), "--batch-size",
           str(args.batch_size), "--seed", str(seed), "--no-progress", "--overwrite"]  # fmt: skip
    t0 = time.perf_counter()
    run_checked(cmd, what=f"sampling seed {seed}", tail=400, cwd=work)
    with np.load(out / "samples.npz") as data:
        return data["arr_0"], time.perf_counter() - t0


def run_peer(args, work: Path) -> dict:
    """bench/peer_digits.py on the quickstart's data, same budget, samples and sampler, after our run (alone on the
    machine). Raises BenchError."""
    budget = ["--budget", str(args.budget)] if args.budget else ["--budget", "0", "--steps", str(_fixed_steps(args))]
    cmd = [sys.executable, str(ROOT / "bench" / "peer_digits.py"), "--data", str(work / "data"), *budget,
           "--num-samples", str(args.num_samples), "--seeds", *map(str, args.seeds), "--sample-steps",
           str(args.sample_steps), "--sample-batch", str(args.batch_size)]  # fmt: skip
    res = run_checked(cmd, what="the peer", tail=400, cwd=work)
    return json.loads(res.stdout)


def _fixed_steps(args) -> int:
    """Without a budget, the peer trains as many steps as the quickstart was told to."""
    for item in reversed(args.overrides):
        if item.startswith("train.total_steps="):
            return int(item.split("=", 1)[1])
    from ddpm_dist.config import load_config

    return int(load_config(str(ROOT / "configs" / "digits.yaml")).train.total_steps)


def main(argv=None) -> int:
    args = parse_args(argv)
    from ddpm_dist.eval import EvalError

    return run_main(lambda: print(result_json(measure(args))), one_line_faults=(BenchError, EvalError))


def measure(args) -> dict:
    """Train, sample and score (and the peer with ``--peer``); the JSON document. Raises BenchError, EvalError."""
    from ddpm_dist.eval.digits import PROTOCOL, resolve_reference

    keep = args.work_dir is not None
    with tempfile.TemporaryDirectory(prefix="ddpm_ttq_") as tmp:
        work = Path(args.work_dir).absolute() if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        trained = train(args, work)
        train_images = resolve_reference(str(work / "data"))
        runs = []
        for seed in args.seeds:
            images, wall = sample(args, trained["checkpoint"], work, seed)
            runs.append({"seed": seed, "sample_wall_s": round(wall, 1), **score_both(images, train_images)})
        pick = np.random.default_rng(0).choice(len(train_images), min(args.num_samples, len(train_images)), False)
        floor = score_both(train_images[np.sort(pick)], train_images)
        total = time.perf_counter() - t0
        peer = run_peer(args, work) if args.peer else None
        if not keep:
            trained["checkpoint"] = Path(trained["checkpoint"]).name
    result = {
        "budget_s": args.budget,
        "workers": args.workers,
        "overrides": args.overrides,
        "train": trained,
        "sampler": f"ddim-{args.sample_steps}",
        "num_samples": args.num_samples,
        "seeds": runs,
        "mean": seed_means(runs),
        "floor": floor,
        "total_wall_s": round(total, 1),
        "protocol": PROTOCOL,
        "work_dir": str(work) if keep else None,
    }
    if peer is not None:
        result["peer"] = peer
        result["fd_vs_train_ratio_to_peer"] = round(result["mean"]["fd_vs_train"] / peer["mean"]["fd_vs_train"], 3)
    return result


if __name__ == "__main__":
    sys.exit(main())
