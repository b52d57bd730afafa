"""The keyed compile cache (ddpm_dist/train/compile_cache.py): a relaunch of the same config loads the graphs
(faster first step, bitwise the same run); another config gets another directory, never the stale graph."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY, env, final_state, prepare_digits

from ddpm_dist.config import load_config
from ddpm_dist.train.compile_cache import cache_dir


def _first_step_s(out: str) -> float:
    return float(re.search(r"first step \(graph compile\) took ([\d.]+)s", out).group(1))


def test_the_key_follows_the_graph_and_the_switch(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_COMPILE_CACHE_DIR", raising=False)
    cfg = load_config(TINY, [f"run.out_dir={tmp_path}", "model.dropout=0"])
    key = dict(world_size=2, device="CPU", start_step=10)
    assert cache_dir(cfg, **key) is None  # auto, not under a restarting launcher
    monkeypatch.setenv("DDPM_COMPILE_CACHE_DIR", str(tmp_path / "c"))
    base = cache_dir(cfg, **key)
    assert base.parent == tmp_path / "c"
    assert cache_dir(load_config(TINY, [f"run.out_dir={tmp_path / 'other'}", "model.dropout=0"]), **key) == base
    assert cache_dir(cfg, **(key | {"start_step": 20})) == base  # no dropout: the step is not in the graph
    for other in (["model.ch=32"], ["train.lr=0.002"], ["data.channels=3"], ["model.dropout=0.1"]):
        assert cache_dir(load_config(TINY, [f"run.out_dir={tmp_path}", "model.dropout=0", *other]), **key) != base
    assert cache_dir(cfg, **(key | {"world_size": 4})) != base
    dropout = load_config(TINY, [f"run.out_dir={tmp_path}"])
    assert cache_dir(dropout, **key) != cache_dir(dropout, **(key | {"start_step": 20}))  # seeds from the step
    assert cache_dir(load_config(TINY, [f"run.out_dir={tmp_path}", "run.compile_cache=false"]), **key) is None


@pytest.mark.slow
def test_a_relaunch_reuses_the_cache_bitwise_and_another_config_gets_its_own(tmp_path):
    data = prepare_digits(tmp_path / "digits8")
    cache = tmp_path / "cache"
    e = env() | {"DDPM_COMPILE_CACHE_DIR": str(cache)}

    def train(run: str, *extra: str) -> str:
        res = subprocess.run(
            [sys.executable, "-m", "ddpm_dist.train", "--config", TINY, f"data.path={data}", "model.dropout=0",
             "train.total_steps=8", f"run.out_dir={tmp_path / run}", "run.compile_cache=true", *extra],
            env=e, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout + res.stderr

    cold = _first_step_s(train("a"))
    (key,) = [p.name for p in cache.iterdir()]
    assert list((cache / key).rglob("*.mindir"))
    warm = _first_step_s(train("b"))
    print(f"first step: cold {cold:.1f}s, from the cache {warm:.1f}s")
    assert [p.name for p in cache.iterdir()] == [key] and warm < cold
    a, b = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    train("c", "model.ch=32")
    assert len(list(cache.iterdir())) == 2  # its own directory: the ch=16 graph is never loaded for it


@pytest.mark.parametrize(("yaml_value", "want"), [("true", "true"), ("false", "false"), ("auto", "auto")])
def test_yaml_booleans_are_accepted_for_the_switch(tmp_path, yaml_value, want):
    """``compile_cache: true`` in a YAML file is a bool, which the string field would hold as 'True'."""
    text = Path(TINY).read_text()
    assert "\nrun:\n" in text
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(text.replace("\nrun:\n", f"\nrun:\n  compile_cache: {yaml_value}\n", 1))
    assert load_config(str(cfg_file), []).run.compile_cache == want
    if want != "auto":
        assert load_config(TINY, [f"run.compile_cache={yaml_value.capitalize()}"]).run.compile_cache == want
