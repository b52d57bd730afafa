"""Gradient accumulation (train.grad_accum=K): the same update as one big batch for 1 process and 2 msrun workers,
one overflow check and one loss-scale update per optimizer step, exact resume (also with another K), images/s."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_resume import _assert_same_state, _events
from train_helpers import ROOT, TINY, env, final_state, prepare_digits, run_msrun, run_train, scalars, worker_logs

from ddpm_dist import checkpoint

DIE_AT_STEP = str(ROOT / "tests" / "workers" / "die_at_step.py")


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


COMMON = ["model.dropout=0", "train.total_steps=4", "train.ckpt_every=0", "run.log_every=2"]


@pytest.fixture(scope="module")
def one_big_batch(digits8, tmp_path_factory):
    """1 process x K=1 x batch 8: the reference every accumulated run must reproduce."""
    run_dir = tmp_path_factory.mktemp("ref") / "k1"
    res = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run_dir}", *COMMON)
    assert res.returncode == 0, res.stderr
    return final_state(run_dir)


def _assert_close_and_trained(ref: dict, got: dict) -> None:
    assert set(ref) == set(got)
    for k in ref:  # network, Adam moments and step, EMA, loss scale, statistics
        np.testing.assert_allclose(got[k], ref[k], atol=2e-5, rtol=1e-4, err_msg=k)
    assert int(got["global_step"].reshape(-1)[0]) == 4 and int(got["ema.updates"]) == 4  # 4 updates, not 8
    moved = [k for k in ref if k.startswith("ema.") and k != "ema.updates"]
    assert len(moved) > 20 and max(float(np.abs(got[k] - got[k[4:]]).max()) for k in moved) > 0


# ---------------------------------------------------------------- config errors (no MindSpore start-up)
@pytest.mark.parametrize(
    "override,needle",
    [("train.grad_accum=0", "train.grad_accum: must be >= 1"), ("train.grad_accum=3", "does not divide")],
)
def test_bad_grad_accum_is_one_line_and_exit_2(override, needle):
    res = run_train("--config", TINY, "--dry-run", override)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "train.grad_accum" in lines[0]


@pytest.fixture(scope="module")
def two_micro_batches(digits8, tmp_path_factory):
    """1 process x K=2 x micro-batch 4, uninterrupted: (run dir, its stdout)."""
    run_dir = tmp_path_factory.mktemp("k2") / "run"
    res = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run_dir}", "train.grad_accum=2", *COMMON)
    assert res.returncode == 0, res.stderr
    return run_dir, res.stdout


# ---------------------------------------------------------------- equivalence
@pytest.mark.slow
def test_one_worker_two_micro_batches_equals_one_big_batch(one_big_batch, two_micro_batches):
    run_dir, stdout = two_micro_batches
    assert "batch 8 (8 per worker in 2 micro-batches of 4)" in stdout
    _assert_close_and_trained(one_big_batch, final_state(run_dir))
    tb = scalars(run_dir)
    for (_, img_s), (_, step_s) in zip(tb["perf/images_per_sec"], tb["perf/step_time_s"], strict=True):
        assert img_s * step_s == pytest.approx(8.0, rel=1e-3)  # images per optimizer step, not micro-batches


@pytest.mark.slow
@pytest.mark.distributed
def test_two_msrun_workers_two_micro_batches_equal_one_big_batch(digits8, one_big_batch, tmp_path):
    from train_helpers import free_port

    run_dir = tmp_path / "two"
    launch = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, f"data.path={digits8}", f"run.out_dir={run_dir}",
         "train.grad_accum=2", *COMMON],
        env=env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "logs")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    logs = worker_logs(tmp_path / "logs")
    assert launch.returncode == 0, launch.stderr + logs
    assert "x 2 worker(s)" in logs and "batch 8 (4 per worker in 2 micro-batches of 2)" in logs
    _assert_close_and_trained(one_big_batch, final_state(run_dir))


# ---------------------------------------------------------------- overflow in one micro-batch of one rank
@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_inf_in_one_micro_batch_of_one_rank_skips_the_whole_step_once(digits8, tmp_path, grad_accum):
    """An inf in one rank's batch (K=1) or in one micro-batch of it (K=2) skips the step on every rank, once."""
    run_dir = tmp_path / "run"
    res = run_msrun(
        str(ROOT / "tests" / "workers" / "inject_nonfinite.py"), "3", "--config", TINY,
        f"data.path={digits8}", f"run.out_dir={run_dir}", f"train.grad_accum={grad_accum}", "train.loss_scale=dynamic",
        "train.loss_scale_value=1024", "train.ckpt_every=0", "train.total_steps=6", "run.log_every=3",
        log_dir=tmp_path / "logs",
    )  # fmt: skip  # the inf goes into row 0 of the last rank: its first micro-batch; the second one is finite
    assert res.returncode == 0, res.stderr + worker_logs(tmp_path / "logs")
    r0, r1 = np.load(run_dir / "rank0.npz"), np.load(run_dir / "rank1.npz")
    assert int(r0["global_step"][0]) == int(r1["global_step"][0]) == 5  # 6 steps, one skipped on both ranks
    np.testing.assert_array_equal(r0["fingerprint"], r1["fingerprint"])
    np.testing.assert_array_equal(r0["ema"], r1["ema"])
    tb = scalars(run_dir)
    assert dict(tb["train/skipped_steps"]) == {3: 1.0, 6: 0.0}  # one optimizer step, not one per micro-batch
    assert dict(tb["train/loss_scale"]) == {3: 512.0, 6: 512.0}  # halved once (two halvings would give 256)
    assert all(np.isfinite(v) for _, v in tb["train/loss"])


# ---------------------------------------------------------------- kill and resume
@pytest.mark.slow
def test_sigkill_and_resume_with_two_micro_batches_is_bitwise_and_another_k_resumes_too(
    digits8, two_micro_batches, tmp_path
):
    straight = two_micro_batches[0]
    common = ["--config", TINY, f"data.path={digits8}", *COMMON, "train.ckpt_every=2", "train.grad_accum=2"]
    # SIGKILL (no clean-up) when the 4th batch is drawn: after the step-2 checkpoint, with step 3 done and lost.
    # The step-2 save is synchronous here: a background write may still be pending at the kill on a loaded machine
    # (that case is tests/test_async_save.py's).
    cmd = [sys.executable, DIE_AT_STEP, "4", "0", *common, f"run.out_dir={tmp_path / 'b'}", "train.async_save=false"]
    killed = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [e["step"] for e in checkpoint.read_index(tmp_path / "b" / "checkpoints")] == [2]
    shutil.copytree(tmp_path / "b", tmp_path / "c")

    resumed = run_train(*common, f"run.out_dir={tmp_path / 'b'}", timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert "at step 2" in resumed.stdout
    _assert_same_state(final_state(straight), final_state(tmp_path / "b"))
    a, b = _events(straight), _events(tmp_path / "b", newest_only=True)
    for tag in ["train/loss", "train/grad_norm", "train/loss_scale", "loss_by_t/q1"]:
        after = {s: v for s, v in a[tag].items() if s > 2}
        assert after and after == b[tag], tag

    # the same checkpoint resumed without accumulation (same global batch) trains on the same samples, t and noise
    # from step 2 on, so the logged trace matches up to the rounding of a mean of 8 versus a mean of two means of 4.
    # Weights are not compared elementwise: parameters whose gradient is zero in exact arithmetic (attention key
    # biases, conv biases before a GroupNorm) are moved by that rounding noise, which Adam scales up to lr-size steps.
    other_k = run_train(*common, "train.grad_accum=1", f"run.out_dir={tmp_path / 'c'}", timeout=900)
    assert other_k.returncode == 0, other_k.stderr
    assert "at step 2" in other_k.stdout and "micro-batches" not in other_k.stdout
    assert int(final_state(tmp_path / "c")["global_step"].reshape(-1)[0]) == 4
    c = _events(tmp_path / "c", newest_only=True)
    for tag in ["train/loss", "train/grad_norm", "loss_by_t/q0", "loss_by_t/q3"]:
        after = {s: v for s, v in a[tag].items() if s > 2}
        assert after and set(after) == set(c[tag]), tag
        for s in after:
            assert c[tag][s] == pytest.approx(after[s], rel=1e-4), (tag, s)
