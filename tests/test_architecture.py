"""Data flows one way: check the import graph of scope/ with `ast` (STYLE.md §2, §4, §17)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "scope"


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
    "store": {"scope.models", "scope.sae", "scope.activations", "scope.loading", "scope.extract"},
    "corpus": {"scope.models", "scope.sae", "scope.store", "scope.extract"},
}
INFERENCE = ["sae", "loading", "models", "activations", "extract", "store", "steer", "evals"]


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_imports_point_downstream(module):
    bad = scope_imports(PKG / f"{module}.py") & FORBIDDEN[module]
    assert not bad, f"scope/{module}.py imports {bad}"


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_never_imports_training_cli_or_dashboard(module):
    bad = {m for m in scope_imports(PKG / f"{module}.py") if m in ("scope.train", "scope.cli")}
    assert not bad, f"scope/{module}.py imports {bad}"


def test_store_reads_with_numpy_and_safetensors_only():
    assert third_party(PKG / "store.py") <= {"numpy", "safetensors"}


def test_import_scope_is_light():
    code = "import sys, scope; print(sorted({'torch', 'transformer_lens'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_names_resolve():
    import scope

    assert set(scope.__all__) == set(scope._EXPORTS) | {"__version__"}
    for name in scope._EXPORTS:
        assert callable(getattr(scope, name)), name
