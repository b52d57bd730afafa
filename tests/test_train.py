"""Training: CLI and config errors, the compiled step's pieces, a single-process run read back from its files,
and the data-parallel path under msrun (2 real workers on CPU)."""

from __future__ import annotations

import importlib.util
import subprocess

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor
from train_helpers import ROOT, TINY, env, final_state, prepare_digits, run_msrun, run_train, scalars, worker_logs

from ddpm_dist.train.optim import WarmupDecayLR, lr_at


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


# ---------------------------------------------------------------- CLI and config errors (no MindSpore start-up)
@pytest.mark.parametrize(
    "override,needle",
    [
        ("train.lrr=1", "unknown key train.lrr"),
        ("model.ch=abc", "model.ch"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("diffusion.objective=score", "diffusion.objective: must be one of"),
        ("model.ch_mult=[1,2,2,2,2]", "data.image_size"),
        ("train.global_batch", "expected key=value"),
        ("eval.every=100", "eval.inception: required when eval.every > 0"),
        ("eval.num_samples=5", "eval.splits: 10 exceeds eval.num_samples 5"),
        ("model.ch_mult=[1,2", "not a valid value"),
        ("model.attn_resolutions=[3]", "model.attn_resolutions: the network has no resolution 3"),
        ("run.sample_steps=500", "run.sample_steps: 500 exceeds diffusion.timesteps 100"),
        ("eval.metric=kid", "eval.metric: must be one of fid, digits"),
        ("diffusion.beta_schedule=quad", "diffusion.beta_schedule: must be one of linear, cosine, sigmoid"),
        ("run.sampler=plms", "run.sampler: must be one of ddpm, ddim, dpm++2m"),
        ("eval.sampler=dpm", "eval.sampler: must be one of"),
        ("run.guidance=2", "run.guidance: 2 needs a class-conditional model"),
        ("train.label_dropout=1", "train.label_dropout: must be in [0, 1)"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(override, needle):
    res = run_train("--config", TINY, "--dry-run", override)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in res.stderr
    assert TINY in lines[0] or override in lines[0]  # names the config file or the override at fault


def test_unknown_key_in_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: 3\n")
    res = run_train("--config", str(bad), "--dry-run")
    assert res.returncode == 2 and str(bad) in res.stderr and "model.chanels" in res.stderr
    missing = run_train("--config", str(tmp_path / "nope.yaml"), "--dry-run")
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_empty_config_file_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    res = run_train("--config", str(empty), "--dry-run", "data.path=x")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and f"{empty}: the config file is empty" in lines[0]


def test_bad_flag_is_one_line_not_the_usage_block():
    res = run_train("--config", TINY, "--no-such-flag")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines == ["error: unrecognized arguments: --no-such-flag"], res.stderr


def test_digits_evaluation_needs_no_inception_weights_and_sigmoid_is_a_schedule():
    res = run_train(
        "--config", TINY, "--dry-run", "eval.every=5", "eval.metric=digits", "diffusion.beta_schedule=sigmoid"
    )
    assert res.returncode == 0, res.stderr
    import yaml

    cfg = yaml.safe_load(res.stdout)
    assert cfg["eval"]["metric"] == "digits" and cfg["diffusion"]["beta_schedule"] == "sigmoid"


def test_dry_run_prints_resolved_config():
    res = run_train("--config", str(ROOT / "configs" / "cifar.yaml"), "--dry-run", "train.lr=1e-4", "model.ch=64")
    assert res.returncode == 0
    import yaml

    cfg = yaml.safe_load(res.stdout)
    assert cfg["train"]["lr"] == 1e-4 and cfg["model"]["ch"] == 64 and cfg["model"]["ch_mult"] == [1, 2, 2, 2]


def test_missing_data_is_one_line(tmp_path):
    res = run_train("--config", TINY, f"data.path={tmp_path / 'none'}", f"run.out_dir={tmp_path / 'run'}")
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # a set-up error leaves no empty run directory


def test_damaged_data_file_is_one_line_before_anything_is_written(digits8, tmp_path):
    """A .mindrecord whose first 4 KB were overwritten (same size): MindSpore's "header larger than upper limit"
    traceback at the first batch, after config.yaml and tb/ were written; now the sha256 check stops it first."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits8, data)
    shard = next(data.glob("*.mindrecord"))
    with open(shard, "r+b") as f:
        f.write(bytes(range(256)) * 16)
    run = tmp_path / "run"
    res = run_train("--config", TINY, f"data.path={data}", f"run.out_dir={run}")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and f"{shard}: sha256 does not match" in lines[0], res.stderr
    assert not run.exists()  # no config.yaml, no tb/, not even an empty run directory


# ---------------------------------------------------------------- pieces of the step
@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
def test_lr_schedule_graph_matches_host(decay):
    sched = WarmupDecayLR(lr=1e-3, warmup_steps=10, decay=decay, total_steps=50)
    for step in [0, 4, 9, 10, 30, 49, 80]:
        got = float(sched(Tensor(step, ms.int32)).asnumpy())
        assert got == pytest.approx(
            lr_at(step, lr=1e-3, warmup_steps=10, decay=decay, total_steps=50), rel=1e-5, abs=1e-9
        )
    assert lr_at(0, lr=1.0, warmup_steps=10, decay="none", total_steps=50) == pytest.approx(0.1)


def test_dynamic_loss_scaler_halves_and_grows():
    from ddpm_dist.train.amp import LossScaler

    ms.set_context(mode=ms.GRAPH_MODE)
    s = LossScaler(mode="dynamic", value=1024.0, window=3)
    seen = [float(s(Tensor(f)).asnumpy()) for f in [True, False, True, True, True, False, False]]
    assert seen == [1024.0, 512.0, 512.0, 512.0, 1024.0, 512.0, 256.0]
    static = LossScaler(mode="static", value=128.0, window=2000)
    assert float(static(Tensor(False)).asnumpy()) == 128.0


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_follows_the_recurrence_with_and_without_warmup(warmup):
    """ema <- d * ema + (1 - d) * w after each update, d = min(decay, (1 + n) / (10 + n)) with warm-up."""
    from mindspore import Parameter, ParameterTuple, nn, ops

    from ddpm_dist.train.ema import EMA

    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((2, 3, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    params = [Parameter(Tensor(v), name=f"w{i}") for i, v in enumerate(init)]
    ema = EMA(params, decay=0.9, warmup=warmup)

    class SetThenAverage(nn.Cell):  # host-side set_data would detach the params from the compiled graph
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.params = ParameterTuple(params)
            self.ema = ema

        def construct(self, a, b):
            ops.assign(self.params[0], a)
            ops.assign(self.params[1], b)
            return self.ema()

    step = SetThenAverage()
    expect = [v.astype(np.float64) for v in init]
    for n in range(6):
        new = [rng.standard_normal(v.shape).astype(np.float32) for v in init]
        step(*map(Tensor, new))
        d = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        expect = [d * e + (1 - d) * w for e, w in zip(expect, new, strict=True)]
    for got, want in zip(ema.ema_params, expect, strict=True):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-6)
    assert int(ema.updates.asnumpy()) == 6


def test_the_global_norm_is_the_root_of_all_squares_and_inf_or_nan_when_any_grad_is():
    from ddpm_dist.train.step import GlobalNorm

    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3, 3, 3), (7,), (), (2, 5)]]
    want = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    norm = GlobalNorm()  # what TrainStep computes its clip and finite check from
    assert float(norm(tuple(map(Tensor, grads))).asnumpy()) == pytest.approx(want, rel=1e-6)
    for bad in [np.inf, -np.inf, np.nan]:
        broken = [g.copy() for g in grads]
        broken[0][1, 2, 0, 1] = bad
        assert not np.isfinite(float(norm(tuple(map(Tensor, broken))).asnumpy()))


# ---------------------------------------------------------------- a whole single-process run
@pytest.mark.slow
def test_single_process_run_writes_checkpoints_tensorboard_and_samples(digits8, tmp_path):
    run_dir = tmp_path / "run"
    res = run_train("--config", TINY, f"data.path={digits8}", f"run.out_dir={run_dir}", "run.sample_every=6")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "step 6/6" in res.stdout and "eta" in res.stdout
    assert (run_dir / "config.yaml").is_file()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == [
        "step_00000003.ckpt",
        "step_00000006.ckpt",
    ]
    assert (run_dir / "samples" / "ema_step_00000006.png").is_file()
    tb = scalars(run_dir)
    for tag in ["train/loss", "train/lr", "train/loss_scale", "train/grad_norm", "train/skipped_steps",
                "perf/images_per_sec", "perf/step_time_s", "loss_by_t/q0"]:  # fmt: skip
        assert [s for s, _ in tb[tag]] == [2, 4, 6], tag
    assert all(np.isfinite(v) for _, v in tb["train/loss"])
    assert tb["_images"]["samples/ema"] == [6]
    assert tb["train/lr"][0][1] == pytest.approx(1e-3)  # warm-up of 2 steps is over after step 2
    state = final_state(run_dir)
    assert int(state["global_step"].reshape(-1)[0]) == 6 and int(state["ema.updates"]) == 6
    assert any(k.startswith("moment1.") for k in state) and any(k.startswith("ema.") for k in state)


# ---------------------------------------------------------------- data parallel under msrun
@pytest.mark.slow
@pytest.mark.distributed
def test_two_msrun_workers_match_one_process_on_the_same_global_batch(digits8, tmp_path):
    common = [f"data.path={digits8}", "model.dropout=0", "train.total_steps=4", "train.ckpt_every=0"]
    one = run_train("--config", TINY, f"run.out_dir={tmp_path / 'one'}", *common)
    assert one.returncode == 0, one.stderr
    launch = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_8p.sh"), TINY, f"run.out_dir={tmp_path / 'two'}", *common],
        env=env() | {"DEVICE_NUM": "2", "MASTER_PORT": str(_port()), "LOG_DIR": str(tmp_path / "logs")},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    logs = worker_logs(tmp_path / "logs")
    assert launch.returncode == 0, launch.stderr + logs
    assert "x 2 worker(s)" in logs and "batch 8 (4 per worker)" in logs
    a, b = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert set(a) == set(b)
    nets = [k for k in a if not k.startswith(("ema.", "moment", "stats", "beta", "global_step", "learning_rate"))]
    assert len(nets) > 20
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-5, rtol=1e-4, err_msg=k)
    # and training really moved the weights (the comparison is not between two untouched inits)
    assert max(np.abs(a[k]).max() for k in nets if k.startswith("conv_out")) > 0


@pytest.mark.slow
@pytest.mark.distributed
def test_the_cpu_grad_reducer_is_one_all_reduce_equal_to_mindspores_per_parameter_one_and_broadcast_is_bitwise(
    tmp_path,
):
    res = run_msrun(str(ROOT / "tests" / "workers" / "grad_reduce.py"), str(tmp_path), log_dir=tmp_path / "logs")
    assert res.returncode == 0, res.stderr + worker_logs(tmp_path / "logs")
    for r in (0, 1):
        out = np.load(tmp_path / f"rank{r}.npz")
        assert str(out["kind"]) == "FlatGradReducer"
        for i in range(4):
            assert out[f"ours{i}"].shape == out[f"expected{i}"].shape
            np.testing.assert_allclose(out[f"ours{i}"], out[f"expected{i}"], rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(out[f"ours{i}"], out[f"theirs{i}"])  # the same sum and scale, bit for bit
    # parallel.broadcast_host: rank 0's arrays on both ranks, bit for bit (-0.0 and NaN included), dtypes kept
    spec = importlib.util.spec_from_file_location("grad_reduce", ROOT / "tests" / "workers" / "grad_reduce.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    sent = worker.to_broadcast(0)
    for r in (0, 1):
        out = np.load(tmp_path / f"rank{r}.npz")
        for i, want in enumerate(sent):
            got = out[f"bcast{i}"]
            assert got.dtype == want.dtype and got.shape == want.shape, (r, i)
            assert got.tobytes() == want.tobytes(), (r, i)


def test_mpirun_command_is_what_run_mpi_builds():
    res = subprocess.run(
        ["bash", str(ROOT / "launch" / "run_mpi.sh"), TINY, "train.lr=1e-4"],
        env=env() | {"DRY_RUN": "1", "DEVICE_NUM": "4", "NNODES": "2", "HOSTFILE": "hosts.txt"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.split()
    assert cmd[:3] == ["mpirun", "-n", "8"] and "ppr:4:node" in cmd and cmd[cmd.index("--hostfile") + 1] == "hosts.txt"
    assert cmd[-3:] == ["--config", TINY, "train.lr=1e-4"]
    assert cmd[-4].endswith("ddpm_dist/train/__main__.py")


def test_launch_scripts_reject_missing_config():
    for script in ["run_8p.sh", "run_mpi.sh"]:
        res = subprocess.run(["bash", str(ROOT / "launch" / script), "nope.yaml"], capture_output=True, text=True)
        assert res.returncode == 2 and "config file not found" in res.stderr


def _port() -> int:
    from train_helpers import free_port

    return free_port()


@pytest.mark.slow
@pytest.mark.parametrize("level", ["O1", "O2"])
def test_mixed_precision_levels_train_with_float32_master_weights(level, tmp_path):
    from ddpm_dist.config import load_config
    from ddpm_dist.device import setup_device
    from ddpm_dist.train.trainer import Trainer

    cfg = load_config(TINY, [f"train.amp_level={level}", "train.total_steps=3", "train.ckpt_every=0",
                             f"run.out_dir={tmp_path / 'run'}", "data.path=unused"])  # fmt: skip
    device = setup_device("CPU", mode="graph")
    rng = np.random.default_rng(0)
    batches = iter(
        lambda: (rng.uniform(-1, 1, (8, 1, 8, 8)).astype(np.float32), rng.integers(0, 100, 8).astype(np.int32),
                 rng.standard_normal((8, 1, 8, 8)).astype(np.float32)), None
    )  # fmt: skip
    with pytest.warns(UserWarning, match=f"amp_level={level} on CPU"):
        trainer = Trainer(cfg, device=device, data=batches)
    trainer.train()
    assert all(p.dtype == ms.float32 for p in trainer.net.trainable_params())
    state = final_state(tmp_path / "run")
    assert int(state["global_step"].reshape(-1)[0]) == 3
    assert all(np.isfinite(v).all() for k, v in state.items() if v.dtype.kind == "f")


@pytest.mark.parametrize("sample_every,grids", [(0, False), (4, True)])
def test_sample_every_0_draws_no_grid_not_even_a_final_one(tmp_path, monkeypatch, sample_every, grids):
    """run.sample_every=0 is documented as "never"; with N > 0 the last step gets a grid if it is not a multiple."""
    from ddpm_dist.config import load_config
    from ddpm_dist.device import setup_device
    from ddpm_dist.train.trainer import Trainer

    cfg = load_config(TINY, [f"run.sample_every={sample_every}", f"run.out_dir={tmp_path / 'run'}", "data.path=x"])
    trainer = Trainer(cfg, device=setup_device("CPU", mode="graph"), data=iter(()))
    drawn = []
    monkeypatch.setattr(trainer.hooks, "sample_grid", drawn.append)
    monkeypatch.setattr(trainer, "step", 3)  # as if 3 steps ran: not a multiple of 4
    trainer.train()
    assert drawn == ([3] if grids else [])


def test_warn_names_the_rank_when_given(capsys):
    from ddpm_dist.logging import warn

    warn("disk slow", rank=1)
    warn("plain")
    assert capsys.readouterr().err.splitlines() == ["warning: rank 1: disk slow", "warning: plain"]
