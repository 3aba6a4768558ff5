"""The package's shape: no import cycles among `worker` modules, no worker module importing a
test helper, no test file importing another test file (shared code lives in tests/helpers/)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(top: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of package `top`."""
    out = {}
    for path in sorted((ROOT / top).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules of `known` that the file imports anywhere (module level, functions, and
    `if TYPE_CHECKING:` blocks alike): `from a import b` names module a.b when that is one,
    else a; relative imports are resolved against `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return (out & known) - {name}


def import_graph(top: str) -> dict[str, set[str]]:
    files = _modules(top)
    return {name: imported_modules(path, name, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_cycle_finder_on_a_hand_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_worker_modules():
    """Every import counts, lazy ones inside functions and `if TYPE_CHECKING:` ones included:
    a cycle hidden behind a lazy import is still a cycle in the design."""
    graph = import_graph("worker")
    assert "worker.job" in graph and "worker.engine.pair" in graph
    assert cycles(graph) == []


def test_loading_a_job_does_not_import_the_report_schema():
    graph = import_graph("worker")
    seen, todo = set(), ["worker.job"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "worker.results" not in seen and "worker.gates" not in seen


def test_no_worker_module_imports_tests():
    for path in _modules("worker").values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] == "tests"], path


def test_test_files_import_only_helpers():
    """Test files share code through tests/helpers/ (and fixtures through conftest.py), never
    by importing another test file."""
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                mod = node.module
                if mod == "tests":
                    bad = [a.name for a in node.names if a.name != "helpers"]
                else:
                    bad = (
                        [mod]
                        if mod.startswith("tests.") and not mod.startswith("tests.helpers")
                        else []
                    )
                assert not bad, f"{path.name} imports {bad}"
            elif isinstance(node, ast.Import):
                bad = [a.name for a in node.names if a.name.startswith("tests.")]
                bad = [b for b in bad if not b.startswith("tests.helpers")]
                assert not bad, f"{path.name} imports {bad}"


def test_one_pydantic_base_class():
    """Every pydantic model of the package derives from worker.base.Model (directly or through
    a subclass); only worker/base.py subclasses pydantic's BaseModel."""
    direct = []
    for name, path in _modules("worker").items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"BaseModel", "pydantic.BaseModel"}:
                    direct.append(f"{name}.{node.name}")
    assert direct == ["worker.base.Model"]
