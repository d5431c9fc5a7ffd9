"""Data flows one way: check the import graph of scope/ with `ast` (docs/internals.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scope"
MODULES = sorted(p.relative_to(PKG).as_posix() for p in PKG.rglob("*.py"))


def scope_imports(path: Path) -> set[str]:
    """Every `scope.x` module a file imports (at any depth, lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scope")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scope"):
            found.add(node.module)
    return {".".join(m.split(".")[:2]) for m in found if m != "scope"}


def third_party(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"scope", "__future__"}


# module -> scope modules it must never import
FORBIDDEN = {
    "sae": {"scope.models", "scope.activations", "scope.store", "scope.loading", "scope.extract",
            "scope.steer", "scope.evals", "scope.train"},
    "models": {"scope.sae", "scope.loading", "scope.store", "scope.extract", "scope.steer"},
    "activations": {"scope.sae", "scope.loading", "scope.store", "scope.extract"},
    "store": {"scope.models", "scope.sae", "scope.activations", "scope.loading", "scope.extract",
              "scope.decoder_tables", "scope.steer", "scope.evals"},
    "accumulators": {"scope.models", "scope.sae", "scope.activations", "scope.loading",
                     "scope.extract"},
    "corpus": {"scope.models", "scope.sae", "scope.store", "scope.extract"},
}
INFERENCE = ["sae", "loading", "models", "activations", "extract", "store", "steer", "evals"]


def _files(module: str) -> list[Path]:
    """A module's file, or every file of a package."""
    return [PKG / f"{module}.py"] if (PKG / f"{module}.py").exists() else sorted(
        (PKG / module).rglob("*.py"))


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_point_downstream(module):
    for path in _files(module):
        bad = scope_imports(path) & FORBIDDEN[module]
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def top_level_imports(path: Path) -> list[str]:
    """`import scope` / `from scope import NAME` anywhere in a file (NAME not a submodule and
    not `__version__`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "scope"]
        elif isinstance(node, ast.ImportFrom) and node.module == "scope" and node.level == 0:
            found += [f"from scope import {a.name}" for a in node.names
                      if a.name != "__version__" and not (PKG / f"{a.name}.py").exists()
                      and not (PKG / a.name).is_dir()]
    return found


@pytest.mark.parametrize("module", MODULES)
def test_no_module_imports_the_top_level_package(module):
    """Inside scope/, code imports the module it needs, never the public facade `scope`."""
    assert top_level_imports(PKG / module) == []


def test_the_top_level_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import scope\n    from scope import load_model\n")
    assert top_level_imports(bad) == ["import scope", "from scope import load_model"]


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_never_imports_training_cli_or_dashboard(module):
    for path in _files(module):
        bad = {m for m in scope_imports(path) if m in ("scope.train", "scope.cli")}
        assert not bad, f"{path.relative_to(PKG)} imports {bad}"


@pytest.mark.parametrize("module", ["__init__", "schema", "reader", "writer"])
def test_store_reads_and_writes_with_numpy_and_safetensors_only(module):
    """The store's reader and writer, and every scope module they reach, need no torch."""
    seen, todo, deps = set(), [PKG / "store" / f"{module}.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        deps |= third_party(path)
        for m in _all_scope_imports(path):
            rel = Path(*m.split(".")[1:])
            todo += [p for p in (PKG / f"{rel}.py", PKG / rel / "__init__.py") if p.is_file()]
    assert deps <= {"numpy", "safetensors"}, deps


def _all_scope_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scope"):
            found.add(node.module)
    return found


def test_import_scope_is_light():
    code = "import sys, scope; print(sorted({'torch', 'transformer_lens'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve():
    import scope

    assert set(scope.__all__) == set(scope._EXPORTS) | {"__version__"}
    for name in scope._EXPORTS:
        assert callable(getattr(scope, name)), name
