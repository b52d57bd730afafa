"""Device-only hazards (docs/devices.md), made visible on CPU: the overflow detector per device and overflow mode and
its start-up self-check, the keyed-noise check at start-up, no ``nan_to_num`` in the step graph, the FID cache key's
numerics, cross-rank agreement of the norm and of the weights at checkpoints, the auto device's reason, the float16
attention logits and the environment ``run_mpi.sh`` forwards."""

from __future__ import annotations

import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops
from train_helpers import ROOT, TINY, env, prepare_digits, run_msrun, worker_logs

from ddpm_dist.train.overflow import (
    FEATURE_910A,
    FEATURE_A2,
    MODE_VAR,
    NORM,
    STATUS,
    FiniteCheck,
    OverflowCheckError,
    OverflowProbe,
    check_overflow_detection,
    overflow_mode,
)

WORKERS = ROOT / "tests" / "workers"


@pytest.fixture(scope="module")
def digits8(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp("data") / "digits8")


# ---------------------------------------------------------------- hazard 1: which detector, and its self-check
def _soc(*features):
    return lambda feature: feature in features


@pytest.mark.parametrize(
    "device,features,env_mode,results,detector",
    [
        ("Ascend", (FEATURE_910A,), None, "saturation", STATUS),  # Atlas training series: saturation only
        ("Ascend", (FEATURE_910A,), "INFNAN_MODE", "saturation", STATUS),  # the variable cannot change a 910A
        ("Ascend", (FEATURE_A2,), None, "inf/nan", NORM),  # A2/A3 default
        ("Ascend", (FEATURE_A2,), "INFNAN_MODE", "inf/nan", NORM),
        ("Ascend", (FEATURE_A2,), "SATURATION_MODE", "saturation", STATUS),
        ("GPU", (), "SATURATION_MODE", "inf/nan", NORM),
        ("CPU", (FEATURE_910A,), None, "inf/nan", NORM),  # the SoC query only counts on Ascend
    ],
)
def test_the_detector_follows_the_device_and_its_overflow_mode(device, features, env_mode, results, detector):
    mode = overflow_mode(device, supports=_soc(*features), env={MODE_VAR: env_mode} if env_mode else {})
    assert (mode.device, mode.results, mode.detector) == (device, results, detector)
    check = FiniteCheck(mode=mode, rank=0, world_size=1)
    assert check.status == (detector == STATUS)  # the status-register ops are in the Cell exactly then
    assert hasattr(check, "get_status") == (detector == STATUS)


def test_the_soc_query_is_mindspores_own():
    """The features asked are the ones mindspore.amp._all_finite asks (read from the installed package)."""
    import inspect

    import mindspore.amp as amp

    src = inspect.getsource(amp)
    assert f'"{FEATURE_910A}"' in src and f'"{FEATURE_A2}"' in src and "'MS_ASCEND_CHECK_OVERFLOW_MODE'" in src
    assert overflow_mode("CPU").detector == NORM


class _AlwaysFinite(FiniteCheck):
    def construct(self, grads):
        return self.global_norm(grads), Tensor(True, ms.bool_)


class _Saturating(OverflowProbe):
    """What a device in saturation mode computes: an overflow becomes +-65504, a nan becomes 0."""

    def produce(self, a, b):
        y = ops.div(a, b)
        y = ops.select(ops.isnan(y), ops.zeros_like(y), y)
        return ops.clip_by_value(y, -65504.0, 65504.0)


def test_the_overflow_self_check_passes_on_cpu_and_fails_loudly_with_a_detector_that_always_says_finite(cpu_graph):
    mode = overflow_mode("CPU")
    assert check_overflow_detection(FiniteCheck(mode=mode, rank=0, world_size=1)) == mode.describe()
    with pytest.raises(OverflowCheckError) as err:
        check_overflow_detection(_AlwaysFinite(mode=mode, rank=0, world_size=1))
    line = str(err.value)
    assert "\n" not in line and "overflow self-check failed on CPU" in line and "grad norm" in line
    assert "an fp16 overflow (60000 / 0.25) was judged finite" in line and "train.amp_level=O0" in line


def test_an_emulated_saturation_is_invisible_to_the_norm_and_the_self_check_says_what_to_set(cpu_graph):
    mode = overflow_mode("Ascend", supports=_soc(FEATURE_A2), env={MODE_VAR: "INFNAN_MODE"})  # the norm detector
    check = FiniteCheck(mode=mode, rank=0, world_size=1)
    # IEEE results: the overflow and the nan reach the gradients, and the norm sees them
    with np.errstate(over="ignore", invalid="ignore"):
        ieee = np.array([60000.0, 0.0], np.float16) / np.array([0.25, 0.0], np.float16)
    assert np.isinf(ieee[0]) and np.isnan(ieee[1])
    _, finite = check((Tensor(ieee.astype(np.float32)),))
    assert not bool(finite.asnumpy())
    # saturated results: +-65504 and 0 are finite, so the norm (and the loss scale) never learn of the overflow
    saturated = np.nan_to_num(np.clip(ieee.astype(np.float32), -65504, 65504), nan=0.0)
    assert saturated.tolist() == [65504.0, 0.0]
    norm, finite = check((Tensor(saturated),))
    assert bool(finite.asnumpy()) and float(norm.asnumpy()) == 65504.0
    # so on a saturating device the start-up self-check stops the norm detector, naming the variable to set
    with pytest.raises(OverflowCheckError) as err:
        check_overflow_detection(check, probe=_Saturating(check))
    line = str(err.value)
    assert "overflow self-check failed on Ascend (Ascend A2/A3, inf/nan results" in line
    assert f"set {MODE_VAR}=SATURATION_MODE on every rank" in line and "\n" not in line


@pytest.mark.slow
def test_a_detector_that_cannot_see_overflows_stops_the_run_before_the_first_step(digits8, tmp_path):
    res = _fault_run("always_finite", digits8, tmp_path)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: overflow self-check failed on CPU")
    assert "first step" not in res.stdout and not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- hazard 2: keyed noise checked at start-up
@pytest.mark.slow
def test_a_broken_keyed_noise_hash_stops_the_run_at_start_up_not_at_the_first_grid(digits8, tmp_path):
    res = _fault_run("broken_hash", digits8, tmp_path, "run.sample_every=1000")
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: keyed noise self-check failed on CPU")
    assert "first step" not in res.stdout and not (tmp_path / "run" / "checkpoints").exists()


def _fault_run(fault, digits8, tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, str(WORKERS / "device_faults.py"), fault, "--config", TINY, f"data.path={digits8}",
         f"run.out_dir={tmp_path / 'run'}", "train.total_steps=2", "train.ckpt_every=1", *overrides],
        env=env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


# ---------------------------------------------------------------- hazards 1-3, 6: one clean run read back
@pytest.fixture(scope="module")
def clean_run(digits8, tmp_path_factory):
    """Two steps with sampling on, every graph of the process dumped as IR after its last pass (~20 MB; all passes:
    ~570 MB)."""
    tmp = tmp_path_factory.mktemp("clean")
    res = subprocess.run(
        [sys.executable, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={digits8}",
         f"run.out_dir={tmp / 'run'}", "train.total_steps=2", "train.ckpt_every=0", "run.sample_every=2",
         "run.num_samples=2", "run.sample_steps=2", "run.device=auto"],
        env=env() | {"MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_DUMP_IR_PASSES": "validate",
                     "MS_DEV_SAVE_GRAPHS_PATH": str(tmp / "ir")},
        capture_output=True, text=True, timeout=900, cwd=tmp,
    )  # fmt: skip
    yield res, tmp / "ir"
    shutil.rmtree(tmp / "ir", ignore_errors=True)


@pytest.mark.slow
def test_the_compiled_step_holds_no_nan_to_num(clean_run):
    res, ir = clean_run
    assert res.returncode == 0, res.stderr
    dumps = {p: p.read_text(errors="replace") for p in ir.rglob("*.ir")}
    step_graphs = [p for p, text in dumps.items() if "Adam" in text]
    assert step_graphs, "no IR of the train step was dumped"
    assert not [p.name for p, text in dumps.items() if "NanToNum" in text]


@pytest.mark.slow
def test_the_first_lines_name_the_device_the_overflow_mode_and_why_auto_chose_cpu(clean_run):
    res, _ = clean_run
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    first_step = next(i for i, line in enumerate(lines) if line.startswith("first step"))
    device = next(i for i, line in enumerate(lines) if line.startswith("device CPU:"))
    noise = next(i for i, line in enumerate(lines) if line.startswith("keyed noise self-check passed on CPU"))
    assert device < first_step and noise < first_step
    assert "inf/nan results, overflow detected by the grad norm; overflow self-check passed" in lines[device]
    fallback = next(line for line in lines if line.startswith("run.device=auto fell back to CPU: "))
    assert "Ascend: " in fallback and "GPU: " in fallback


def test_auto_device_names_the_load_error_and_an_explicit_device_fails_with_it():
    from ddpm_dist.config import ConfigError
    from ddpm_dist.device import resolve_device, unavailable_reason

    class NoCann:
        def is_pkg_support_device(self, device):
            return device == "CPU"

        def load_plugin_error(self):
            return ("Load dynamic library: libmindspore_ascend.so.2 failed. libge_runner.so: cannot open shared "
                    "object file: No such file or directory\n")  # fmt: skip

    reason = unavailable_reason("Ascend", context=NoCann())
    assert "libge_runner.so: cannot open shared object file" in reason and "set_env.sh" in reason
    assert unavailable_reason("GPU", context=NoCann()) == "this MindSpore package has no GPU back end"
    assert resolve_device("auto", context=NoCann()) == "CPU"
    with pytest.raises(ConfigError, match="run.device: Ascend was requested but .*libge_runner.so"):
        resolve_device("Ascend", context=NoCann())


# ---------------------------------------------------------------- hazard 4: FID statistics keyed by numerics
def test_the_reference_cache_key_changes_with_the_device_and_its_conv_precision(cpu_graph):
    from ddpm_dist.eval.reference import Reference, cache_key, numerics

    ref = Reference("data", "dataset", "c0ffee", num=10)
    keys = {n: cache_key(ref, weights_sha256="ab" * 32, numerics_id=n)
            for n in ("CPU conv fp32", "Ascend conv hf32", "Ascend conv fp32", "GPU conv fp32")}  # fmt: skip
    assert len(set(keys.values())) == 4
    assert numerics() == "CPU conv fp32"
    assert cache_key(ref, weights_sha256="ab" * 32) == keys["CPU conv fp32"]


# ---------------------------------------------------------------- hazard 5: replicas agree
@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_on_rank_0s_norm_and_on_an_overflow_seen_by_one_rank(tmp_path):
    res = run_msrun(str(WORKERS / "finite_check.py"), str(tmp_path), log_dir=tmp_path / "logs")
    assert res.returncode == 0, res.stderr + worker_logs(tmp_path / "logs")
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert float(r0["local"]) != float(r1["local"])  # the ranks' own norms differ...
    assert r0["norm"].tobytes() == r1["norm"].tobytes()  # ...the agreed one is rank 0's, bit for bit
    np.testing.assert_allclose(float(r1["norm"]), float(r0["local"]), rtol=1e-6)
    assert bool(r0["finite"]) and bool(r1["finite"])
    assert not bool(r0["bad_finite"]) and not bool(r1["bad_finite"])  # the inf was on rank 1 only
    assert r0["mismatch"].tolist() == r1["mismatch"].tolist() == [1]


@pytest.mark.slow
@pytest.mark.distributed
def test_weights_drifting_on_one_rank_stop_the_run_at_the_checkpoint_with_one_line(digits8, tmp_path):
    run_dir = tmp_path / "run"
    res = run_msrun(
        str(WORKERS / "device_faults.py"), "drift_at_save", "--config", TINY, f"data.path={digits8}",
        f"run.out_dir={run_dir}", "train.total_steps=4", "train.ckpt_every=2",
        log_dir=tmp_path / "logs",
    )  # fmt: skip
    logs = worker_logs(tmp_path / "logs")
    assert res.returncode != 0, logs
    want = "error: replicas drifted: at step 2 the weights of rank(s) 1 differ from rank 0's"
    assert want in logs, logs
    assert not list(run_dir.glob("checkpoints/step_*.ckpt"))  # the drifted step was not saved
    assert "Traceback" not in logs


# ---------------------------------------------------------------- hazard 6: attention logits, launcher environment
def test_float16_attention_logits_do_not_overflow_before_the_scale(cpu_graph):
    from ddpm_dist.models import fp32_cells
    from ddpm_dist.models.unet import AttnBlock
    from ddpm_dist.train.amp import apply_amp

    c, w = 64, 55.0  # q_i . k_i = w^2 |h_i|^2 with |h_i|^2 ~ chi2(64) in [35, 100]: >= 1e5 unscaled, <= 4e4 scaled
    block = AttnBlock(channels=c)
    eye = np.eye(c, dtype=np.float32).reshape(c, c, 1, 1)
    block.q.weight.set_data(Tensor(eye * w))
    block.k.weight.set_data(Tensor(eye * w))
    block.proj_out.weight.set_data(Tensor(eye))
    block = apply_amp(block, level="O2", fp32_cells=fp32_cells())  # as training casts it
    x = np.random.default_rng(0).standard_normal((1, c, 4, 4)).astype(np.float32)
    out = block(Tensor(x)).asnumpy()
    assert np.isfinite(out).all()


def test_run_mpi_forwards_the_device_environment_to_remote_ranks():
    extra = {"DRY_RUN": "1", "LD_LIBRARY_PATH": "/usr/local/Ascend/lib64", "ASCEND_HOME_PATH": "/usr/local/Ascend",
             "HCCL_CONNECT_TIMEOUT": "600", MODE_VAR: "SATURATION_MODE"}  # fmt: skip
    res = subprocess.run(["bash", str(ROOT / "launch" / "run_mpi.sh"), TINY], env=env() | extra,
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    cmd = res.stdout.split()
    forwarded = {cmd[i + 1] for i, word in enumerate(cmd) if word == "-x"}
    want = {"PYTHONPATH", "GLOG_v", "LD_LIBRARY_PATH", "ASCEND_HOME_PATH", "HCCL_CONNECT_TIMEOUT", MODE_VAR}
    assert want <= forwarded
