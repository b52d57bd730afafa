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


# ----------------------------------------------------------------------------- imports: no circle, one vocabulary
def _module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imported_modules(module: str, path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ddpm_dist modules one import statement names: ``from X import y`` counts as X.y when that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in MODULES else prefix for alias in node.names]


def _import_graph() -> dict[str, set[str]]:
    """module -> the ddpm_dist modules it imports, at module level AND inside functions (a lazy import is still a
    dependency: ``cli_util -> device -> config -> cli_util`` was a circle only through a function-level import).
    Importing ``a.b`` also runs ``a/__init__.py``; that implicit edge is not counted."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module = _module_name(path)
        graph[module] = {
            target
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _imported_modules(module, path, node)
            if target in MODULES and target != module
        }
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` as ``[a, b, ..., a]``, or [] when there is none (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [node])
                if found:
                    return found
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [])
            if found:
                return found
    return []


def test_the_cycle_finder_finds_a_circle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": {"b2", "c"}, "b2": set(), "c": {"b"}}) == ["b", "c", "b"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_sees_relative_absolute_and_lazy_imports():
    graph = _import_graph()
    assert "ddpm_dist.errors" in graph["ddpm_dist.config"]  # from .errors import ... (module level)
    assert "ddpm_dist.device" in graph["ddpm_dist.cli_util"]  # from .device import prepare_env (in a function)
    assert "ddpm_dist.parallel" in graph["ddpm_dist.train.cli"]  # from .. import parallel (a package)
    assert "ddpm_dist.errors" in graph["ddpm_dist.data.convert"]  # from ddpm_dist.errors import first_line


def test_the_package_has_no_import_circle():
    cycle = _find_cycle(_import_graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", ["ddpm_dist.errors", "ddpm_dist.choices", "ddpm_dist.job_status"])
def test_the_leaf_modules_import_nothing_of_ours(module):
    """errors and choices are importable from anywhere (before MindSpore, from the CLIs' flag definitions)."""
    assert _import_graph()[module] == set()


def test_library_modules_take_first_line_from_errors_and_never_import_the_cli():
    """Only entry points (a module with a ``main``) import cli_util; first_line comes from errors everywhere."""
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        tree, module = ast.parse(path.read_text()), _module_name(path)
        is_entry = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                targets = _imported_modules(module, path, node)
                if "ddpm_dist.cli_util" in targets and not is_entry:
                    wrong.append(f"{module} imports cli_util")
                names = {alias.name for alias in node.names}
                if "first_line" in names and set(targets) != {"ddpm_dist.errors"}:
                    wrong.append(f"{module} imports first_line from {targets}")
    assert not wrong, wrong


def _entry_scripts() -> list:
    scripts = [*(ROOT / "tools").glob("*.py"), *(ROOT / "bench").glob("*.py"), PACKAGE / "train" / "cli.py"]
    return sorted(p for p in scripts if p.name != "benchlib.py")


@pytest.mark.parametrize("path", _entry_scripts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_entry_point_runs_its_body_through_run_main(path):
    """One error vocabulary: each ``main`` (train, tools, benches) hands its body to ``cli_util.run_main`` and
    catches no exception of its own (its early ``return fail(...)`` checks of the flags are not exceptions)."""
    tree = ast.parse(path.read_text())
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{path.name}: no main()"
    calls = [n.func.id for n in ast.walk(mains[0]) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "run_main" in calls, f"{path.name}: main() does not call run_main"
    handlers = [n.lineno for n in ast.walk(mains[0]) if isinstance(n, ast.ExceptHandler)]
    assert not handlers, f"{path.name}: main() catches exceptions itself (lines {handlers})"


def test_the_choice_lists_live_once():
    """Sampler and device names are spelled out only in ddpm_dist/choices.py."""
    spelled = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py"), *(ROOT / "bench").glob("*.py")]:
        if path.name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"ddim", "dpm++2m"} <= values or {"Ascend", "GPU"} <= values:
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not spelled, spelled
