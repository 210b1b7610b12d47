"""The code's shape: no two modules import each other (directly or in a longer loop, function-level
imports included), and no non-test Python file grows past about 400 lines."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("rayflow", "nodes", "training", "bench", "proxy", "workflows")
MAX_LINES = 420          # "about 400": a module past this is doing more than one job


def _modules():
    """``{dotted name: path}`` of every non-test Python file of the packages."""
    found = {}
    for pkg in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(module: str, path: str, known) -> set:
    """The project modules ``module`` imports anywhere in its file (module level or inside functions)."""
    is_pkg = path.endswith("__init__.py")
    package = module if is_pkg else module.rpartition(".")[0]
    out = set()
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:          # "a.b.c" imports the module "a.b" when c is a name in it
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def _graph():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    for m in graph:          # a package's __init__ is not a loop partner of its own modules
        graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and d in mods and mods[d].endswith("__init__.py"))}
    return graph


def test_the_cycle_finder_finds_a_loop_through_a_function_level_import(tmp_path, monkeypatch):
    pkg = tmp_path / "bench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from bench.a import g\n")
    (pkg / "c.py").write_text("import bench.a\n")
    monkeypatch.setitem(globals(), "ROOT", str(tmp_path))
    assert _cycles(_graph()) == [["bench.a", "bench.b"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_past_about_400_lines(module):
    with open(_modules()[module], encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by job"
