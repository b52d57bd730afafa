"""The host training loop: builds the pieces from the config, feeds batches, logs, samples, checkpoints.

No tensor maths here: the step is ``TrainStep`` (compiled), statistics come from its device-side accumulators at log
intervals, and sampling is the diffusion package's compiled sampler.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .. import checkpoint, job_status, parallel
from ..checkpoint.background import BackgroundWriter
from ..checkpoint.io import embedded_config, embedded_value, load_into
from ..checkpoint.lock import RunLock
from ..config import Config, ConfigError, per_worker_batch, step_timeout_seconds, to_dict, to_yaml
from ..device import auto_fallback_note
from ..diffusion.keyed_noise import check_keyed_noise
from ..errors import INPUT_ERRORS, UserError
from ..logging import ProgressLine, TensorBoard, info, warn
from ..models import build_model, fp32_cells
from ..restarts import read_records as read_restart_records
from ..storage import probe_writable, write_text_atomic
from .amp import apply_amp, resolve_amp_level
from .hooks import EMAHooks
from .optim import lr_at
from .overflow import OverflowCheckError, check_overflow_detection
from .profiling import build_profiler
from .step import STAT_NAMES, ReadStats, build_train_step
from .watchdog import Watchdog

RANK0_LINE_FIRST_S = 5.0

# Sections that must match for a checkpoint to be resumed into this run.
COMPATIBLE_SECTIONS = ("model", "diffusion")
# keys of those sections that change how, not what, is computed: a checkpoint resumes with either value
COMPATIBLE_ANY_VALUE = ("model.recompute",)


class TrainingError(UserError, RuntimeError):
    """The run cannot go on with this config on this device (too many non-finite steps, a failed device self-check);
    the message says why and what to do. A restart would meet it again: exit 2."""


class NonfiniteLossStop(TrainingError):
    """``train.max_nonfinite`` consecutive non-finite losses; recorded for the launcher as ``nonfinite_loss``."""

    cause = "nonfinite_loss"


class DeviceCheckFailed(TrainingError):
    """A start-up self-check of a device kernel failed (docs/devices.md); recorded as ``device_check``."""

    cause = "device_check"


class ReplicasDrifted(RuntimeError):
    """The ranks' weights differ at a checkpoint (a device or collective fault, not the user's input): one line and
    a fault's exit status, so a restarting launcher relaunches from the last good checkpoint, which rank 0 then sends
    to every rank. Recorded as ``replica_drift``."""

    cause = "replica_drift"


def weight_fingerprint(params) -> np.ndarray:
    """Per-parameter (sum, sum of squares) as float64 -> float32 vector, to compare weights across ranks."""
    out = []
    for p in params:
        a = p.asnumpy().astype(np.float64)
        out += [a.sum(), (a * a).sum()]
    return np.asarray(out, np.float32)


def weight_digest(params) -> np.ndarray:
    """The first 16 bytes of the sha256 of the parameters' bytes, as 8 float32 integers < 2^16 (exact through a
    float32 all-gather): equal exactly when every bit of every parameter is."""
    h = hashlib.sha256()
    for p in params:
        h.update(np.ascontiguousarray(p.asnumpy()).tobytes())
    return np.frombuffer(h.digest()[:16], np.uint16).astype(np.float32)


def reseed_dropout(net: nn.Cell, *, seed: int, rank: int, start_step: int) -> None:
    """Give every dropout op of ``net`` its own seed derived from (seed, rank, start_step, op index).

    All ranks build the network under the same global seed (identical initial weights), which also gives every rank
    the same dropout seeds; re-creating the dropout primitives makes the masks independent across ranks, and a resumed
    run (new ``start_step``) does not replay the masks of step 0. MindSpore's dropout kernel keeps its RNG state
    internally, where it can be neither saved nor restored: dropout masks are the one random stream that differs
    between a resumed run and an uninterrupted one (everything else - weights, Adam, EMA, loss scale, data order,
    timesteps and noise - continues exactly).
    """
    for k, (_, cell) in enumerate(net.cells_and_names()):
        if isinstance(cell, nn.Dropout) and hasattr(cell, "dropout"):
            keep = 1.0 - cell.p if cell.p is not None else cell.keep_prob
            s = np.random.SeedSequence([seed, rank, start_step, k]).generate_state(2)
            fresh = ops.Dropout(float(keep), int(s[0] % 2**31), int(s[1] % 2**31))
            if "recompute" in cell.dropout.attrs:  # kept out of model.recompute: see models.layers.keep_dropout_masks
                fresh.recompute(cell.dropout.attrs["recompute"])
            cell.dropout = fresh


class StopRequest:
    """Graceful stop on SIGTERM / SIGINT (pre-emption, Ctrl-C), or when the launcher (msrun) is gone.

    The handler only sets a flag; the loop finishes the current step, saves and returns. With several workers the
    signal reaches them at slightly different times, so they agree every ``sync_every`` steps (a two-element
    all-reduce: no per-step host sync) and all stop at the same step. The same all-reduce carries rank 0's
    "a time-based checkpoint is due" (``train.ckpt_every_minutes``), so all ranks save at the same step too. Once the
    handler is installed the worker tells the launcher (state ``training`` in ``ddpm_dist/job_status.py``): from then
    on a stop request is forwarded to it; before, the launcher ends the start-up at once (nothing trained yet).
    """

    sync_every = 10

    def __init__(self, *, distributed: bool):
        self.distributed = distributed
        self.reason = ""
        self._flag = threading.Event()
        self._ppid = os.getppid()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handler)
            job_status.write("training")

    # MindSpore's runtime guards SIGINT while a graph runs and re-raises it as a SIGTERM to the process (its
    # SignalGuard: "Kill this process with SIGTERM"), so the two cannot be told apart here: name both.
    _NAMES = {signal.SIGTERM: "SIGTERM or SIGINT (Ctrl-C)", signal.SIGINT: "SIGINT (Ctrl-C)"}

    def _handler(self, signum, frame) -> None:
        if not self._flag.is_set():  # the first signal names the stop (a SIGINT may be followed by a SIGTERM)
            self.reason = self._NAMES.get(signum, signal.Signals(signum).name)
        self._flag.set()

    def local(self) -> bool:
        if self.distributed and not self._flag.is_set() and os.getppid() != self._ppid:
            self.reason = "the launcher exiting"
            self._flag.set()
        return self._flag.is_set()

    def should_stop(self, step: int) -> bool:
        return self.poll(step)[0]

    def poll(self, step: int, *, save_due: bool = False) -> tuple[bool, bool]:
        """(stop, save): whether every rank stops now, and whether every rank saves now because ``save_due`` was
        true on some rank (rank 0's clock). One process decides every step; several agree at every ``sync_every``-th
        step only (elsewhere both are False)."""
        if not self.distributed:
            return self.local(), save_due
        if step % self.sync_every:
            return False, False
        stop, save = parallel.all_reduce_host(np.array([float(self.local()), float(save_due)], np.float32)) > 0
        if stop and not self.reason:
            self.reason = "a stop request on another worker"
        return bool(stop), bool(save)


class Trainer:
    """One process's share of a (possibly data-parallel) training run.

    Args:
        cfg: the resolved config.
        device: the resolved device target (Ascend, GPU or CPU).
        data: optional iterable of (x0, t, noise) numpy batches (with the labels y for a class-conditional model)
            replacing the MindRecord pipeline (tests).
    """

    def __init__(self, cfg: Config, *, device: str, data: Iterable | None = None):
        self.cfg = cfg
        self.device = device
        self.rank, self.world_size = parallel.rank(), parallel.world_size()
        self.out_dir = Path(cfg.run.out_dir)
        self.ckpt_dir = checkpoint.checkpoint_dir(cfg.run.out_dir)
        train_cfg = cfg.train
        self.per_rank_batch = self._per_rank_batch()

        ms.set_seed(cfg.run.seed)  # the same on every rank: identical initial weights
        self.net = build_model(cfg)
        parallel.check_identical(weight_fingerprint(self.net.trainable_params()), "initial weights")
        self.amp_level = resolve_amp_level(train_cfg.amp_level, device=device)
        apply_amp(self.net, level=self.amp_level, fp32_cells=fp32_cells())

        self.train_step = build_train_step(cfg, self.net)
        self.diffusion, self.optimizer = self.train_step.diffusion, self.train_step.optimizer
        self.scaler, self.ema = self.train_step.scaler, self.train_step.ema
        self.train_step.set_train(True)
        self._device_self_checks()
        self._read_stats = ReadStats(self.train_step.stats)
        self.step = 0
        self.resumed = False
        self._writer = BackgroundWriter()  # rank 0's background checkpoint writes (train.async_save)
        self._host_copy = checkpoint.HostCopy()  # their snapshots; reused: the writer runs one write at a time
        self._last_save_time = None  # time.monotonic() of the last save (or the first step), for ckpt_every_minutes
        self._resumed_at = (0, 0)  # (step, images seen) of the checkpoint resumed, for the images seen of later ones
        # Set-up order: nothing is created in run.out_dir until every check passed. Rank 0 (the only writer) locks an
        # existing run directory before reading its checkpoints; a new one is created and locked last (_claim_run_dir).
        self._lock = RunLock(self.out_dir)
        self._resume_on_rank0()
        reseed_dropout(self.net, seed=cfg.run.seed, rank=self.rank, start_step=self.step)
        self.data = data if data is not None else self._build_data()  # checked before anything is written
        self._check_writable()
        self.tb = TensorBoard(cfg.run.out_dir, rank=self.rank)  # creates <out_dir>/tb at its first write only
        self.hooks = EMAHooks(cfg, ema_params=self.ema.ema_params, rank=self.rank, tb=self.tb)  # checks eval.*
        self.stop = StopRequest(distributed=parallel.is_distributed())
        self.profiler = build_profiler(cfg, rank=self.rank, device=device)
        # hang detection (run.step_timeout): beats after every step; compile, saves, grids, evaluations are paused
        self.watchdog = Watchdog(timeout=step_timeout_seconds(cfg.run.step_timeout), rank=self.rank)
        self._claim_run_dir()

    # ------------------------------------------------------------------ set-up
    def _per_rank_batch(self) -> int:
        """This worker's share of train.global_batch (``config.per_worker_batch``: ConfigError unless it divides)."""
        return per_worker_batch(self.cfg.train.global_batch, self.world_size, self.cfg.train.grad_accum)

    def _device_self_checks(self) -> None:
        """Start-up checks of the device kernels the run depends on (docs/devices.md): the overflow detector of the
        train step always; the keyed-noise hash when sampling or evaluation is on (before the first step, not at the
        first grid hours later)."""
        try:
            overflow = check_overflow_detection(self.train_step.finite_check)
        except OverflowCheckError as err:
            raise DeviceCheckFailed(str(err)) from None
        note = auto_fallback_note(self.cfg.run.device, self.device)
        info(f"device {self.device}: {overflow}; overflow self-check passed", rank=self.rank)
        if note:
            info(note, rank=self.rank)
        if self.cfg.run.sample_every or self.cfg.eval.every:
            info(f"keyed noise self-check passed on {check_keyed_noise()}", rank=self.rank)

    def _check_writable(self) -> None:
        """Rank 0 must be able to write the run directory; fail before training, not at the first checkpoint, and
        without creating it (a run that fails during set-up leaves no empty run directory behind). The probe writes
        1 MiB, so a full disk is found here too."""
        if self.rank != 0:
            return
        try:
            probe_writable(self.out_dir)
        except OSError as err:
            raise ConfigError(f"run.out_dir: cannot write to {self.out_dir} ({err.strerror or err})") from None

    def _claim_run_dir(self) -> None:
        """After every set-up check: rank 0 creates and locks a run directory that did not exist at start-up. Should
        checkpoints have appeared there meanwhile (another run started at the same moment), stop: this run read
        none of them."""
        if self.rank != 0 or self._lock.held:
            return
        self._lock.acquire(create=True)
        if checkpoint.stored_files(self.ckpt_dir):
            raise ConfigError(
                f"run.out_dir {self.out_dir} gained checkpoints while this run was starting (another run writing "
                "there?); run again to resume from them, or use another run.out_dir"
            )

    def _build_data(self):
        from ..data.pipeline import build_train_data

        return build_train_data(self.cfg, rank=self.rank, world_size=self.world_size, start_step=self.step, verify=True)

    def _resume_on_rank0(self) -> None:
        """Only rank 0 reads run.out_dir - with a disk per node the other nodes do not even see it, and on shared
        storage one reader beats N - and every other rank receives rank 0's whole state bit for bit (weights, Adam,
        EMA, loss scale, step: ``parallel.broadcast_host``), so all continue from the checkpoint rank 0 chose or all
        start afresh. Should rank 0 fail here (its own line says why), the others end too, with its exit status."""
        failed = None
        if self.rank == 0:
            try:
                self._lock.acquire(create=False)
                self._resume()
            except Exception as err:  # re-raised below, once the other ranks know
                failed = err
        if self.world_size == 1:
            if failed is not None:
                raise failed
            return
        code = 0 if failed is None else (2 if isinstance(failed, INPUT_ERRORS) else 1)
        head = np.array([code, self.resumed, self.step, *self._resumed_at], np.int64)
        code, resumed, step, at_step, at_images = (int(v) for v in parallel.broadcast_host([head])[0])
        if failed is not None:
            raise failed
        if code:
            time.sleep(RANK0_LINE_FIRST_S)  # rank 0's own line reaches the launcher first
            why = "rank 0 could not resume from run.out_dir (its error line says why)"
            raise checkpoint.CheckpointError(why) if code == 2 else RuntimeError(why)
        if not resumed:
            return
        params = list(self.train_step.get_parameters())
        for param, value in zip(params, parallel.broadcast_host([p.asnumpy() for p in params]), strict=True):
            param.set_data(Tensor(value))
        self.resumed, self.step, self._resumed_at = True, step, (at_step, at_images)

    def _resume(self) -> None:
        """Continue from the newest checkpoint (train.resume=auto) or the one named: every parameter of the train step
        loaded strictly, the step read from the checkpoint, after checking it is a training checkpoint of this model."""
        mode = self.cfg.train.resume
        if mode == "none":
            self._refuse_used_run_dir()
            return
        found = checkpoint.latest(self.ckpt_dir) if mode == "auto" else checkpoint.read(mode)
        if found is None:
            return
        path, meta = found.path, found.meta
        if meta.get("kind") != checkpoint.KIND_TRAIN:
            raise checkpoint.CheckpointError(f"{path}: not a ddpm-dist training checkpoint")
        self._check_compatible(path, meta)
        load_into(self.train_step, found.arrays, source=path)
        images_seen = int(meta["images_seen"])
        self.step = int(meta["step"])  # the checkpoint's own step: a run never goes back (and then overwrites)
        self._resumed_at = (self.step, images_seen)
        self._refuse_newer_checkpoints(path)
        where = self.rank if self.world_size > 1 else None
        saved_batch = embedded_value(meta, "train.global_batch", source=path)
        if saved_batch is not None and saved_batch != self.cfg.train.global_batch:
            warn(
                f"train.global_batch={self.cfg.train.global_batch}, but {path.name} was trained with "
                f"train.global_batch={saved_batch}: continuing at its step {self.step} ({images_seen} images seen), "
                f"{self.cfg.train.global_batch} images per step from here (the sample order differs from a run that "
                "kept one batch size)",
                rank=where,
            )
        if int(meta.get("world_size", self.world_size)) != self.world_size:
            warn(f"resuming a {meta.get('world_size')}-worker checkpoint with {self.world_size} workers", rank=where)
        self.resumed = True
        info(f"resumed from {path} at step {self.step}", rank=self.rank)

    def _refuse_used_run_dir(self) -> None:
        """train.resume=none starts at step 0: its saves would overwrite, and its retention delete, the checkpoints
        already in run.out_dir - and the next resume=auto would pick the old run's newest step."""
        files = checkpoint.stored_files(self.ckpt_dir)
        if not files:
            return
        try:
            newest = f"step {checkpoint.read_index(self.ckpt_dir)[-1]['step']}"
        except (checkpoint.CheckpointError, IndexError):
            newest = files[-1].name
        raise ConfigError(
            f"train.resume=none, but run.out_dir {self.out_dir} already holds checkpoints (newest: {newest}); "
            f"use a new run.out_dir to start afresh, or move {self.ckpt_dir} away"
        )

    def _refuse_newer_checkpoints(self, path: Path) -> None:
        """A run must not start below a checkpoint of its run directory that loads (e.g. train.resume=<an older
        file>): its saves would overwrite the newer ones. Corrupt newer ones, which resume=auto skipped, may go."""
        newer = checkpoint.newer_checkpoints(self.ckpt_dir, self.step)
        if newer:
            raise ConfigError(
                f"run.out_dir {self.out_dir} holds {newer[-1]['file']} (step {newer[-1]['step']}), newer than "
                f"{path} (step {self.step}) this run would continue from; resume the newest (train.resume=auto) or "
                "use a new run.out_dir"
            )

    def _check_compatible(self, path: Path, meta: dict) -> None:
        """The checkpoint's model and diffusion sections (its embedded config, read by the one rule of
        :func:`~ddpm_dist.checkpoint.io.embedded_config`) must equal this run's; else CheckpointError naming them."""
        saved, now = to_dict(embedded_config(meta, source=path)), to_dict(self.cfg)
        diffs = [
            f"{sec}.{key}"
            for sec in COMPATIBLE_SECTIONS
            for key in now[sec]
            if saved[sec][key] != now[sec][key] and f"{sec}.{key}" not in COMPATIBLE_ANY_VALUE
        ]
        if diffs:
            raise checkpoint.CheckpointError(
                f"{path}: checkpoint was trained with a different model config ({', '.join(diffs)}); "
                "use a new run.out_dir for this config"
            )

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        cfg, train_cfg = self.cfg, self.cfg.train
        self._write_run_info()
        info(
            f"training {cfg.model.arch} on {self.device} x {self.world_size} worker(s), amp {self.amp_level}, "
            f"batch {train_cfg.global_batch} ({self.per_rank_batch} per worker{self._micro_note()}), "
            f"steps {self.step}->{train_cfg.total_steps}, "
            f"run dir {self.out_dir}",
            rank=self.rank,
        )
        progress = ProgressLine(total_steps=train_cfg.total_steps, start_step=self.step, rank=self.rank)
        check_every = min(cfg.run.log_every, train_cfg.max_nonfinite)
        interval_t0, interval_step = time.perf_counter(), self.step
        compile_s = None
        saved_at = self.step if self.resumed else None
        dog = self.watchdog.start()
        for batch in self.data:  # (x0, t, noise), and the labels y for a class-conditional model
            if self.step >= train_cfg.total_steps:
                break
            self.profiler.before_step(self.step + 1)
            t0 = time.perf_counter()
            with dog.stepping():  # a wait there for a stuck peer is reported after the peer's own report
                self.train_step(*(Tensor(a) for a in batch))
            self.step += 1
            with dog.paused() if not self.profiler.done else contextlib.nullcontext():  # writing its traces
                self.profiler.after_step(self.step)
            dog.beat(self.step)
            if compile_s is None:
                compile_s = time.perf_counter() - t0
                info(f"first step (graph compile) took {compile_s:.1f}s", rank=self.rank)
                interval_t0, interval_step = time.perf_counter(), self.step
                self._last_save_time = time.monotonic()
                self._warm_host_copy()
            self._background_save_done(self._writer.poll())  # raises a failed background write's error
            if self.step % check_every == 0:
                self._check_nonfinite()
            if self.step % cfg.run.log_every == 0 or self.step == train_cfg.total_steps:
                elapsed = time.perf_counter() - interval_t0
                scalars = self._log(self.step, self.step - interval_step, elapsed)
                progress(self.step, scalars)
                job_status.write("training", step=self.step)  # the step reached, for the launcher's restart line
                interval_t0, interval_step = time.perf_counter(), self.step
            saved_at, stop = self._after_step(dog, saved_at)
            if stop:
                dog.close()
                self._stop(saved_at)
                return
        dog.close()
        self.profiler.finish()
        self._final_save(saved_at)
        if cfg.run.sample_every and self.step % cfg.run.sample_every:  # a last grid, unless sample_every is 0: never
            self.hooks.sample_grid(self.step)
        if cfg.eval.every and self.step % cfg.eval.every:
            self.hooks.evaluate(self.step)
        self.tb.close()
        info(f"done: step {self.step}, run dir {self.out_dir}", rank=self.rank)

    def _after_step(self, dog: Watchdog, saved_at: int | None) -> tuple[int | None, bool]:
        """Grid, evaluation and checkpoint due at this step (outside the hang watchdog's clock), then the agreement on
        a stop and on a time-based checkpoint. Returns (the step last saved, whether to stop)."""
        cfg, train_cfg = self.cfg, self.cfg.train
        if cfg.run.sample_every and self.step % cfg.run.sample_every == 0:
            dog.call_paused(self.hooks.sample_grid, self.step)
        if cfg.eval.every and self.step % cfg.eval.every == 0:
            dog.call_paused(self.hooks.evaluate, self.step)
        if train_cfg.ckpt_every and self.step % train_cfg.ckpt_every == 0:
            saved_at = dog.call_paused(self.save)
        stop, save_due = self.stop.poll(self.step, save_due=self._time_to_save())
        if stop:
            return saved_at, True
        if save_due and saved_at != self.step:  # every worker says so (rank=0): their logs show they agree
            info(
                f"step {self.step}: checkpoint due (train.ckpt_every_minutes={train_cfg.ckpt_every_minutes:g})", rank=0
            )
            saved_at = dog.call_paused(self.save)
        return saved_at, False

    def _write_run_info(self) -> None:
        """Rank 0: the resolved config beside the run, and the launcher's restart count (MAX_RESTARTS) so far."""
        if self.rank != 0:
            return
        write_text_atomic(self.out_dir / "config.yaml", to_yaml(self.cfg))
        self.tb.text("config", "```\n" + to_yaml(self.cfg) + "\n```")
        restarts = read_restart_records(self.out_dir)
        if restarts:
            self.tb.scalars({"run/restarts": len(restarts)}, self.step)

    def _stop(self, saved_at: int | None) -> None:
        """Save (unless this step was just saved) and say where, after a stop request."""
        self.profiler.finish()
        self._final_save(saved_at)
        self.tb.close()
        where = checkpoint.read_index(self.ckpt_dir)[-1]["file"] if self.rank == 0 else "rank 0's run dir"
        info(
            f"stopped by {self.stop.reason} at step {self.step}: checkpoint {self.ckpt_dir / where}; "
            "run the same command again (train.resume=auto) to continue",
            rank=self.rank,
        )

    def _micro_note(self) -> str:
        k = self.cfg.train.grad_accum
        return f" in {k} micro-batches of {self.per_rank_batch // k}" if k > 1 else ""

    def _check_nonfinite(self) -> None:
        run = int(self.train_step.nonfinite_run.asnumpy())
        if run >= self.cfg.train.max_nonfinite:
            self._writer.wait()  # the index the message reads includes a checkpoint still being written
            first_bad = self.step - run + 1
            good = [e for e in checkpoint.read_index(self.ckpt_dir) if e["step"] < first_bad]
            last = str(self.ckpt_dir / good[-1]["file"]) if good else f"none kept from before step {first_bad}"
            raise NonfiniteLossStop(
                f"{run} consecutive non-finite losses up to step {self.step} (train.max_nonfinite="
                f"{self.cfg.train.max_nonfinite}); last good checkpoint: {last}"
            )

    def _log(self, step: int, steps: int, elapsed: float) -> dict:
        """Read and reset the device accumulators, reduce them over ranks, write TensorBoard scalars."""
        local = self._read_stats().asnumpy()
        s = dict(zip(STAT_NAMES, parallel.all_reduce_host(local), strict=False))
        w = self.world_size
        good = s["steps"] - s["skipped"]  # summed over ranks
        scalars = {
            "train/loss": s["loss_sum"] / good if good else float("nan"),
            "train/grad_norm": s["grad_norm_sum"] / good if good else float("nan"),
            "train/skipped_steps": s["skipped"] / w,
            "train/loss_scale": float(self.scaler.value.asnumpy()),
            "train/lr": lr_at(
                max(int(self.optimizer.global_step.asnumpy().reshape(-1)[0]) - 1, 0),
                lr=self.cfg.train.lr,
                warmup_steps=self.cfg.train.warmup_steps,
                decay=self.cfg.train.lr_decay,
                total_steps=self.cfg.train.total_steps,
            ),
            "perf/step_time_s": elapsed / max(steps, 1),
            "perf/images_per_sec": self.cfg.train.global_batch * steps / elapsed if elapsed > 0 else 0.0,
        }
        for q in range(4):
            n = s[f"q{q}_n"]
            if n:
                scalars[f"loss_by_t/q{q}"] = s[f"q{q}_sum"] / n
        self.tb.scalars(scalars, step)
        return scalars

    # ------------------------------------------------------------------ checkpoints
    def _check_replicas(self) -> None:
        """Every rank's weights and EMA must be bit-identical at a checkpoint; else one line naming the step and the
        ranks, before anything is written (docs/devices.md: replicas drifting)."""
        drifted = parallel.mismatched_ranks(weight_digest([*self.net.trainable_params(), *self.ema.ema_params]))
        if drifted:
            raise ReplicasDrifted(
                f"replicas drifted: at step {self.step} the weights of rank(s) {', '.join(map(str, drifted))} differ "
                "from rank 0's; not saving this step (the previous checkpoint is the last good one)"
            )

    def save(self, *, final: bool = False) -> int:
        """Rank 0 writes the checkpoint of the current step; the others wait (bounded by run.barrier_timeout).

        Every rank's weights are first compared (:meth:`_check_replicas`). With ``train.async_save`` (and not
        ``final``) rank 0 then waits for its previous background write (raising its error), copies the state to host
        memory and hands the write to a background thread: the others wait at the barrier for that wait and copy
        only, never for the write itself. A ``final`` save (end of run, stop request) is written before it returns.
        """
        self._check_replicas()
        train_cfg = self.cfg.train
        if self.rank == 0:
            self._background_save_done(self._writer.wait())
            write = functools.partial(
                checkpoint.save,
                ckpt_dir=self.ckpt_dir,
                step=self.step,
                meta={
                    "images_seen": self._resumed_at[1] + (self.step - self._resumed_at[0]) * train_cfg.global_batch,
                    "world_size": self.world_size,
                    "config": to_yaml(self.cfg),
                },
                keep_last=train_cfg.keep_last,
                milestone_every=train_cfg.milestone_every,
            )
            if train_cfg.async_save and not final:
                state = self._host_copy.take(self.train_step)  # before the next step updates the parameters
                self._writer.submit(functools.partial(write, state), step=self.step)
            else:
                info(f"checkpoint -> {write(self.train_step)}", rank=self.rank)
        parallel.barrier(timeout=self.cfg.run.barrier_timeout, what=f"checkpoint of step {self.step}")
        self._last_save_time = time.monotonic()
        return self.step

    def _warm_host_copy(self) -> None:
        """Rank 0 with train.async_save: take one snapshot after the compile, so that the host buffers are allocated
        and paged in now, not at the first save step (0.6 s against 0.075 s for the paper U-Net's 572 MB)."""
        train_cfg = self.cfg.train
        if self.rank == 0 and train_cfg.async_save and (train_cfg.ckpt_every or train_cfg.ckpt_every_minutes):
            self._host_copy.take(self.train_step)

    def _final_save(self, saved_at: int | None) -> None:
        """At the end of the run or on a stop request: write the current step unless it was just saved, and let any
        background write finish (raising its error) before the run reports done."""
        if saved_at != self.step:
            self.save(final=True)
        elif self.rank == 0:
            self._background_save_done(self._writer.wait())

    def _background_save_done(self, outcome: tuple | None) -> None:
        if outcome is not None:
            step, path, seconds = outcome
            info(f"checkpoint -> {path} (written in the background in {seconds:.2f}s)", rank=self.rank)

    def _time_to_save(self) -> bool:
        """Rank 0: train.ckpt_every_minutes have passed since the last save (or the first step). The other ranks
        learn it through StopRequest.poll."""
        minutes = self.cfg.train.ckpt_every_minutes
        if not minutes or self.rank != 0 or self._last_save_time is None:
            return False
        return time.monotonic() - self._last_save_time >= 60.0 * minutes
