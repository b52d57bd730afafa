"""bench/time_to_quality.py: the real quickstart path (launcher, 2 msrun workers) stopped by its budget through the
launcher's SIGTERM, then sampled for two seeds and scored with the digits metric (a tiny model, to run in a test)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_helpers import ROOT, env, free_port

BENCH = str(ROOT / "bench" / "time_to_quality.py")
TINY_MODEL = ["model.ch=16", "model.ch_mult=[1,2]", "model.attn_resolutions=[]", "train.global_batch=8",
              "run.log_every=5", "run.num_samples=4", "run.sample_steps=3", "train.ckpt_every=0"]  # fmt: skip


def run_bench(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, BENCH, *args], env=env(), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--num-samples", "1"], "--num-samples must be >= 2"),
        (["--budget", "-5"], "--budget must be >= 0"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_bad_options_are_one_line(args, needle):
    res = run_bench(*args, timeout=120)
    assert res.returncode == 2 and needle in res.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_failing_quickstart_is_one_error_line(tmp_path):
    res = run_bench("--work-dir", str(tmp_path / "w"), "train.lrr=1", timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: the quickstart exited") and "train.lrr" in lines[0]
    assert res.stdout == ""


@pytest.mark.slow
@pytest.mark.distributed
def test_the_budget_stops_the_quickstart_gracefully_and_both_seeds_are_scored(tmp_path):
    work = tmp_path / "w"
    res = run_bench("--budget", "1", "--num-samples", "12", "--sample-steps", "3", "--batch-size", "6",
                    "--master-port", str(free_port()), "--work-dir", str(work), *TINY_MODEL,
                    "train.total_steps=100000")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    train = out["train"]
    # the budget passed during start-up: SIGTERM after the first step; the workers agree every 10 steps, then save
    assert train["stopped_by_budget"] and train["steps"] >= 10 and train["steps"] % 10 == 0
    assert train["checkpoint"].endswith(f"step_{train['steps']:08d}.ckpt")
    assert "stopped by SIGTERM" in (work / "logs" / "worker_0.log").read_text()
    assert [s["seed"] for s in out["seeds"]] == [0, 1] and out["num_samples"] == 12 and out["sampler"] == "ddim-3"
    for s in out["seeds"]:
        for ref in ("vs_train", "vs_heldout"):
            assert s[ref]["fd"] > 0 and 0 < s[ref]["confidence"] <= 1 and 0 <= s[ref]["class_entropy"] <= 2.31
    assert out["seeds"][0]["vs_train"] != out["seeds"][1]["vs_train"]  # two seeds, two sample sets
    assert out["floor"]["vs_train"]["fd"] < min(s["vs_train"]["fd"] for s in out["seeds"])  # a 12-step model
    for seed in (0, 1):
        assert (work / f"samples_seed{seed}" / "samples.npz").is_file()


PEER = str(ROOT / "bench" / "peer_digits.py")


@pytest.mark.parametrize(
    "args, needle",
    [(["--budget", "0"], "give a --budget or --steps"), (["--dim-mults", "1,x"], "--dim-mults must be integers")],
)
def test_bad_peer_options_are_one_line(tmp_path, args, needle):
    res = subprocess.run([sys.executable, PEER, "--data", str(tmp_path), *args], env=env(),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and needle in res.stderr.strip().splitlines()[-1] and res.stdout == ""


@pytest.mark.slow
@pytest.mark.distributed
def test_time_to_quality_with_peer_reports_both_at_the_same_steps(tmp_path):
    pytest.importorskip("denoising_diffusion_pytorch")
    res = run_bench("--budget", "0", "--peer", "--num-samples", "6", "--sample-steps", "2", "--batch-size", "6",
                    "--master-port", str(free_port()), "--work-dir", str(tmp_path / "w"), *TINY_MODEL,
                    "train.total_steps=3")  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["train"]["steps"] == 3 and out["peer"]["train"]["steps"] == 3  # no budget: the same number of steps
    assert out["peer"]["sampler"] == out["sampler"] == "ddim-2" and out["peer"]["num_samples"] == 6
    ratio = out["mean"]["fd_vs_train"] / out["peer"]["mean"]["fd_vs_train"]
    assert out["fd_vs_train_ratio_to_peer"] == pytest.approx(ratio, abs=1e-3)
    # the peer (bench/peer_digits.py) trained, sampled and was scored with the digits metric, per seed
    peer = out["peer"]
    assert peer["peer"].startswith("denoising-diffusion-pytorch ") and [s["seed"] for s in peer["seeds"]] == [0, 1]
    for seed in peer["seeds"]:
        for ref in ("vs_train", "vs_heldout"):
            assert seed[ref]["fd"] > 0 and 0 < seed[ref]["confidence"] <= 1
    assert peer["seeds"][0]["vs_train"] != peer["seeds"][1]["vs_train"]
