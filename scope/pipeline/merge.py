"""Merging the stores of corpus shards into the store a single run writes.

`merge_stores` folds the stores of `--shard i/n` runs (or torchrun ranks) together: every
statistic is in mergeable form, so the result equals, array for array, one run over the whole
corpus. The once-per-run tables are identical on every shard and are copied from shard 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from scope.base.atomic import atomic_folder
from scope.errors import StoreError
from scope.pipeline.checkpoint import load_state, save_state
from scope.store import schema as S
from scope.store import validate as V
from scope.store.folder import canonical, check_out_dir, check_out_path
from scope.store.lock import store_lock
from scope.store.reader import Store, check_folders, open_store, read_manifest, read_vocab
from scope.store.writer import write_manifest, write_vocab

log = logging.getLogger(__name__)


def merge_stores(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                 overwrite: bool = False) -> Store:
    """Merge the stores of shards `0/n ... n-1/n` of one run into the single-run store.

    Args:
        inputs: the shard stores (any order); all complete, same configuration but the shard.
        out: folder of the merged store.
        overwrite: replace a different store already in `out`.

    Returns:
        The merged store, equal array for array to a single run over the whole corpus.
    """
    paths = [Path(p) for p in inputs]
    manifests = []
    for p in paths:
        m = read_manifest(p)
        if m is None:
            raise StoreError(f"{p} is not a feature store (no {S.MANIFEST})")
        if m.status != S.STATUS_COMPLETE:
            raise StoreError(f"{p} is partial: finish it first by rerunning its extract command")
        if m.format_version != S.FORMAT_VERSION or m.tables is None:
            raise StoreError(f"{p} is a format {m.format_version} store; only format "
                             f"{S.FORMAT_VERSION} shards merge: extract them again")
        check_folders(p, m)  # before anything is written: no folder of it leads elsewhere
        manifests.append(m)
    shards = [tuple(m.config.get("shard") or (0, 1)) for m in manifests]
    n = shards[0][1]
    if sorted(shards) != [(i, n) for i in range(n)]:
        raise StoreError(f"cannot merge shards {sorted(shards)}: need each of 0/{n} ... "
                         f"{n - 1}/{n} exactly once")
    order = sorted(range(len(paths)), key=lambda j: shards[j])
    first, first_path = manifests[order[0]], paths[order[0]]
    base = dict(first.config, shard=None)
    for j in order:
        if canonical(dict(manifests[j].config, shard=None)) != canonical(base):
            raise StoreError(f"{paths[j]} was made with a different configuration than "
                             f"{first_path}; only shards of one run merge")
    out = Path(out)
    check_out_path(out)  # refused before the lock is even taken: nothing is written
    with store_lock(out):
        existing = check_out_dir(out, base, overwrite)
        if existing is not None and existing.status == S.STATUS_COMPLETE:
            log.info("%s already holds the merged store", out)
            return open_store(out)
        accs, pool = load_state(first_path, first)
        for j in order[1:]:
            more, more_pool = load_state(paths[j], manifests[j])
            for acc, other in zip(accs, more, strict=True):
                acc.merge(other)
            pool.rows.update(more_pool.rows)
        manifest = dataclasses.replace(
            first, config=base, shard=None, data=None, status=S.STATUS_COMPLETE,
            tables=S.TABLES_DIR, tokens=sum(int(m.tokens) for m in manifests),
            windows=sum(int(m.windows) for m in manifests))
        # the manifest claims the folder first (no data yet): what follows is the store's own
        write_manifest(out, dataclasses.replace(manifest, status=S.STATUS_PARTIAL, tables=None))
        write_vocab(out, read_vocab(first_path))
        with atomic_folder(out / S.TABLES_DIR, replace=True) as tmp:
            for entry in first.saes:
                source = V.inside(first_path, first_path / first.tables / entry.dir)
                shutil.copytree(source, tmp / entry.dir)
        save_state(out, manifest, accs, pool)
    log.info("merged %d shard stores into %s", len(paths), out)
    return open_store(out)
