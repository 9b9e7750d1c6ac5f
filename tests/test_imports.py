"""The package's import graph has no cycle, between modules and between packages (module-level and function-level
imports alike): data flows one way, e.g. factory -> models, never models -> factory, not even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

import dynamic_atss
from dynamic_atss import DynamicATSS


PACKAGE = Path(__file__).resolve().parents[1] / "dynamic_atss"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (a `from X import name` counts X, and
    X.name too when that is a module); `TYPE_CHECKING` blocks are skipped (they never run)."""
    files = {_module_name(path, package): path for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        base = module.split(".") if is_package else module.split(".")[:-1]
        edges: set[str] = set()
        tree = ast.parse(path.read_text(), str(path))
        skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
                   and isinstance(stmt.test, ast.Name) and stmt.test.id == "TYPE_CHECKING"
                   for node in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base[: len(base) - node.level + 1]
                    source = ".".join(parent + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module and target.startswith(package.name):
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed to the package's top-level units: `dynamic_atss.models.detector` counts as
    `dynamic_atss.models`, a top-level module (`dynamic_atss.factory`) as itself, the root as `dynamic_atss`."""
    def unit(module: str) -> str:
        return ".".join(module.split(".")[:2])

    collapsed: dict[str, set[str]] = {}
    for module, edges in graph.items():
        collapsed.setdefault(unit(module), set()).update(unit(e) for e in edges if unit(e) != unit(module))
    return collapsed


# Package-level cycles that another change removes, and why they are still here. A listed cycle that is gone makes
# the test fail too, so that this list only shrinks.
def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_no_package_level_cycles():
    """Issue 23: models/zoo.py imported factory.create while factory imports models.detector (a circle at the
    package level, held together by import order)."""
    cycles = {tuple(c) for c in find_cycles(package_graph(import_graph()))}
    assert cycles == set(), "package-level import cycle(s)"


def test_the_package_graph_sees_a_cycle_between_packages(tmp_path):
    package = tmp_path / "dynamic_atss"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "factory.py").write_text("from .models.detector import Detector\n")
    (package / "models" / "detector.py").write_text("class Detector:\n    pass\n")
    (package / "models" / "zoo.py").write_text("def r50():\n    from ..factory import create  # noqa\n")
    graph = import_graph(package)
    assert find_cycles(graph) == []  # no cycle between modules ...
    assert find_cycles(package_graph(graph)) == [["dynamic_atss.factory", "dynamic_atss.models"]]  # ... but packages


def test_the_graph_sees_function_level_imports(tmp_path):
    package = tmp_path / "dynamic_atss"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from .a import g  # noqa\n")
    assert find_cycles(import_graph(package)) == [["dynamic_atss.a", "dynamic_atss.b"]]


def test_hub_package_does_not_import_the_models():
    """One direction: models -> hub (HubMixin). Nothing in dynamic_atss/hub imports the model code, even lazily."""
    import ast

    package = Path(dynamic_atss.hub.__file__).parent
    offenders = []
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        type_checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                         and getattr(block.test, "id", "") == "TYPE_CHECKING" for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in type_checking and "models" in (node.module or ""):
                offenders.append(f"{path.name}:{node.lineno} from {'.' * node.level}{node.module}")
    assert offenders == []
    assert dynamic_atss.hub.registered_model_class() is DynamicATSS
