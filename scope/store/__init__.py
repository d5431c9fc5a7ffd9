"""The feature store: its format (`schema`), reader, writer, checkpoint state and shard merge.

`open_store` and the read classes load with numpy + safetensors only; `writer`, `checkpoint` and
`merge` are imported by the extraction pipeline (the latter two need torch). Layout and
definitions: docs/store.md.
"""

from __future__ import annotations

from scope.store.reader import Band, Example, Feature, Store, open_store, read_manifest
from scope.store.schema import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "Band", "Example", "Feature", "Store", "open_store", "read_manifest"]
