"""ddpm_dist/train/watchdog.py: when a rank counts as hung, with a fake clock (the real stall under msrun is in
tests/test_restart.py)."""

import subprocess
import sys
import textwrap

import pytest

from ddpm_dist.train.watchdog import EXIT_HANG, Watchdog


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _dog(timeout, **kw):
    clock = Clock()
    return Watchdog(timeout=timeout, rank=3, clock=clock, on_hang=lambda m: None, **kw), clock


def test_a_fixed_timeout_counts_from_the_last_step_and_names_rank_and_step():
    dog, clock = _dog(10)
    clock.now += 500  # the graph compile: no step has finished yet, never a hang
    assert dog.check() is None
    dog.beat(1)
    clock.now += 9.5
    assert dog.check() is None
    dog.beat(2)
    clock.now += 10.5
    message = dog.check()
    assert message.startswith("rank 3: no progress for 10s after step 2 (run.step_timeout=10)")


def test_paused_blocks_are_not_hangs_and_restart_the_clock():
    dog, clock = _dog(10)
    dog.beat(5)
    with dog.paused():  # a checkpoint write
        clock.now += 100
        assert dog.check() is None
    clock.now += 9
    assert dog.check() is None
    clock.now += 2
    assert "after step 5" in dog.check()


def test_auto_timeout_is_factor_times_the_median_step_with_a_floor_and_skips_the_compile():
    dog, clock = _dog(None, floor=30, factor=20)
    clock.now += 400  # compile: the first beat's interval is not a step time
    dog.beat(1)
    assert dog.timeout() is None and dog.check() is None
    for step in range(2, 12):
        clock.now += 0.5 if step != 7 else 5.0  # one slow step does not move the median
        dog.beat(step)
    assert dog.timeout() == 30  # 20 x 0.5 s is under the floor
    for step in range(12, 40):
        clock.now += 3.0
        dog.beat(step)
    assert dog.timeout() == pytest.approx(60.0)  # median 3 s x 20
    clock.now += 61
    assert "run.step_timeout=auto: 60s" in dog.check()


def test_the_interval_across_a_paused_block_is_not_a_step_time():
    dog, clock = _dog(None, floor=1, factor=2)
    dog.beat(1)
    clock.now += 1.0
    dog.beat(2)
    with dog.paused():
        clock.now += 500
    clock.now += 1.0
    dog.beat(3)
    assert dog.timeout() == 2.0  # the 500 s save did not become a step time


def test_zero_disables():
    dog, clock = _dog(0)
    dog.beat(1)
    clock.now += 1e6
    assert not dog.enabled and dog.check() is None


def test_a_hung_process_ends_with_one_line_and_the_hang_exit_code(tmp_path):
    """The real thread and the real exit: the main thread sleeps (a stuck read) after two steps."""
    script = tmp_path / "hang.py"
    script.write_text(
        textwrap.dedent("""
        import time
        from ddpm_dist.train.watchdog import Watchdog
        dog = Watchdog(timeout=0.5, rank=1).start()
        dog.beat(1); dog.beat(2)
        time.sleep(60)
    """)
    )
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50)
    assert res.returncode == EXIT_HANG
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 1: no progress for ") and "after step 2" in lines[0]


def test_a_rank_waiting_in_the_step_reports_after_the_stuck_peer():
    """Inside ``stepping`` (the all-reduce a stuck peer never joins) the bound is 1.5 x: the peer, stuck outside the
    step, reaches its own bound first and is the rank named."""
    waiting, clock = _dog(10)
    waiting.beat(4)
    with waiting.stepping():
        clock.now += 12
        assert waiting.check() is None
        clock.now += 4
        assert "after step 4" in waiting.check()
    stuck, clock = _dog(10)
    stuck.beat(4)
    clock.now += 12  # in its data read, outside the step
    assert "after step 4" in stuck.check()
