"""Fixed vs learned reverse variances on the digits quickstart budget: likelihood and sample quality (issue #26).

    python bench/variance_table.py --work-dir runs/variance_table --out bench/results/variance_table_digits.json
    python bench/variance_table.py --jobs 2 --num-samples 500 --nll-steps 100 --nll-check 32     # the docs' table
    python bench/variance_table.py --work-dir /tmp/vt --steps 20 --num-samples 50 --nll-steps 5 --nll-num 16 \\
        --settings ddpm-5,ddim-5                                                             # a two-minute smoke run

1. Data: ``tools/prepare_data.py --source digits`` with ``--split fit`` (the 1200 digits the digits metric's
   classifier trains on) to train, and ``--split test`` (its 597 held-out digits) for the likelihood, so neither
   score sees an image the models trained on (docs/data.md).
2. Two models, one process each (``python -m ddpm_dist.train``; 1 worker x 64 gives the weights of the quickstart's
   2 msrun workers x 32): ``configs/digits.yaml`` unchanged (600 steps of batch 64, v-prediction, sigmoid betas)
   except ``data.path``, ``run.out_dir`` and ``diffusion.var_type``: ``fixedlarge`` (the default, the quickstart's)
   and ``learned_range`` (the hybrid loss L_simple + ``diffusion.vlb_weight`` (0.001) L_vlb, Nichol & Dhariwal
   2021). ``--steps`` and extra ``KEY=VALUE`` overrides change both alike.
3. Per model: the bound in bits/dim on the held-out digits (``tools/eval.py --metric nll``: the full T-term bound, or
   the strided estimate with ``--nll-steps K``; the same keyed noise for both models, so the per-image difference is
   paired), and the digits metric of ``--num-samples`` EMA samples per seed and setting against the held-out digits
   (``bench/sampling_quality.py``: respaced ancestral DDPM 25/50/100, DDIM-50, DPM-Solver++(2M)-15 by default).
   With ``--nll-steps K --nll-check N`` also the full bound of the first N held-out images, beside the estimate of
   the same images: the estimate's error on these very models.

Every step keeps its output in ``--work-dir`` and is skipped when run again with the same command (a trained
checkpoint, a result JSON holding its command), so an interrupted run continues. Prints one JSON object
(``--out``: also written there): per model ``nll`` (bits/dim, its standard error, the terms), per setting the FD of
each seed (``fd``), ``fd_mean``, ``confidence_mean``, ``class_entropy_mean``; the paired NLL and FD differences; the
floor (``--num-samples`` real training digits scored like the samples); the seconds of every step (0: reused).
Errors print one line, ``error: <message>``, on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchlib import ROOT, BenchError, result_json, run_checked

from ddpm_dist.cli_util import fail, run_main

VAR_TYPES = ("fixedlarge", "learned_range")
DEFAULT_SETTINGS = "ddpm-25,ddpm-50,ddpm-100,ddim-50,dpm++2m-15"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--work-dir", default="runs/variance_table", help="data, runs, samples (default runs/variance_table)"
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "digits.yaml"))
    p.add_argument("--steps", type=int, default=600, help="training steps of each model (default 600, the quickstart)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"sampler settings (default {DEFAULT_SETTINGS})")
    p.add_argument("--num-samples", type=int, default=1000, help="samples per seed and setting (default 1000)")
    p.add_argument("--seeds", default="0,1", help="sampling seeds (default 0,1)")
    p.add_argument("--nll-steps", type=int, default=0, help="strided NLL estimate with K terms (default 0: full bound)")
    p.add_argument("--nll-num", type=int, default=0, help="only the first N held-out images (default 0: all 597)")
    p.add_argument("--nll-check", type=int, default=0, help="with --nll-steps: also the full bound of the first N "
                   "held-out images, to measure the estimate's error on these models (default 0: no)")  # fmt: skip
    p.add_argument("--nll-batch", type=int, default=64, help="NLL images per network call (default 64)")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="2: train and evaluate the two models at "
                   "the same time (their seconds then overlap; default 1)")  # fmt: skip
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("overrides", nargs="*", help="further config overrides for both models (KEY=VALUE)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.steps < 1 or args.num_samples < 2 or min(args.nll_steps, args.nll_num, args.nll_check) < 0:
        return fail("--steps must be >= 1, --num-samples >= 2, --nll-steps, --nll-num and --nll-check >= 0")
    if args.nll_steps == 1 or args.nll_batch < 1:
        return fail("--nll-steps must be 0 (the full bound) or >= 2, --nll-batch >= 1")
    return run_main(lambda: report(args), one_line_faults=(BenchError,))


def report(args) -> int:
    doc = result_json(measure(args))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(doc + "\n")
    print(doc)
    return 0


def measure(args) -> dict:
    """Prepare, train both models, evaluate both; the JSON document (without ``measured``). Raises BenchError."""
    work = Path(args.work_dir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = {split: prepare(work / "data" / split, split) for split in ("fit", "test")}

    def one_model(var_type: str) -> dict:
        trained = train(args, work / var_type, data["fit"], var_type)
        return evaluate(args, trained, data["test"], work / var_type)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # a thread only waits on its model's child processes
        models = dict(zip(VAR_TYPES, pool.map(one_model, VAR_TYPES), strict=True))
    floor = real_floor(data["fit"], args.num_samples, args.seeds)
    difference = paired_difference(models)
    for entry in models.values():
        entry["nll"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in entry["nll"].items()
                        if k != "per_image_bpd"}  # fmt: skip
    return {
        "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT) else args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "train_data": "digits --split fit (1200 images)",
        "heldout_data": "digits --split test (597 images)",
        "num_samples": args.num_samples,
        "seeds": [int(s) for s in args.seeds.split(",")],
        "nll_terms": args.nll_steps or "full",
        "jobs": args.jobs,
        "models": models,
        "nll_learned_minus_fixed": difference,
        "fd_learned_minus_fixed": fd_difference(models),
        "floor": floor,
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "work_dir": str(work),
    }


def evaluate(args, trained: tuple[Path, float], test: Path, run_dir: Path) -> dict:
    """One model's entry: its training seconds, the bound on ``test`` (and its check), the sampler settings."""
    ckpt, train_s = trained
    model = {"train_s": train_s, "checkpoint": str(ckpt)}
    model["nll"], model["nll_s"] = nll(args, ckpt, test, run_dir)
    if args.nll_steps and args.nll_check:
        model["nll_check"] = nll_check(args, ckpt, test, run_dir, model["nll"])
    model["settings"], model["sample_s"] = {}, 0.0
    for setting in filter(None, (part.strip() for part in args.settings.split(","))):
        model["settings"][setting], seconds = quality(args, ckpt, run_dir, setting)
        model["sample_s"] = round(model["sample_s"] + seconds, 1)
    return model


def prepare(out: Path, split: str) -> Path:
    """The digits ``split`` as a prepared data set at ``out`` (kept when it is already there)."""
    if not (out / "manifest.json").is_file():
        run_checked([sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", "digits", "--split", split,
                     "--output", str(out), "--overwrite"], what=f"prepare_data --split {split}")  # fmt: skip
    return out


def train(args, run_dir: Path, data: Path, var_type: str) -> tuple[Path, float]:
    """(the checkpoint of step ``--steps``, seconds of the training process; 0.0 when it was already there)."""
    ckpt = run_dir / "checkpoints" / f"step_{args.steps:08d}.ckpt"
    if ckpt.is_file():
        return ckpt, 0.0
    cmd = [sys.executable, "-m", "ddpm_dist.train", "--config", args.config, f"data.path={data}",
           f"run.out_dir={run_dir}", f"diffusion.var_type={var_type}", f"train.total_steps={args.steps}",
           *args.overrides]  # fmt: skip
    start = time.perf_counter()
    run_checked(cmd, what=f"training {var_type}", cwd=ROOT)
    if not ckpt.is_file():
        raise BenchError(f"training {var_type} ended without {ckpt}")
    return ckpt, round(time.perf_counter() - start, 1)


def cached_run(cmd: list[str], out: Path, *, what: str, read=None) -> tuple[dict, float]:
    """(the result of ``cmd``, seconds): reused from ``out`` when it holds the result of the same command; else
    ``cmd`` runs and ``read(completed process)`` (default: its last stdout line as JSON) is kept there."""
    if out.is_file():
        kept = json.loads(out.read_text())
        if kept.get("cmd") == cmd[1:]:
            return kept["result"], 0.0
    start = time.perf_counter()
    res = run_checked(cmd, what=what, cwd=ROOT)
    seconds = round(time.perf_counter() - start, 1)
    result = read(res) if read else json.loads(res.stdout.strip().splitlines()[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cmd": cmd[1:], "result": result}))
    return result, seconds


def nll(args, ckpt: Path, data: Path, run_dir: Path, *, terms: int | None = None, num: int | None = None,
        name: str = "nll") -> tuple[dict, float]:  # fmt: skip
    """The bound of the held-out digits under ``ckpt``'s EMA weights (tools/eval.py --metric nll, seed 0):
    ``terms`` (default ``--nll-steps``; 0 the full bound) on the first ``num`` (default ``--nll-num``; 0 all)."""
    terms = args.nll_steps if terms is None else terms
    num = args.nll_num if num is None else num
    full_json = run_dir / f"{name}_eval.json"
    cmd = [sys.executable, str(ROOT / "tools" / "eval.py"), "--metric", "nll", "--ckpt", str(ckpt), "--data",
           str(data), "--batch-size", str(args.nll_batch), "--seed", "0", "--no-progress",
           "--out", str(full_json)]  # fmt: skip
    if terms:
        cmd += ["--nll-steps", str(terms)]
    if num:
        cmd += ["--num-samples", str(num)]

    def read(_res) -> dict:
        full = json.loads(full_json.read_text())
        keep = ("nll_bpd", "nll_bpd_stderr", "prior_bpd", "decoder_bpd", "kl_bpd", "num_images", "per_image_bpd")
        return {k: full[k] for k in keep if k in full}

    return cached_run(cmd, run_dir / f"{name}.json", what=f"nll of {ckpt}", read=read)


def nll_check(args, ckpt: Path, data: Path, run_dir: Path, strided: dict) -> dict:
    """The full bound of the first ``--nll-check`` images beside the strided estimate of the same images (the same
    keyed noise: the difference is the estimate's quadrature error)."""
    num = min(args.nll_check, strided["num_images"])
    full, seconds = nll(args, ckpt, data, run_dir, terms=0, num=num, name="nll_full")
    estimate = float(np.mean(strided["per_image_bpd"][:num]))
    return {"num_images": num, "full_bpd": round(full["nll_bpd"], 4), "strided_bpd": round(estimate, 4),
            "error_pct": round(100 * (estimate / full["nll_bpd"] - 1), 3), "seconds": seconds}  # fmt: skip


def quality(args, ckpt: Path, run_dir: Path, setting: str) -> tuple[dict, float]:
    """The digits metric of each seed's EMA samples of one sampler ``setting`` against the held-out digits
    (bench/sampling_quality.py, one process per setting so that an interrupted run keeps the settings done)."""
    cmd = [sys.executable, str(ROOT / "bench" / "sampling_quality.py"), "--ckpt", str(ckpt), "--settings",
           setting, "--num-samples", str(args.num_samples), "--seeds", args.seeds,
           "--metric", "digits"]  # fmt: skip
    result, seconds = cached_run(cmd, run_dir / f"quality_{setting}.json", what=f"sampling {setting} of {ckpt}")
    entry = result["settings"][setting]
    return {
        "fd": [round(s["fd"], 4) for s in entry["scores"]],
        "fd_mean": round(entry["fd_mean"], 4),
        "confidence_mean": round(entry["confidence_mean"], 4),
        "class_entropy_mean": round(entry["class_entropy_mean"], 4),
        "seconds": entry["seconds"],
    }, seconds


def real_floor(fit: Path, num_samples: int, seeds: str) -> dict:
    """What a perfect model of the training data would score: ``num_samples`` (at most 1200) real ``fit`` digits
    drawn per seed (``numpy.random.default_rng(seed)``) against the held-out digits, like the samples."""
    from ddpm_dist.eval.digits import digits_scores, resolve_reference

    images = resolve_reference(str(fit))
    n = min(num_samples, len(images))
    fds = []
    for seed in (int(s) for s in seeds.split(",")):
        pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
        fds.append(round(digits_scores(images[pick])["fd"], 4))
    return {"num_images": n, "fd": fds, "fd_mean": round(float(np.mean(fds)), 4)}


def paired_difference(models: dict) -> dict:
    """learned_range minus fixedlarge, image by image (same images, same keyed noise): mean and standard error."""
    a = np.asarray(models["learned_range"]["nll"]["per_image_bpd"])
    b = np.asarray(models["fixedlarge"]["nll"]["per_image_bpd"])
    d = a - b
    stderr = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
    return {"mean_bpd": round(float(d.mean()), 4), "stderr_bpd": None if stderr is None else round(stderr, 4)}


def fd_difference(models: dict) -> dict:
    """Per sampler setting, learned_range's digits FD minus fixedlarge's, seed by seed (a seed gives both models the
    same keyed noise, so the pairs share their randomness), and their mean."""
    out = {}
    for setting, fixed in models["fixedlarge"]["settings"].items():
        learned = models["learned_range"]["settings"].get(setting)
        if learned is None:
            continue
        per_seed = [round(a - b, 4) for a, b in zip(learned["fd"], fixed["fd"], strict=True)]
        out[setting] = {"per_seed": per_seed, "mean": round(float(np.mean(per_seed)), 4)}
    return out


if __name__ == "__main__":
    sys.exit(main())
