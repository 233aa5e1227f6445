"""The package's shape, checked over the AST (imports inside functions included): no import loops,
no module over 400 lines, and the layering of docs/ARCHITECTURE.md."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dsod"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# functions over the limit, each with the reason it stays one function
LONG_FUNCTIONS = {
    ("dsod.bench", "_run_bench"): "one linear report: each section reads the previous ones' timings",
    ("dsod.data.check", "check"): "one pass over a split, the counters shared by every problem kind",
    ("dsod.export.quantize", "quantize_int8"): "one ONNX Runtime quantisation call with its set-up and metadata",
}
# (importer package, imported package): the layering rules
FORBIDDEN = [
    ("dsod.data", "dsod.model"), ("dsod.data", "dsod.engine"), ("dsod.data", "dsod.inference"),
    ("dsod.inference", "dsod.engine"), ("dsod.metrics", "dsod.model"), ("dsod.metrics", "dsod.engine"),
    ("dsod.geometry", "dsod.model"), ("dsod.geometry", "dsod.data"), ("dsod.model", "dsod.engine"),
    ("dsod.model", "dsod.data"), ("dsod.runtime", "dsod.engine"),
]


def _modules() -> Dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph(mods: Dict[str, Path]) -> Dict[str, Set[str]]:
    """module -> the dsod modules it imports (``from pkg import submodule`` names the submodule)."""
    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        out = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                out |= {resolve(a.name) for a in n.names if a.name.startswith("dsod")}
            elif isinstance(n, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)] if n.level else []
                full = ".".join(base + ([n.module] if n.module else [])) if n.level else (n.module or "")
                if full.startswith("dsod"):
                    out |= {resolve(f"{full}.{a.name}") for a in n.names}
        out.discard(m)
        out.discard("")
        graph[m] = out
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
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
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(_modules())


def test_the_checker_sees_a_loop_and_a_layer_breach():
    g = {"dsod.a": {"dsod.b"}, "dsod.b": {"dsod.c"}, "dsod.c": {"dsod.a"}, "dsod.d": {"dsod.a"}}
    assert cycles(g) == [["dsod.a", "dsod.b", "dsod.c"]]
    real = import_graph(_modules())
    assert "dsod.inference.postprocess.keys" in real["dsod.inference.postprocess.kernel"]
    assert "dsod.runtime.distributed" in real["dsod.engine.trainer"]  # `from ..runtime import distributed`


def test_no_import_loops(graph):
    assert cycles(graph) == []


def test_layering(graph):
    breaches = [(m, t) for m, targets in graph.items() for t in targets for a, b in FORBIDDEN
                if (m == a or m.startswith(a + ".")) and (t == b or t.startswith(b + "."))]
    cli = [(m, t) for m, targets in graph.items() for t in targets
           if t.startswith("dsod.cli") and not m.startswith("dsod.cli") and not m.endswith("__main__")]
    assert breaches == [] and cli == []


def test_module_and_function_sizes():
    long_modules, long_functions = [], []
    for m, p in _modules().items():
        text = p.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append((m, len(text.splitlines())))
        for f in ast.walk(ast.parse(text)):
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES and (m, f.name) not in LONG_FUNCTIONS:
                    long_functions.append((m, f.name, f.end_lineno - f.lineno + 1))
    assert long_modules == [] and long_functions == []
