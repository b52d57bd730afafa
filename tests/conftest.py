"""Shared test set-up: quiet MindSpore, fast CPU convolutions, and a temporary working directory per test
(MindSpore writes rank_0/ and rewritten_network/ into the CWD on some errors)."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_v", "3")
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402 - after the environment above

# Before any test runs a kernel in this process: MindSpore refuses set_device once its runtime is up, so a module
# whose tests call it (the cpu_graph fixture) would fail after another module's tests ran ops first - which is the
# order pytest-xdist can pick. Setting the same target again later is a no-op.
ms.set_device("CPU")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(autouse=True)
def _tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def cpu_graph():
    """MindSpore in GRAPH_MODE on the CPU, for tests that compile Cells in this process (``pytestmark`` of a module)."""
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    yield


@pytest.fixture
def pynative():
    """The test runs in PyNative mode; the previous mode is restored afterwards (a module's autouse fixture asks for
    it)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=previous)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 20 MB tmpfs (needs root); skips when it cannot be mounted."""
    from train_helpers import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "tmpfs", "20m") as mnt:
        yield mnt
