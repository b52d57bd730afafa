"""Cheap checks of the package as a whole: the console script's target, references to docs, names, function size,
and that every module imports. Fast (no network compile, no worker)."""

from __future__ import annotations

import ast
import builtins
import importlib
import re

import pytest
from train_helpers import ROOT, TINY

PACKAGE = ROOT / "ddpm_dist"
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in PACKAGE.rglob("*.py")
)


def _console_scripts() -> dict[str, str]:
    """name -> "module:function" of setup.py's console scripts, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "entry_points":
            scripts = ast.literal_eval(node.value)["console_scripts"]
            return dict(item.replace(" ", "").split("=", 1) for item in scripts)
    raise AssertionError("setup.py declares no entry_points")


def test_console_script_target_runs_a_dry_run(capsys):
    """``pip install -e .`` then ``ddpm-train --config configs/tiny.yaml --dry-run``: what the script calls."""
    module, function = _console_scripts()["ddpm-train"].split(":")
    main = getattr(importlib.import_module(module), function)
    assert main(["--config", TINY, "--dry-run"]) == 0
    assert "global_batch: 8" in capsys.readouterr().out


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_docs_cited_by_the_code_exist():
    cited = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py"), *(ROOT / "launch").glob("*.sh")]:
        cited |= {(path.name, ref) for ref in re.findall(r"docs/[\w./-]*\w", path.read_text())}
    missing = sorted((name, ref) for name, ref in cited if not (ROOT / ref).exists())
    assert not missing, missing


def test_no_module_level_name_shadows_a_builtin():
    shadowing = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef) and hasattr(builtins, node.name):
                shadowing.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not shadowing, shadowing


def test_no_function_over_60_lines_outside_bench():
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert not long, long
