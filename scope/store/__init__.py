"""The feature store: its format (`schema`), reader, feature view, validation, writer, lock.

Everything here is numpy + safetensors + the standard library (no torch): `open_store` and the
read classes, the writer and `store_lock` (the one lock of every command that writes a store).
The torch side (checkpoint state, shard merge) lives in `scope.pipeline`. Layout and
definitions: docs/store.md.
"""

from __future__ import annotations

from scope.store.feature import Band, Example, Feature
from scope.store.reader import Store, open_store, read_manifest
from scope.store.schema import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "Band", "Example", "Feature", "Store", "open_store", "read_manifest"]
