"""sha256 of what a tiny CPU run produces, to show that a refactor leaves every output bit-identical.

    python bench/output_hashes.py > /tmp/hashes_before.json     # on the old tree
    python bench/output_hashes.py > /tmp/hashes_after.json      # on the new tree; the two must be equal

One process each, through the command-line entry points (so the script runs unchanged on both trees; it reads the
checkpoints back with ``ddpm_dist.checkpoint.io.read``, CRC-checked, which both trees must have): trains
configs/tiny.yaml a few steps on 8x8 digits (v-prediction and a high learning rate, so that the samplers' outputs
differ) with an EMA grid and a digits evaluation during training, then samples the EMA weights with DDPM, DDIM and
DPM-Solver++(2M), scores the DDIM samples with the digits metric and with FID (a seeded random FID Inception from
tests/eval_helpers.py). Hashes cover array contents (the checkpoint's parameter arrays, the sample arrays, the grid's
pixels) and the metric values, never file bytes that hold timestamps. Floats differ across CPUs: compare the two
JSONs of one machine, never hard-code them in a test. Dropout is 0: with tiny.yaml's 0.1, runs of one tree on a
loaded machine gave different weights after step 3 (three results in four runs), as the tests that compare training
runs bitwise also use dropout 0.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchlib import ROOT, BenchError, run_checked

from ddpm_dist.cli_util import run_main

TINY = str(ROOT / "configs" / "tiny.yaml")


def _run(*cmd: str, cwd: Path) -> None:
    run_checked(list(cmd), what=" ".join(cmd), tail=2000, cwd=cwd)


def _sha(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    return hashlib.sha256(str(array.dtype).encode() + str(array.shape).encode() + array.tobytes()).hexdigest()


def _params_sha(path: Path) -> str:
    """Over every (name, array) of a checkpoint, read like every reader does: its CRC verified."""
    from ddpm_dist.checkpoint.io import read

    arrays = read(path).arrays
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + _sha(arrays[name]).encode())
    return digest.hexdigest()


def _png_sha(path: Path) -> str:
    from PIL import Image

    return _sha(np.asarray(Image.open(path)))


def main() -> int:
    return run_main(lambda: print(json.dumps(hashes(), indent=1, sort_keys=True)), one_line_faults=(BenchError,))


def hashes() -> dict:
    """Run the tiny pipeline end to end; the hash of every output. Raises BenchError."""
    py = sys.executable
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "d8"
        _run(py, str(ROOT / "tools/prepare_data.py"), "--source", "digits", "--output", str(data),
             "--image-size", "8", cwd=tmp)  # fmt: skip
        run = tmp / "run"
        _run(py, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={data}", f"run.out_dir={run}",
             "train.total_steps=6", "train.ckpt_every=6", "run.sample_every=3", "eval.every=6", "train.lr=0.005",
             "diffusion.objective=v", "model.dropout=0",  # dropout: see the module docstring
             "eval.metric=digits", f"eval.ref={data}", "eval.num_samples=8", "eval.sample_steps=5",
             "eval.batch_size=4", "eval.splits=2", cwd=tmp)  # fmt: skip
        ckpts = sorted((run / "checkpoints").glob("step_*.ckpt"))
        out["checkpoint_params"] = _params_sha(ckpts[-1])
        for png in sorted((run / "samples").glob("*.png")):
            out[f"train_grid/{png.name}"] = _png_sha(png)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        out["train_eval_digits"] = {k: metrics[-1][k] for k in ("fd", "confidence", "class_entropy")}

        ema = tmp / "ema.ckpt"
        _run(py, str(ROOT / "tools/convert_ckpt.py"), "--input", str(ckpts[-1]), "--output", str(ema), cwd=tmp)
        out["inference_params"] = _params_sha(ema)
        for sampler, steps in (("ddpm", "0"), ("ddim", "5"), ("dpm++2m", "5")):
            dst = tmp / f"s_{sampler}"
            args = [] if steps == "0" else ["--steps", steps]
            _run(py, str(ROOT / "tools/sample.py"), "--ckpt", str(ema), "--out", str(dst), "--sampler", sampler,
                 *args, "--num-samples", "6", "--batch-size", "4", "--no-progress", "--device", "CPU",
                 cwd=tmp)  # fmt: skip
            out[f"samples/{sampler}"] = _sha(np.load(dst / "samples.npz")["arr_0"])
            out[f"grid/{sampler}"] = _png_sha(dst / "grid.png")

        ddim = str(tmp / "s_ddim" / "samples.npz")
        _run(py, str(ROOT / "tools/eval.py"), "--metric", "digits", "--samples", ddim, "--ref", str(data),
             "--out", str(tmp / "digits.json"), cwd=tmp)  # fmt: skip
        digits = json.loads((tmp / "digits.json").read_text())
        out["eval_digits"] = {k: digits[k] for k in ("fd", "confidence", "class_entropy")}

        sys.path.insert(0, str(ROOT / "tests"))
        from eval_helpers import random_inception

        inception = random_inception(tmp / "inception.ckpt")
        _run(py, str(ROOT / "tools/eval.py"), "--samples", ddim, "--ref", str(data), "--inception", str(inception),
             "--ref-num", "16", "--splits", "2", "--eval-batch-size", "4", "--cache-dir", str(tmp / "cache"),
             "--out", str(tmp / "fid.json"), "--device", "CPU", cwd=tmp)  # fmt: skip
        fid = json.loads((tmp / "fid.json").read_text())
        out["eval_fid"] = {"fid": fid["fid"], "is": fid["inception_score"]["mean"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
