"""The package's shape: no import cycle among attnbench's modules, and every bench module opens with its purpose."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {  # repository folder -> installed package (pyproject.toml's package-dir)
    "kernels": "attnbench",
    "reference_model": "attnbench.gpt",
    "benchmarks": "attnbench.bench",
    "tests/conformance": "attnbench.conformance",
}


def modules() -> dict[str, Path]:
    """Installed module name -> source file."""
    out = {}
    for folder, package in FOLDERS.items():
        for f in (REPO / folder).rglob("*.py"):
            parts = [p for p in f.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = f
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at module level or inside a function)."""
    graph = {}
    for name, f in mods.items():
        base = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                b = base
                for _ in range(max(node.level - 1, 0)):
                    b = b.rpartition(".")[0]
                m = (f"{b}.{node.module}" if node.module else b) if node.level else node.module
                targets = [m, *(f"{m}.{a.name}" for a in node.names)]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == "open":
                found.append([*stack[stack.index(d) :], d])
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_among_the_packages_modules():
    graph = import_graph(modules())
    assert len(graph) > 40 and "attnbench.bench.schema" in graph["attnbench.bench.report.build"]
    assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(n for n in modules() if n.startswith("attnbench.bench")))
def test_every_bench_module_opens_with_a_docstring(name):
    assert ast.get_docstring(ast.parse(modules()[name].read_text())), f"{name} has no opening docstring"
