"""MindSpore's profiler over a window of training steps (``run.profile=START:END``).

The profiler starts before global step START runs and stops after step END (1-based, inclusive), then writes its
analysed trace to ``<run dir>/profile/rank_<r>_<pid>_<time>_ascend_ms/`` (``ASCEND_PROFILER_OUTPUT/trace_view.json``
for Perfetto / chrome://tracing / MindStudio Insight, ``FRAMEWORK/cpu_op_*`` tables of the host kernels); training
then goes on. ``run.profile_ranks`` picks rank 0 only (``rank0``) or every worker (``all``). The same switch works on
Ascend and GPU, where the device activity is captured too.
"""

from __future__ import annotations

from pathlib import Path

from ..config import profile_window
from ..logging import info


class StepProfiler:
    """Start/stop the profiler around global steps ``start..end`` of this process; a no-op when ``window`` is None.

    Args:
        window: (start, end) global steps, 1-based and inclusive, or None (off).
        out_dir: where the profiler writes (``<run dir>/profile``).
        rank: this process's rank (names its output).
        device: Ascend, GPU or CPU: which activities to capture.
    """

    def __init__(self, *, window: tuple[int, int] | None, out_dir: Path, rank: int, device: str):
        self.window = window
        self.out_dir = Path(out_dir)
        self.rank = rank
        self.device = device
        self._profile = None
        self.done = window is None

    def before_step(self, step: int) -> None:
        """Call before running global step ``step`` (1-based). A resumed run inside the window profiles the rest."""
        if self.done or self._profile is not None or not self.window[0] <= step <= self.window[1]:
            return
        from mindspore.profiler import ProfilerActivity, profile, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU]
        if self.device == "Ascend":
            activities.append(ProfilerActivity.NPU)
        elif self.device == "GPU":
            activities.append(ProfilerActivity.GPU)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handler = tensorboard_trace_handler(dir_name=str(self.out_dir), worker_name=f"rank_{self.rank}")
        self._profile = profile(activities=activities, start_profile=False, on_trace_ready=handler)
        self._profile.start()
        info(f"profiling steps {step}..{self.window[1]} -> {self.out_dir}", rank=self.rank)

    def after_step(self, step: int) -> None:
        """Call after global step ``step`` ran; stops and analyses after the window's last step."""
        if self._profile is not None and step >= self.window[1]:
            self.finish()

    def finish(self) -> None:
        """Stop and write the trace now (end of the window, or training ending or stopping inside it)."""
        if self._profile is not None:
            self._profile.stop()  # runs the trace handler: analyses and writes under out_dir
            self._profile = None
            info(f"profile written to {self.out_dir}", rank=self.rank)
        self.done = True


def build_profiler(cfg, *, rank: int, device: str) -> StepProfiler:
    """The StepProfiler for ``run.profile`` / ``run.profile_ranks`` (off on ranks that do not profile)."""
    window = profile_window(cfg.run.profile)
    if cfg.run.profile_ranks == "rank0" and rank != 0:
        window = None
    return StepProfiler(window=window, out_dir=Path(cfg.run.out_dir) / "profile", rank=rank, device=device)
