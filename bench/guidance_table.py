"""Classifier-free guidance on the class-conditional quickstart: class accuracy and digits FD per guidance scale.

    python bench/guidance_table.py --work-dir runs/guidance --out bench/results/guidance_digits.json
    python bench/guidance_table.py --work-dir runs/guidance --reuse      # score again what the work dir holds

1. ``CONFIG=configs/digits_cond.yaml bash launch/quickstart.sh`` (bench/time_to_quality.py's ``train``, no budget:
   the config's 600 steps, as long as the quickstart trains), 2 msrun workers; with ``--reuse`` an existing run of
   the work directory at that step is kept.
2. ``tools/sample.py --labels balanced --guidance S`` for every S of ``--guidance`` and every seed of ``--seeds``
   (``--num-samples`` each, ``--sampler`` with ``--sample-steps``, default DPM-Solver++(2M) 15 steps: the quickstart's
   DDIM-100 quality at a seventh of the cost, bench/results/sampling_quality_quickstart.json); with ``--reuse``
   existing samples of the same settings are kept.
3. The digits metric of each (S, seed) against the held-out real digits, with the requested labels: the classifier's
   accuracy on them (``class_accuracy``), FD, the mean per-class FD, confidence and class entropy.

The unconditional quickstart's digits FD with the same sampler and protocol is read from
bench/results/sampling_quality_quickstart.json (``baseline``; another training run of the same recipe). Prints one
JSON document (``measured`` first); ``--out`` writes it too. Errors: one line, non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import ROOT, BenchError, result_json, run_checked
from time_to_quality import train

from ddpm_dist.cli_util import run_main

CONFIG = ROOT / "configs" / "digits_cond.yaml"
BASELINE = ROOT / "bench" / "results" / "sampling_quality_quickstart.json"
TARGET_ACCURACY = 0.97  # the bar: this class accuracy at a digits FD no worse than the unconditional one


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--guidance", default="0,1,1.25,1.5,2,3,5", help="comma-separated scales S (default 0,1,1.25,1.5,2,3,5)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling seeds (default 0 1)")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per (S, seed) (default 1000)")
    p.add_argument("--sampler", default="dpm++2m", help="tools/sample.py --sampler (default dpm++2m)")
    p.add_argument("--sample-steps", type=int, default=15, help="its steps (default 15)")
    p.add_argument("--batch-size", type=int, default=250, help="sampler batch (default 250)")
    p.add_argument("--workers", type=int, default=2, help="msrun workers of the training (default 2)")
    p.add_argument("--master-port", type=int, default=8233, help="msrun scheduler port (default 8233)")
    p.add_argument("--work-dir", help="keep the data, run and samples here (default: a temporary directory)")
    p.add_argument("--reuse", action="store_true", help="keep a finished run and samples found in --work-dir")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("overrides", nargs="*", help="dotted config overrides for configs/digits_cond.yaml")
    args = p.parse_args(argv)
    args.config, args.budget = CONFIG, 0.0
    try:
        args.scales = [float(s) for s in args.guidance.split(",")]
    except ValueError:
        p.error(f"--guidance: expected comma-separated numbers (got {args.guidance!r})")
    return args


def trained_run(args, work: Path) -> dict:
    """The run's newest checkpoint (training it unless ``--reuse`` finds one at the config's total steps)."""
    from ddpm_dist import checkpoint
    from ddpm_dist.config import load_config

    total = load_config(str(CONFIG), args.overrides).train.total_steps
    index = checkpoint.read_index(checkpoint.checkpoint_dir(str(work / "run"))) if args.reuse else None
    if index and int(index[-1]["step"]) == total:
        ckpt = checkpoint.checkpoint_dir(str(work / "run")) / index[-1]["file"]
        return {"steps": total, "checkpoint": str(ckpt), "reused": True}
    return train(args, work)


def draw(args, ckpt: str, work: Path, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(images, labels, seconds or None if reused) of one (S, seed)."""
    out = work / f"samples_g{scale:g}_seed{seed}"
    settings = out / "samples.json"
    want = {"guidance": scale, "seed": seed, "num_samples": args.num_samples, "sampler": args.sampler,
            "steps": args.sample_steps, "ckpt": ckpt}  # fmt: skip
    wall = None
    if not (args.reuse and settings.is_file() and _matches(json.loads(settings.read_text()), want)):
        cmd = [sys.executable, str(ROOT / "tools" / "sample.py"), "--ckpt", ckpt, "--out", str(out), "--sampler",
               args.sampler, "--steps", str(args.sample_steps), "--num-samples", str(args.num_samples),
               "--batch-size", str(args.batch_size), "--seed", str(seed), "--labels", "balanced", "--guidance",
               str(scale), "--no-progress", "--overwrite", "--grid", "100"]  # fmt: skip
        t0 = time.perf_counter()
        run_checked(cmd, what=f"sampling S={scale:g} seed {seed}", tail=400, cwd=work)
        wall = round(time.perf_counter() - t0, 1)
    with np.load(out / "samples.npz") as data:
        return data["arr_0"], data["arr_1"], wall


def _matches(settings: dict, want: dict) -> bool:
    return all(settings.get(k) == v for k, v in want.items())


def score(images: np.ndarray, labels: np.ndarray) -> dict:
    from ddpm_dist.eval.digits import digits_scores

    s = digits_scores(images, labels=labels)
    keys = ("class_accuracy", "fd", "fd_class_mean", "confidence", "class_entropy")
    return {k: round(float(s[k]), 4) for k in keys}


def baseline(args) -> dict | None:
    """The unconditional quickstart's scores with the same sampler, from its recorded sampling bench."""
    name = f"{args.sampler}-{args.sample_steps}"
    for run in json.loads(BASELINE.read_text())["runs"]:
        found = run.get("settings", {}).get(name)
        if found:
            return {"source": str(BASELINE.relative_to(ROOT)), "sampler": name, "fd_mean": round(found["fd_mean"], 4),
                    "fd": [round(s["fd"], 4) for s in found["scores"]],
                    "confidence_mean": round(found["confidence_mean"], 4)}  # fmt: skip
    return None


def measure(args) -> dict:
    keep = args.work_dir is not None
    with tempfile.TemporaryDirectory(prefix="ddpm_guidance_") as tmp:
        work = Path(args.work_dir).absolute() if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        trained = trained_run(args, work)
        drawn = {
            (s, seed): draw(args, trained["checkpoint"], work, s, seed) for s in args.scales for seed in args.seeds
        }
        rows = []
        for s in args.scales:
            seeds = [{"seed": seed, "sample_wall_s": drawn[s, seed][2], **score(*drawn[s, seed][:2])}
                     for seed in args.seeds]  # fmt: skip
            mean = {f"{k}_mean": round(float(np.mean([r[k] for r in seeds])), 4)
                    for k in ("class_accuracy", "fd", "fd_class_mean", "confidence")}  # fmt: skip
            rows.append({"guidance": s, **mean, "seeds": seeds})
    fit = [r for r in rows if r["class_accuracy_mean"] >= TARGET_ACCURACY]
    best = min(fit, key=lambda r: r["fd_mean"]) if fit else max(rows, key=lambda r: r["class_accuracy_mean"])
    base = baseline(args)
    return {
        "config": str(CONFIG.relative_to(ROOT)),
        "overrides": args.overrides,
        "train": trained,
        "sampler": f"{args.sampler}-{args.sample_steps}",
        "num_samples": args.num_samples,
        "labels": "balanced",
        "rows": rows,
        "best": {
            "rule": f"lowest FD with class accuracy >= {TARGET_ACCURACY}",
            "guidance": best["guidance"],
            "class_accuracy_mean": best["class_accuracy_mean"],
            "fd_mean": best["fd_mean"],
            "fd_over_baseline": round(best["fd_mean"] / base["fd_mean"], 3) if base else None,
        },
        "baseline": base,
        "work_dir": str(work) if keep else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from ddpm_dist.eval import EvalError

    def body() -> None:
        text = result_json(measure(args))
        if args.out:
            Path(args.out).write_text(text + "\n", encoding="utf-8")
        print(text)

    return run_main(body, one_line_faults=(BenchError, EvalError))


if __name__ == "__main__":
    sys.exit(main())
