"""Data flows one way: the import graph of scope/, read with `ast` (docs/internals.md).

Folders are layers, lowest first. A module may import its own folder and any folder below its
own, never one above; `scope/__init__.py` (the lazy public facade) is the only module that may
name every layer, and no module imports the facade. Cycles fail at file and at folder level.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scope"

#: folders (and the one top-level module) in the order data flows; an import may only point left
LAYERS = ["errors", "base", "model", "saes", "store", "pipeline", "explore", "steer",
          "attribution", "train", "plan", "dashboard", "cli"]
MODULES = sorted(p for p in PKG.rglob("*.py") if "bundled" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every scope module a file imports (at any depth, lazy imports included), resolved to a
    module that exists: `from scope.x import y` counts as `scope.x.y` when that is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "scope"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "scope":
            found.add(node.module)
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if _exists(sub):
                    found.add(sub)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PKG / f"{rel}.py").is_file() or (PKG / rel / "__init__.py").is_file()


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


GRAPH = {module_name(p): imported_modules(p) for p in MODULES}


def test_every_folder_has_a_layer():
    folders = {layer(m) for m in GRAPH} - {None}
    assert folders <= set(LAYERS) | {"bundled"}, f"give {folders - set(LAYERS)} a layer"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "scope"))
def test_imports_point_down(module):
    own = LAYERS.index(layer(module))
    up = sorted(m for m in GRAPH[module] if m != "scope" and LAYERS.index(layer(m)) > own)
    assert up == [], f"{module} imports {up}, which sit above it"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m != "scope"))
def test_no_module_imports_the_facade(module):
    """Inside scope/, code imports the module it needs, never the public facade `scope`."""
    assert "scope" not in GRAPH[module]


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of `graph` as a path, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_cycle_between_files():
    graph = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()
             if m != "scope"}
    # a package __init__ that re-exports its own modules is not a cycle of the files
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    assert _cycle(graph) == []


def test_no_cycle_between_folders():
    graph: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        if m != "scope":
            graph.setdefault(layer(m), set()).update(
                layer(d) for d in deps if d != "scope" and layer(d) != layer(m))
    assert _cycle(graph) == []


def test_the_checks_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert LAYERS.index("store") < LAYERS.index("pipeline")  # pipeline -> store is down


def third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"scope", "__future__"}


def reached(module: str) -> set[str]:
    """`module` and every scope module it reaches, package `__init__`s on the way included."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m not in GRAPH:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages run first
        todo += sorted(GRAPH[m])
    return seen


def _path(module: str) -> Path:
    rel = Path(*module.split(".")[1:])
    return PKG / f"{rel}.py" if (PKG / f"{rel}.py").is_file() else PKG / rel / "__init__.py"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if m.startswith("scope.store")))
def test_the_store_reaches_numpy_and_safetensors_only(module):
    """Every store module, and every scope module it reaches, needs no torch."""
    deps = set().union(*(third_party(_path(m)) for m in reached(module)))
    assert deps <= {"numpy", "safetensors"}, deps


@pytest.mark.parametrize("module", ["scope.saes.sae", "scope.saes.loading", "scope.model.load",
                                    "scope.pipeline.extract", "scope.steer.intervene"])
def test_inference_never_reaches_training_cli_or_dashboard(module):
    bad = {m for m in reached(module) if layer(m) in ("train", "cli", "dashboard")}
    assert not bad, bad


def test_import_scope_is_light():
    code = "import sys, scope; print(sorted({'torch', 'transformer_lens'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve():
    import scope

    assert set(scope.__all__) == set(scope._EXPORTS) | {"__version__"}
    for name in scope._EXPORTS:
        assert callable(getattr(scope, name)), name
