"""bench/variance_table.py (fixed vs learned variances, docs/sampling.md) end to end on a tiny setting: both models
trained on the digits fit split, their likelihood on the test split, the sampler settings scored; a second run
reuses every step; bad flags are one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = str(ROOT / "bench" / "variance_table.py")
TINY = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--steps", "3", "--num-samples", "8", "--seeds", "0,1",
        "--nll-steps", "3", "--nll-num", "6", "--nll-check", "2", "--nll-batch", "8", "--settings", "ddpm-3",
        "--jobs", "2", "data.image_size=16", "model.attn_resolutions=[8]", "diffusion.timesteps=20",
        "train.ckpt_every=3"]  # fmt: skip


def run_bench(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("vt")
    first = run_bench("--work-dir", str(work), "--out", str(work / "out.json"), *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    again = run_bench("--work-dir", str(work), *TINY, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    return work, json.loads(first.stdout), json.loads(again.stdout)


@pytest.mark.slow
def test_the_bench_trains_both_variances_on_the_fit_split_and_scores_them(tiny_run):
    work, doc, _ = tiny_run
    assert doc["measured"] and json.loads((work / "out.json").read_text()) == doc
    for var_type in ("fixedlarge", "learned_range"):
        cfg = yaml.safe_load((work / var_type / "config.yaml").read_text())
        assert cfg["diffusion"]["var_type"] == var_type and cfg["data"]["path"] == str(work / "data" / "fit")
        model = doc["models"][var_type]
        assert model["nll"]["num_images"] == 6 and model["nll"]["nll_bpd"] > 0
        parts = model["nll"]["prior_bpd"] + model["nll"]["decoder_bpd"] + model["nll"]["kl_bpd"]
        assert parts == pytest.approx(model["nll"]["nll_bpd"], abs=2e-4)
        check = model["nll_check"]
        assert check["num_images"] == 2 and check["full_bpd"] > 0
        assert check["error_pct"] == pytest.approx(100 * (check["strided_bpd"] / check["full_bpd"] - 1), abs=0.01)
        entry = model["settings"]["ddpm-3"]
        assert len(entry["fd"]) == 2 and entry["fd_mean"] == pytest.approx(sum(entry["fd"]) / 2, abs=1e-4)
        assert 0.1 <= entry["confidence_mean"] <= 1
    manifests = {s: json.loads((work / "data" / s / "manifest.json").read_text()) for s in ("fit", "test")}
    assert (manifests["fit"]["count"], manifests["test"]["count"]) == (1200, 597)
    assert doc["floor"]["num_images"] == 8 and len(doc["floor"]["fd"]) == 2 and 0 < doc["floor"]["fd_mean"] < 20
    fixed, learned = doc["models"]["fixedlarge"]["nll"], doc["models"]["learned_range"]["nll"]
    diff = doc["nll_learned_minus_fixed"]["mean_bpd"]  # paired per image: its mean is the difference of the means
    assert diff == pytest.approx(learned["nll_bpd"] - fixed["nll_bpd"], abs=2e-4)
    fd_fixed, fd_learned = (doc["models"][v]["settings"]["ddpm-3"]["fd"] for v in ("fixedlarge", "learned_range"))
    fd_diff = doc["fd_learned_minus_fixed"]["ddpm-3"]
    assert fd_diff["per_seed"] == pytest.approx([a - b for a, b in zip(fd_learned, fd_fixed, strict=True)], abs=2e-4)
    assert fd_diff["mean"] == pytest.approx(sum(fd_diff["per_seed"]) / 2, abs=1e-4)


@pytest.mark.slow
def test_a_second_run_reuses_every_step(tiny_run):
    _, doc, again = tiny_run
    for var_type, model in again["models"].items():
        assert (model["train_s"], model["nll_s"], model["sample_s"], model["nll_check"]["seconds"]) == (0, 0, 0, 0)
        for key in ("nll", "settings"):
            assert model[key] == doc["models"][var_type][key]


@pytest.mark.parametrize(
    "args,needle",
    [(["--steps", "0"], "--steps must be >= 1"), (["--nll-steps", "1"], "--nll-steps must be 0 (the full bound)")],
)
def test_bad_flags_are_one_line_exit_2(tmp_path, args, needle):
    res = run_bench("--work-dir", str(tmp_path / "w"), *args, timeout=60)
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1 and needle in res.stderr
    assert not (tmp_path / "w").exists()
