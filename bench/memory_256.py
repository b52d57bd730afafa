"""Peak memory, step time and compile time of one train step of the paper's 256 x 256 U-Net, with and without
``model.recompute`` (activation recomputation), at batch 1 and 2.

The network is the DDPM paper's 256 x 256 model (114M parameters; ch 128, ch_mult 1,1,2,2,4,4, two res blocks,
attention at 16 x 16, dropout 0), built from configs/cifar.yaml with overrides (the same settings as the 256 recipes).
Each case runs in its own child process, which builds the whole training step of ddpm-dist (``TrainStep``: loss,
loss scaling, finite check, clip, Adam, EMA), compiles it (``compile_s``), runs it once, then times ``--steps`` more
steps (``step_s``: their median). Memory is the child's resident set (Linux ``/proc/self/status``):

- ``static_mb``: RSS after the compile, before the first step: the runtime, weights, Adam moments and EMA, before
  any activation or gradient exists (``rss_built_mb``: after building the Cells, before the compile);
- ``step_peak_mb``: the peak RSS over the timed steps alone (the peak is reset after the first step, by writing 5 to
  ``/proc/self/clear_refs``), and ``peak_mb``: the whole process's ``ru_maxrss`` (compile included);
- ``activation_mb_per_sample``: (step peak - static) / batch; ``activation_mb_per_sample_delta``: the step peak at
  batch 2 minus at batch 1 (the same quantity without the static part's uncertainty).

From these, the largest per-card batch that fits a 32 GB and a 64 GB card, on paper:
``B = floor((card * usable - static_device) / activation_per_sample_device)`` with ``usable = 0.9`` (the device
memory pool's reserve and fragmentation), ``static_device`` = 22 bytes per parameter under O2 (float32 weights,
gradients, two Adam moments and EMA, 20 bytes, plus a float16 weight copy) and ``activation_per_sample_device`` = the
measured float32 (O0, CPU) activation bytes per sample (the delta when two batches ran), halved for O2 (float16
activations; GroupNorm and softmax stay float32, so halving is the optimistic end). The same for O0 (20 bytes per
parameter, float32 activations). Measured at a smaller ``data.image_size`` (256 x 256 does not fit a 24 GB machine),
the activation bytes are scaled to 256 x 256 by the pixel count (``activation_mb_per_sample_256``): every feature map
grows by it; only the attention matrices grow faster, and they are < 1% of the total here.

    python bench/memory_256.py --out bench/results/memory_256.json          # the 4 cases at 256 x 256 (> 24 GB)
    python bench/memory_256.py data.image_size=128 model.attn_resolutions=[8]   # its half-size twin (same 113.7M)
    python bench/memory_256.py --tiny --batches 1 --steps 1                 # a seconds-long check of the script
    python bench/memory_256.py --from-cases OLD.json --out NEW.json         # the derived figures again

    python bench/memory_256.py --out bench/results/memory_256.json          # the 4 cases (long: minutes per case)
    python bench/memory_256.py --tiny --batches 1 --steps 1                 # a seconds-long check of the script

Prints one JSON document (``measured`` first, see benchlib.result_json); ``--out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ROOT, BenchError, env, result_json

from ddpm_dist.cli_util import Parser, fail, run_main

CONFIG = ROOT / "configs" / "cifar.yaml"
PAPER_256 = ["model.ch_mult=[1,1,2,2,4,4]", "data.image_size=256", "model.ch=128", "model.attn_resolutions=[16]",
             "model.num_res_blocks=2", "model.dropout=0"]  # fmt: skip
TINY = ["model.ch_mult=[1,2,2]", "data.image_size=32", "model.ch=32", "model.attn_resolutions=[16]",
        "model.num_res_blocks=1", "model.dropout=0"]  # fmt: skip
PAPER_SIZE = 256
CARDS_GB = (32, 64)
USABLE = 0.9  # share of a card's memory the pool can hand to tensors
STATIC_BYTES_PER_PARAM = {"O2": 22, "O0": 20}  # fp32 weights + grads + Adam m, v + EMA (+ fp16 weight copy under O2)
ACTIVATION_FACTOR = {"O2": 0.5, "O0": 1.0}  # device activation bytes per measured fp32 byte
MB = 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", default="1,2", help="comma-separated per-step batches (default 1,2)")
    p.add_argument("--steps", type=int, default=2, help="timed steps after the first one (default 2)")
    p.add_argument("--tiny", action="store_true", help="a small U-Net at 32 x 32 instead of the 114M one (checks)")
    p.add_argument("--only", choices=("both", "on", "off"), default="both", help="recompute cases to run")
    p.add_argument(
        "--min-free-mb",
        type=float,
        default=1500,
        help="stop a case when the machine's available memory falls below this (default 1500)",
    )
    p.add_argument("--from-cases", default="", help="recompute the derived figures of an earlier result JSON")
    p.add_argument("--out", default="", help="also write the JSON document to this file")
    p.add_argument("--case", default="", help=argparse.SUPPRESS)  # child: "<batch>,<recompute 0|1>"
    p.add_argument("overrides", nargs="*", help="extra dotted config overrides")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    batches = parse_batches(args.batches)
    if not batches or min(batches) < 1 or args.steps < 1:
        return fail("--batches must be positive ints (e.g. 1,2) and --steps >= 1")
    if args.case:
        return run_main(lambda: run_case(args), quiet_mindspore=True)
    if args.from_cases:
        return run_main(lambda: from_cases(args))
    return run_main(lambda: run_all(args, batches))


def parse_batches(text: str) -> list[int]:
    """``--batches`` "1,2" -> [1, 2]; [] if any item is not an int."""
    items = text.split(",")
    return [int(b) for b in items] if all(b.strip().lstrip("-").isdigit() for b in items) else []


def overrides_of(args) -> list[str]:
    return [*(TINY if args.tiny else PAPER_256), *args.overrides]


def run_all(args, batches: list[int]) -> int:
    """Run each case in its own child process; print (and write) the JSON document; 0."""
    modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.only]
    cases = []
    for batch in batches:
        for recompute in modes:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--case", f"{batch},{int(recompute)}",
                   "--steps", str(args.steps), *(["--tiny"] if args.tiny else []), *args.overrides]  # fmt: skip
            start = time.perf_counter()
            code, stdout, stderr = run_guarded(cmd, min_free_mb=args.min_free_mb)
            if code == "memory":
                cases.append({"batch": batch, "recompute": recompute, "skipped": stderr})
                print(f"batch {batch} recompute {recompute}: {stderr}", file=sys.stderr, flush=True)
                continue
            if code:
                text = (stderr.strip() or stdout.strip())[-800:]
                raise BenchError(f"case batch {batch} recompute {recompute} failed ({code}): {text}")
            case = json.loads(stdout.strip().splitlines()[-1])
            case["wall_s"] = round(time.perf_counter() - start, 1)
            cases.append(case)
            print(f"batch {batch} recompute {recompute}: {case}", file=sys.stderr, flush=True)
            if args.out:  # the cases so far, in case a later one cannot finish
                Path(args.out).write_text(document(args, cases) + "\n")
    text = document(args, cases)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def document(args, cases: list[dict]) -> str:
    overrides = overrides_of(args)
    size = image_size(overrides)
    doc = {"config": "configs/cifar.yaml + " + " ".join(overrides), "image_size": size, "steps": args.steps,
           "device": "CPU", "cases": cases, **summary(cases, size)}  # fmt: skip
    return result_json(doc)


def image_size(overrides: list[str]) -> int:
    from ddpm_dist.config import load_config

    return load_config(str(CONFIG), ["data.path=unused", *overrides]).data.image_size


def from_cases(args) -> int:
    """``--from-cases FILE``: the derived figures again from the cases of an earlier result (its ``measured`` date
    kept); print (and write) the document; 0."""
    old = json.loads(Path(args.from_cases).read_text())
    overrides = old["config"].split(" + ", 1)[1].split()
    size = image_size(overrides)
    doc = {"measured": old["measured"], "config": old["config"], "image_size": size, "steps": old["steps"],
           "device": old["device"], "cases": old["cases"], **summary(old["cases"], size)}  # fmt: skip
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def run_guarded(cmd: list[str], *, min_free_mb: float) -> tuple:
    """Run a case; kill it if the machine's available memory drops below ``min_free_mb`` (a shared machine: the
    case must not push other processes out). Returns (exit code or "memory", stdout, stderr or the reason)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env(), cwd=ROOT)
        lowest = math.inf
        while proc.poll() is None:
            lowest = min(lowest, _available_mb())
            if lowest < min_free_mb:
                proc.kill()
                proc.wait()
                return "memory", "", f"stopped: the machine's available memory fell below {min_free_mb:.0f} MB"
            time.sleep(0.5)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read()


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return math.inf


def summary(cases: list[dict], size: int = PAPER_SIZE) -> dict:
    """Derived figures: per recompute setting the activation bytes per sample (measured at ``size``, and scaled to
    256 x 256 by the pixel count when ``size`` is smaller: every feature map grows by it) and the batches that fit on
    paper at 256 x 256, and the recompute savings / time cost at each batch measured with both settings."""
    out: dict = {}
    cases = [c for c in cases if "skipped" not in c]
    if not cases:
        return out
    by = {(c["batch"], c["recompute"]): c for c in cases}
    params = cases[0]["params"]
    for recompute in (False, True):
        name = "recompute" if recompute else "plain"
        mine = sorted((c for c in cases if c["recompute"] == recompute), key=lambda c: c["batch"])
        if not mine:
            continue
        # activation bytes per sample: the step peak's growth per added sample when two batches were measured (the
        # static part, gradients and workspace cancel), else (step peak - static) / batch, which still holds them
        act = max(c["activation_mb_per_sample"] for c in mine)
        fit = {"activation_mb_per_sample": act}
        if len(mine) >= 2 and mine[-1]["batch"] > mine[0]["batch"]:
            act = (mine[-1]["step_peak_mb"] - mine[0]["step_peak_mb"]) / (mine[-1]["batch"] - mine[0]["batch"])
            fit["activation_mb_per_sample_delta"] = round(act, 1)
        act_256 = act * (PAPER_SIZE / size) ** 2
        if size != PAPER_SIZE:
            fit["activation_mb_per_sample_256"] = round(act_256, 1)
        for level in ("O2", "O0"):
            static_mb = STATIC_BYTES_PER_PARAM[level] * params / MB
            per_sample = act_256 * ACTIVATION_FACTOR[level]
            for gb in CARDS_GB:
                fit[f"max_batch_{gb}gb_{level}"] = max(0, math.floor((gb * 1024 * USABLE - static_mb) / per_sample))
            fit[f"static_mb_{level}"] = round(static_mb)
        out[name] = fit
    for batch in sorted({c["batch"] for c in cases}):
        plain, rc = by.get((batch, False)), by.get((batch, True))
        if plain and rc:
            out[f"b{batch}_peak_saving_pct"] = round(100 * (1 - rc["step_peak_mb"] / plain["step_peak_mb"]), 1)
            out[f"b{batch}_activation_saving_pct"] = round(
                100 * (1 - rc["activation_mb_per_sample"] / plain["activation_mb_per_sample"]), 1
            )
            out[f"b{batch}_step_time_ratio"] = round(rc["step_s"] / plain["step_s"], 3)
    return out


# ------------------------------------------------------------------ child: one case
def _status_mb() -> dict:
    """VmRSS (now) and VmHWM (peak since start or the last reset) of this process, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def run_case(args) -> int:
    """Build, compile and time one (batch, recompute) case; print one JSON line; 0."""
    import mindspore as ms
    import numpy as np

    from ddpm_dist.config import load_config
    from ddpm_dist.device import setup_device
    from ddpm_dist.models import build_model, count_params
    from ddpm_dist.train.step import build_train_step

    batch, recompute = (int(v) for v in args.case.split(","))
    cfg = load_config(str(CONFIG), ["data.path=unused", *overrides_of(args), f"model.recompute={bool(recompute)}"])
    setup_device("CPU", mode="graph")
    rss_start = _status_mb()["VmRSS"]
    ms.set_seed(cfg.run.seed)
    net = build_model(cfg)
    step = build_train_step(cfg, net, grad_accum=1)
    step.set_train(True)
    rss_built = _status_mb()["VmRSS"]
    c, s, T = cfg.data.channels, cfg.data.image_size, cfg.diffusion.timesteps
    rng = np.random.default_rng(0)
    inputs = (
        ms.Tensor(rng.uniform(-1.0, 1.0, (batch, c, s, s)).astype(np.float32)),
        ms.Tensor(rng.integers(0, T, batch).astype(np.int32)),
        ms.Tensor(rng.standard_normal((batch, c, s, s)).astype(np.float32)),
    )
    start = time.perf_counter()
    step.compile(*inputs)
    compile_s = time.perf_counter() - start
    rss_compiled = _status_mb()["VmRSS"]
    start = time.perf_counter()
    step(*inputs).asnumpy()
    first_s = time.perf_counter() - start
    rss_first = _status_mb()
    _reset_peak()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = float(step(*inputs).asnumpy())
        times.append(time.perf_counter() - start)
    after = _status_mb()
    static = rss_compiled
    step_peak = after["VmHWM"]
    case = {
        "batch": batch,
        "recompute": bool(recompute),
        "params": count_params(net),
        "compile_s": round(compile_s, 2),
        "first_step_s": round(first_s, 2),
        "step_s": round(statistics.median(times), 3),
        "rss_start_mb": round(rss_start),
        "rss_built_mb": round(rss_built),
        "static_mb": round(static),
        "rss_after_first_step_mb": round(rss_first["VmRSS"]),
        "first_step_peak_mb": round(rss_first["VmHWM"]),
        "step_peak_mb": round(step_peak),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "activation_mb_per_sample": round((step_peak - static) / batch, 1),
        "loss": round(loss, 6),
    }
    print(json.dumps(case))
    return 0


if __name__ == "__main__":
    sys.exit(main())
