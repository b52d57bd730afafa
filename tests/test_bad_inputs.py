"""Config and data inputs that used to end in a traceback or be accepted silently (issue 23, items 11 and 12): each is
now one line naming the key or the file."""

from __future__ import annotations

import itertools
import json
import shutil
import sys

import numpy as np
import pytest
from train_helpers import ROOT, TINY, env, run_train

import ddpm_dist.data.pipeline as pipeline
from ddpm_dist.config import ConfigError, load_config
from ddpm_dist.data import DataError
from ddpm_dist.data.convert import write_arrays
from ddpm_dist.diffusion.schedule import make_schedule, respace, space_timesteps


@pytest.mark.parametrize(
    "override,needle",
    [
        ("run.seed=-1", "run.seed: must be in [0, 2**32 - 1]"),
        ("run.seed=99999999999999999999", "run.seed: must be in [0, 2**32 - 1]"),
        ("train.lr=inf", "train.lr: must be a finite number (got inf)"),
        ("train.loss_scale_value=inf", "train.loss_scale_value: must be a finite number (got inf)"),
        ("diffusion.beta_end=nan", "diffusion.beta_end: must be a finite number"),
        ("run.out_dir=", "run.out_dir: must be a non-empty path"),
    ],
)
def test_values_mindspore_rejects_or_that_train_nothing_are_one_line(override, needle):
    res = run_train("--config", TINY, "--dry-run", override)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and needle in lines[0], res.stderr


def test_a_duplicate_yaml_key_is_refused_with_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys: a config with two ``lr:`` lines trained with the second one."""
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  lr: 0.1\n  total_steps: 5\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 4: duplicate key 'lr' \(first on line 2\)"):
        load_config(str(cfg), ["data.path=x"])
    cfg.write_text("train:\n  lr: 0.1\nrun:\n  seed: 1\ntrain:\n  total_steps: 5\n")  # a whole section twice
    with pytest.raises(ConfigError, match="line 5: duplicate key 'train'"):
        load_config(str(cfg), ["data.path=x"])


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    cfg = tmp_path / "utf16.yaml"
    cfg.write_bytes("train:\n  lr: 0.1\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="utf16.yaml: not UTF-8 text"):
        load_config(str(cfg), ["data.path=x"])


@pytest.mark.parametrize("timesteps,steps", [(1, 1), (100, 1), (2, 1)])
def test_one_step_schedules_have_a_variance_table(timesteps, steps):
    """diffusion.timesteps=1 (or a 1-step DDPM sampler) raised IndexError building the sampler's variance table."""
    base = make_schedule("linear", timesteps, beta_start=1e-4, beta_end=0.02)
    sched = respace(base, space_timesteps(timesteps, steps))
    for var_type in ("fixedlarge", "fixedsmall"):
        logvar = sched.model_log_variance(var_type)
        assert logvar.shape == (steps,) and np.isfinite(logvar).all()
    full = make_schedule("linear", 1000, beta_start=1e-4, beta_end=0.02)  # unchanged where there is a t=1
    assert full.model_log_variance("fixedlarge")[0] == np.log(full.posterior_variance[1])


def test_prepare_data_refuses_an_input_for_the_embedded_digits(tmp_path):
    import subprocess

    res = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "prepare_data.py"), "--source", "digits", "--input", str(tmp_path),
         "--output", str(tmp_path / "out")],
        env=env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "--input does not apply to --source digits" in lines[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- data
N, SIZE = 40, 8


@pytest.fixture
def data(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    path = tmp_path / "set"
    write_arrays(str(path), images, shards=2)
    return path


def _cfg(path, *overrides):
    return load_config(None, [f"data.path={path}", f"data.image_size={SIZE}", "data.channels=3",
                              "train.global_batch=8", "model.attn_resolutions=[4]", *overrides])  # fmt: skip


def test_more_data_workers_than_cpus_is_refused_at_set_up(data):
    """data.num_parallel_workers=64 failed inside MindSpore at the first batch."""
    cfg = _cfg(data, f"data.num_parallel_workers={pipeline.max_parallel_workers() + 1}")
    with pytest.raises(DataError, match="data.num_parallel_workers: .* exceeds the .* CPUs"):
        pipeline.build_train_data(cfg, rank=0, world_size=1)


@pytest.mark.parametrize("count", [N + 10, N - 10])
def test_a_manifest_whose_counts_were_edited_is_one_line(data, count):
    """Counts edited consistently pass the manifest's own sums; MindSpore then failed with 36 lines at the first batch
    (more samples) or training silently used part of the data (fewer)."""
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["files"][-1]["count"] += count - manifest["count"]
    manifest["count"] = count
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"{manifest['files'][-1]['name']}: holds .* records, manifest.json says"):
        pipeline.build_train_data(_cfg(data), rank=0, world_size=1, verify=True)


def test_a_data_set_deleted_during_training_is_one_data_error(data, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "_CHUNK_SAMPLES", 16)  # a new chunk every 2 steps
    td = pipeline.build_train_data(_cfg(data), rank=0, world_size=1)
    batches = iter(td)
    list(itertools.islice(batches, 3))
    shutil.rmtree(data)
    with pytest.raises(DataError, match="is gone \\(the data set was deleted or moved during training\\)"):
        list(itertools.islice(batches, 10))


# ---------------------------------------------------- one error vocabulary: errors.UserError and cli_util.run_main
def _library_errors() -> dict:
    """Each library error class -> the built-in base it had before UserError (kept: old ``except`` clauses match)."""
    from ddpm_dist.checkpoint import CheckpointError, CheckpointUnreadable
    from ddpm_dist.checkpoint.lock import RunDirInUse
    from ddpm_dist.diffusion.keyed_noise import KeyedNoiseMismatch
    from ddpm_dist.eval import EvalError
    from ddpm_dist.eval.weights import WeightsError
    from ddpm_dist.interop.diffusers import InteropError
    from ddpm_dist.logging import TensorBoardError
    from ddpm_dist.train.trainer import TrainingError

    value, runtime = ValueError, RuntimeError
    return {ConfigError: value, DataError: value, EvalError: value, WeightsError: value, InteropError: value,
            CheckpointError: runtime, CheckpointUnreadable: runtime, RunDirInUse: runtime,
            KeyedNoiseMismatch: runtime, TensorBoardError: runtime, TrainingError: runtime}  # fmt: skip


def test_every_library_user_error_is_a_user_error_and_keeps_its_builtin_base():
    from ddpm_dist.errors import UserError

    for cls, base in _library_errors().items():
        assert issubclass(cls, UserError) and issubclass(cls, base), cls


def test_first_line_skips_mindspores_rules_of_dashes():
    from ddpm_dist.errors import first_line

    err = RuntimeError("----------------------------------------------------\n- Kernel select failed:\n-----\nmore")
    assert first_line(err) == "Kernel select failed:"
    assert first_line(ValueError("  \n---\n")) == "ValueError" and first_line(OSError("--input: no")) == "--input: no"


def test_the_non_finite_stop_carries_its_cause_for_the_launcher():
    from ddpm_dist.errors import UserError
    from ddpm_dist.train.trainer import DeviceCheckFailed, NonfiniteLossStop, ReplicasDrifted, TrainingError

    assert NonfiniteLossStop("x").cause == "nonfinite_loss" and ConfigError("x").cause == ""
    assert DeviceCheckFailed("x").cause == "device_check" and issubclass(NonfiniteLossStop, TrainingError)
    # drifted replicas are a fault (a restart resyncs them from rank 0's checkpoint), one line, recorded as such
    assert ReplicasDrifted("x").cause == "replica_drift" and not issubclass(ReplicasDrifted, UserError)


def _raises(err: BaseException):
    def body():
        raise err

    return body


class _Tagged(ConfigError):
    cause = "tagged"


@pytest.mark.parametrize(
    "err,kwargs,code,line",
    [
        (ConfigError("a.yaml: run.seed: bad\nmore"), {}, 2, "error: a.yaml: run.seed: bad"),
        (FileNotFoundError(2, "No such file or directory"), {}, 2, "error: [Errno 2] No such file or directory"),
        (ValueError("cannot reshape"), {"also_input": (ValueError,)}, 2, "error: cannot reshape"),
        (ConfigError("bench input"), {"one_line_faults": (ConfigError,)}, 1, "error: bench input"),
        (_Tagged(""), {}, 2, "error: _Tagged"),
    ],
)
def test_run_main_turns_input_errors_into_one_line(capsys, err, kwargs, code, line):
    from ddpm_dist import cli_util

    assert cli_util.run_main(_raises(err), **kwargs) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line] and not captured.out
    assert cli_util._LAST_CAUSE == (["tagged"] if isinstance(err, _Tagged) else [])


def test_run_main_lets_a_fault_through_and_returns_the_bodys_status():
    from ddpm_dist.cli_util import run_main

    with pytest.raises(ValueError, match="a bug"):
        run_main(_raises(ValueError("a bug")))  # not input unless the entry point says so
    with pytest.raises(KeyError):
        run_main(_raises(KeyError("k")), also_input=(ValueError,))
    assert run_main(lambda: None) == 0 and run_main(lambda: 3) == 3


def test_run_main_quiets_mindspore_before_the_body(monkeypatch):
    import os

    from ddpm_dist.cli_util import run_main

    monkeypatch.delenv("GLOG_v", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # prepare_env sets it too: restored after the test
    seen = []
    assert run_main(lambda: seen.append(os.environ.get("GLOG_v")), quiet_mindspore=True) == 0
    assert seen == ["3"]
