"""The package's shape: no import cycle among attnbench's modules, and every bench module opens with its purpose."""

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# repository folder -> installed package: pyproject.toml's package-dir, read as setuptools reads it
PACKAGE_DIR = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
FOLDERS = {folder: package for package, folder in PACKAGE_DIR.items() if package != "attnbench_launcher"}
COLLECTED = ("test_", "bench_", "conftest")  # modules pytest imports by file path


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


def own_package_imports(f: Path, package: str) -> list[tuple[int, str]]:
    """(line, module) of each absolute import in `f` of its own folder's package (a subpackage of another folder,
    such as attnbench.gpt inside attnbench, is that folder's own and not counted)."""
    others = [p for p in FOLDERS.values() if p != package and p.startswith(package + ".")]
    found = []
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mod = node.module
            if (mod == package or mod.startswith(package + ".")) and not any(
                mod == o or mod.startswith(o + ".") for o in others
            ):
                found.append((node.lineno, mod))
    return found


def test_the_folder_map_is_pyprojects():
    assert FOLDERS == {
        "kernels": "attnbench",
        "reference_model": "attnbench.gpt",
        "benchmarks": "attnbench.bench",
        "tests/conformance": "attnbench.conformance",
    }


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_a_library_module_imports_its_own_package_relatively(folder):
    # Imports read as the folders are laid out: inside a folder, `from .x import y`; another folder's package by
    # its installed name. Modules pytest collects by path (test_*, bench_*, conftest) import absolutely: a relative
    # import there would load a second copy of the package under the folder's name.
    package = FOLDERS[folder]
    wrong = {
        str(f.relative_to(REPO)): own_package_imports(f, package)
        for f in (REPO / folder).rglob("*.py")
        if not f.name.startswith(COLLECTED) and "launcher" not in f.parts
    }
    assert {f: found for f, found in wrong.items() if found} == {}
