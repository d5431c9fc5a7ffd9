"""Execute every notebook end to end on the bundled model (offline); any error fails."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [o for cell in nb.cells if cell.cell_type == "code"
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_notebooks_exist_and_use_only_the_public_api():
    import ast

    import nbformat

    assert [p.stem for p in NOTEBOOKS] == [
        "01_quickstart", "02_explore_features", "03_steering", "04_evaluate"]
    for path in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                           if c.cell_type == "code")
        defined = [n for n in ast.walk(ast.parse(source))
                   if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))]
        assert not defined, f"{path.name} defines logic; notebooks only call the public API"
        assert "gemma-2-2b" in "\n".join(
            c.source for c in nbformat.read(path, as_version=4).cells), path.name
