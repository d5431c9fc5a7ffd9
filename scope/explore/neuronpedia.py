"""Neuronpedia in both directions (the names the CLI and notebooks import).

Import: `scope.explore.np_import` (explanation batches `batch-N.jsonl.gz`, `.jsonl`, the old JSON
list). Export: `scope.explore.np_export` (SAEDashboard 0.8.0 batch folders for Neuronpedia's
converter, or the `neuronpedia` client's upload payloads), in the format `scope.explore.np_format`
spells.
"""

from __future__ import annotations

from scope.explore.np_export import export_neuronpedia, read_export, upload_payload
from scope.explore.np_import import ImportReport, import_explanations, resolve_files

__all__ = ["ImportReport", "export_neuronpedia", "import_explanations", "read_export",
           "resolve_files", "upload_payload"]
