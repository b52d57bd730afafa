"""The benchmark figures quoted in README.md and docs/ agree with the committed bench/results/*.json they come from.

A quoted figure carries a marker right after it (invisible when rendered): ``1.83 img/s<!-- fig unet_speed_cifar.json
framework_img_s -->``. The key is a dotted path into the JSON (``seeds[0].vs_train.fd``), optionally ``a/b`` (a ratio
of two values) or ``a*100`` (a percentage). The figure is the last number before the marker; it must equal the
JSON's value rounded to the figure's own decimals, and the paragraph holding it (or the one before it) must name
the date the JSON records in its ``measured`` field. Throughput figures (``img/s``) in README.md must all carry a
marker, so a new one cannot be written from memory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- fig (\S+\.json) (\S+) -->")
NUMBER = re.compile(r"(\d[\d,]*(?:\.\d+)?)[x%*\s]*(?:img/s|s|ms|MB|GB|min)?\**\s*$")


def _lookup(doc, path: str) -> float:
    """``a.b[1].c`` in a parsed JSON document."""
    node = doc
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    if not isinstance(node, (int, float)) or isinstance(node, bool):
        raise TypeError(f"{path} is not a number: {node!r}")
    return float(node)


def _operand(doc, key: str) -> float:
    """``path`` in ``doc``, or ``other.json:path`` in another result file."""
    if ":" in key:
        other, key = key.split(":")
        doc = json.loads((RESULTS / other).read_text())
    return _lookup(doc, key)


def _value(doc, key: str) -> float:
    if "/" in key:
        num, den = key.split("/")
        return _operand(doc, num) / _operand(doc, den)
    if "*" in key:
        path, factor = key.split("*")
        return _lookup(doc, path) * float(factor)
    return _lookup(doc, key)


def _paragraph(text: str, pos: int) -> str:
    """The paragraph (or table) holding ``pos``, with the one before it (where a table's date is given)."""
    start = text.rfind("\n\n", 0, text.rfind("\n\n", 0, pos))
    end = text.find("\n\n", pos)
    return text[start + 1 : end if end >= 0 else len(text)]


def _figures() -> list[tuple[str, str, str, str, str]]:
    """(document, figure as written, json file, key, its paragraph) for every marker in README.md and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for m in MARKER.finditer(text):
            before = NUMBER.search(text[max(0, m.start() - 40) : m.start()])
            figure = before.group(1) if before else ""
            found.append((path.name, figure, m.group(1), m.group(2), _paragraph(text, m.start())))
    return found


FIGURES = _figures()


def test_the_readme_quotes_figures_from_the_results():
    assert sum(1 for f in FIGURES if f[0] == "README.md") >= 15


@pytest.mark.parametrize(
    ("doc", "figure", "file", "key", "paragraph"), FIGURES, ids=[f"{f[0]}:{f[3]}" for f in FIGURES]
)
def test_a_quoted_figure_equals_its_result(doc, figure, file, key, paragraph):
    assert figure, f"{doc}: no number right before the marker of {file} {key}"
    result = json.loads((RESULTS / file).read_text())
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    want = round(_value(result, key), decimals)
    got = float(figure.replace(",", ""))
    assert got == pytest.approx(want, abs=1e-9), f"{doc} says {figure}, {file} {key} gives {want}"
    date = result.get("measured", "")[:10]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), f"{file} has no 'measured' date"
    assert date in paragraph, f"{doc}: the paragraph quoting {file} {key} does not give its date {date}"


def test_every_throughput_in_the_readme_is_quoted_from_a_result():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    bare = [m.group(0) for m in re.finditer(r"[\d.,]+ img/s(?!<!-- fig )", text)]
    assert bare == [], f"README.md gives throughput figures without a bench/results marker: {bare}"


def test_the_checker_finds_a_wrong_figure(tmp_path):
    """The marker parser reads the number before it (so a drifted figure fails the test above)."""
    text = "bare 2.68 img/s<!-- fig unet_speed_cifar.json bare_img_s --> at batch 8"
    m = MARKER.search(text)
    figure = NUMBER.search(text[: m.start()]).group(1)
    result = json.loads((RESULTS / "unet_speed_cifar.json").read_text())
    assert figure == "2.68" and round(_value(result, m.group(2)), 2) != float(figure)


def test_every_bench_result_says_when_it_was_measured(monkeypatch):
    """What a bench prints starts with the date the figure test asks the quoting paragraph to give."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import benchlib

    doc = json.loads(benchlib.result_json({"img_per_s": 1.5}))
    assert list(doc) == ["measured", "img_per_s"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC", doc["measured"])
    assert all("measured" in json.loads(p.read_text()) for p in RESULTS.glob("*.json"))
