"""sweep/ has one owner per on-disk name and no import cycle (counting imports inside functions)."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

SWEEP = REPO / "sweep"
PACKAGE = "slmscale.sweep"


def sweep_modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SWEEP.glob("*.py")) if p.stem != "__init__"}


def imported_sweep_modules(path: Path, modules: set[str]) -> set[str]:
    """Sweep modules `path` imports anywhere in the file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module == PACKAGE:  # from slmscale.sweep import launch
                found |= {a.name for a in node.names if a.name in modules}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[2] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found - {path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_sweep_import_graph_is_acyclic():
    modules = sweep_modules()
    graph = {name: imported_sweep_modules(path, set(modules)) for name, path in modules.items()}
    # The parser sees imports at module level and inside functions.
    assert {"storage", "trainable", "callbacks", "results", "status"} <= graph["launch"]
    assert "storage" in graph["results"] and "storage" in graph["status"] and "results" in graph["callbacks"]
    assert graph["storage"] == set() and graph["grid"] == set()
    assert find_cycle(graph) is None, f"import cycle in sweep/: {' -> '.join(find_cycle(graph))}"


LAYOUT_NAMES = {"sweep.json", "driver.json", "results.parquet", "row.json", "attempt.json", "sweep_evals.json",
                "runs", "run.json", "metrics.jsonl", "config.json", "final.json", "checkpoints"}


def string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string constant of a module except docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_storage_and_run_dir_names_have_one_owner():
    """Only sweep/storage.py (and models/rundir.py) spell the names of the storage and run-dir files."""
    files = {p: LAYOUT_NAMES for p in sweep_modules().values() if p.name != "storage.py"}
    # The demo's own output folder has a results table too (OUT/results.parquet): that name is the demo's.
    files[REPO / "slmscale" / "demo.py"] = LAYOUT_NAMES - {"results.parquet"}
    found = [f"{p.relative_to(REPO)}:{line}: {text!r}" for p, names in files.items()
             for line, text in string_constants(p) if text in names]
    assert not found, "layout names spelt outside sweep/storage.py:\n" + "\n".join(found)
    assert ("sweep.json" in {t for _, t in string_constants(SWEEP / "storage.py")})  # the owner is what we scan
