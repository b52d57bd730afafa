"""Relaunch-to-first-step seconds with and without the keyed compile cache (ddpm_dist/train/compile_cache.py).

Each launch is ``launch/run_8p.sh`` with 2 msrun workers (what a MAX_RESTARTS restart runs), timed from the launcher's
start to the first trained step in rank 0's log; ``compile_s`` is the trainer's own figure for that first step
(mostly graph compilation). Three launches of the same config: the cache off, the cache on and empty (it is written),
the cache on and filled (a relaunch). Then the final weights of the last two are compared bitwise. Prints JSON::

    python bench/relaunch.py                       # configs/digits.yaml (16 px U-Net), model.dropout=0
    python bench/relaunch.py --config configs/cifar.yaml --image-size 32

Dropout 0: with dropout the per-op seeds depend on the start step, which then joins the cache key, so a restart
from a newer checkpoint compiles again (a fresh start or a restart from the same checkpoint still hits).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, BenchError, env, free_port, run_checked

from ddpm_dist.cli_util import run_main


def launch(work: Path, config: str, data: Path, cache: str, extra: list[str]) -> dict:
    logs = work / "logs"
    cmd = ["bash", str(ROOT / "launch" / "run_8p.sh"), config, f"data.path={data}", "model.dropout=0",
           "train.total_steps=3", "train.ckpt_every=0", f"run.out_dir={work / 'run'}", f"run.compile_cache={cache}",
           *extra]  # fmt: skip
    e = env(DEVICE_NUM="2", MASTER_PORT=str(free_port()), LOG_DIR=str(logs),
            DDPM_COMPILE_CACHE_DIR=str(work.parent / "cache"))  # fmt: skip
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    while proc.poll() is None:
        log = logs / "worker_0.log"
        if first is None and log.is_file() and "first step (graph compile)" in log.read_text(errors="replace"):
            first = time.time() - t0
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode:
        raise BenchError(f"launch ({cache}) failed ({proc.returncode}): {out[-800:]}")
    text = (logs / "worker_0.log").read_text(errors="replace")
    compile_s = float(text.split("first step (graph compile) took ")[1].split("s")[0])
    return {"relaunch_to_first_step_s": round(first or time.time() - t0, 2), "compile_s": compile_s}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    args = p.parse_args()

    def work():
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = tmp / "data"
            run_checked([sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", "digits", "--output",
                         str(data), "--image-size", str(args.image_size)], what="prepare_data")  # fmt: skip
            extra = [f"train.global_batch={args.batch}", "run.log_every=1", "run.sample_every=0"]
            off = launch(tmp / "off", args.config, data, "false", extra)
            cold = launch(tmp / "cold", args.config, data, "true", extra)
            warm = launch(tmp / "warm", args.config, data, "true", extra)
            sys.path.insert(0, str(ROOT / "tests"))
            from train_helpers import final_state

            a, b = final_state(tmp / "cold" / "run"), final_state(tmp / "warm" / "run")
            equal = set(a) == set(b) and all((a[k] == b[k]).all() for k in a)
            print(json.dumps({
                "config": Path(args.config).name, "image_size": args.image_size, "global_batch": args.batch,
                "workers": 2, "no_cache": off, "cache_empty": cold, "cache_filled": warm,
                "cached_run_bitwise_equal": bool(equal),
                "cache_dirs": len(list((tmp / "cache").iterdir())),
            }, indent=1))  # fmt: skip

    return run_main(work, one_line_faults=(BenchError,))


if __name__ == "__main__":
    sys.exit(main())
