"""run.profile=START:END: MindSpore's profiler captures a window of steps into <run dir>/profile, training goes on."""

from __future__ import annotations

import csv
import json

import pytest
from train_helpers import TINY, final_state, prepare_digits, run_train


@pytest.mark.parametrize("value", ["5", "3:2", "0:2", "a:b", "2:"])
def test_bad_profile_window_is_one_line_and_exit_2(value):
    res = run_train("--config", TINY, "--dry-run", f"run.profile={value}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.profile: expected START:END" in lines[0]


def test_profile_ranks_choices():
    res = run_train("--config", TINY, "--dry-run", "run.profile=1:2", "run.profile_ranks=rank1")
    assert res.returncode == 2 and "run.profile_ranks: must be one of rank0, all" in res.stderr


@pytest.mark.slow
def test_profiled_window_is_written_and_training_continues(tmp_path):
    data = prepare_digits(tmp_path / "digits8")
    run_dir = tmp_path / "run"
    res = run_train("--config", TINY, f"data.path={data}", f"run.out_dir={run_dir}", "run.profile=2:3",
                    "train.total_steps=6")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "profiling steps 2..3" in res.stdout and "done: step 6" in res.stdout
    assert int(final_state(run_dir)["global_step"].reshape(-1)[0]) == 6  # steps after the window still train
    runs = list((run_dir / "profile").glob("rank_0_*"))
    assert len(runs) == 1, list((run_dir / "profile").iterdir())
    trace = json.loads((runs[0] / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").read_text())
    assert any(e.get("ph") == "X" for e in trace)  # timed events, not only metadata
    tables = list((runs[0] / "FRAMEWORK").glob("cpu_op_type_info_*.csv"))
    assert tables
    with open(tables[0], newline="") as f:
        ops = {row["op_type"]: row for row in csv.DictReader(f)}
    assert "Conv2D" in ops and float(ops["Conv2D"]["total_compute_time"]) > 0  # the U-Net's step was captured


@pytest.mark.slow
@pytest.mark.distributed
def test_profile_ranks_all_profiles_every_msrun_worker(tmp_path):
    import subprocess

    from train_helpers import ROOT, env, free_port, worker_logs

    data = prepare_digits(tmp_path / "digits8")
    run_dir = tmp_path / "run"
    launch = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, f"data.path={data}", f"run.out_dir={run_dir}",
         "run.profile=3:4", "run.profile_ranks=all", "train.total_steps=5", "train.ckpt_every=0"],
        env=env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(free_port()), "LOG_DIR": str(tmp_path / "logs")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert launch.returncode == 0, launch.stderr + worker_logs(tmp_path / "logs")
    for rank in (0, 1):
        runs = list((run_dir / "profile").glob(f"rank_{rank}_*"))
        assert len(runs) == 1 and (runs[0] / "ASCEND_PROFILER_OUTPUT" / "trace_view.json").is_file(), rank
    assert int(final_state(run_dir)["global_step"].reshape(-1)[0]) == 5
