"""The package's import graph: no module imports one that imports it back, and library code never imports the CLI.

Imports inside functions count too (they are how a cycle hides); the graph is read from the source,
so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the pyproject.toml folder mapping
PACKAGES = {"markguard": ROOT / "markguard", "markguard.datasets": ROOT / "datasets", "markguard.train": ROOT / "train",
            "markguard.infer": ROOT / "infer"}
CLI = ("markguard.cli", "markguard.commands")


def modules() -> dict[str, Path]:
    found = {}
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = f.relative_to(folder).with_suffix("").parts
            if pkg == "markguard" and parts[0] in ("datasets", "train", "infer"):
                continue
            found[".".join([pkg, *[p for p in parts if p != "__init__"]])] = f
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    out = {}
    for name, f in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)  # "from pkg import module"
        out[name] = {d for d in deps if d in mods and d != name}
    return out


def cycles(g: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return comps


def test_the_walk_sees_the_package():
    g = graph()
    assert {"markguard.infer.scan", "markguard.infer.index.store", "markguard.train.loop", "markguard.datasets.decode"} <= set(g)
    assert "markguard.infer.results" in g["markguard.infer.scan"]


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles():
    assert cycles(graph()) == []


@pytest.mark.parametrize("layer", ["markguard.infer", "markguard.datasets"])
def test_infer_and_datasets_never_import_train(layer):
    g = graph()
    bad = {m: sorted(d for d in deps if d.startswith("markguard.train")) for m, deps in g.items() if m.startswith(layer)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_library_code_never_imports_the_cli():
    g = graph()
    users = {m for m, deps in g.items() if not m.startswith(CLI) and any(d.startswith(CLI) for d in deps)}
    assert users == set()
