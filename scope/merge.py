"""Extraction state <-> feature store, and merging the stores of corpus shards.

`save_state` writes accumulators, the token windows they refer to and the decoder logits as one
store generation (the store *is* the checkpoint: every statistic is kept in mergeable form);
`load_state` reads it back to resume; `merge_stores` folds the stores of `--shard i/n` runs (or
torchrun ranks) into exactly the store a single run over the whole corpus writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope.accumulators import FeatureAccumulator
from scope.errors import StoreError
from scope.store import (
    GEN_PREFIX,
    MANIFEST,
    STATUS_COMPLETE,
    VOCAB,
    Store,
    load_sae_arrays,
    load_windows,
    open_store,
    read_manifest,
    write_generation,
)

log = logging.getLogger(__name__)

LOGIT_KEYS = ("logit_pos_ids", "logit_pos_vals", "logit_neg_ids", "logit_neg_vals")
RANKS_DIR = "ranks"
#: files and folders a store folder may hold besides the manifest (anything else: not ours)
OWN_NAMES = (VOCAB, RANKS_DIR)


class WindowPool:
    """Token ids of the windows kept contexts refer to: `{window index: [pos] int32}`."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, indices: torch.Tensor, tokens: torch.Tensor) -> None:
        for w, row in zip(indices.tolist(), tokens.to(torch.int32).cpu().numpy(), strict=True):
            self.rows[w] = row

    def add_arrays(self, index: np.ndarray, tokens: np.ndarray) -> None:
        for w, row in zip(index.tolist(), tokens, strict=True):
            self.rows[w] = row

    def prune(self, accs: Sequence[FeatureAccumulator]) -> None:
        """Drop windows no kept context refers to any more."""
        keep = set()
        for acc in accs:
            keep.update(acc.referenced_windows().tolist())
        self.rows = {w: r for w, r in self.rows.items() if w in keep}

    def arrays(self, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.array(sorted(self.rows), dtype=np.int64)
        tokens = (np.stack([self.rows[w] for w in index.tolist()]) if len(index)
                  else np.zeros((0, ctx), dtype=np.int32))
        return index, tokens


def check_out_dir(out: Path, config: Mapping[str, Any], overwrite: bool) -> dict | None:
    """Make `out` usable for a run with `config`; return its manifest when it holds one to resume.

    Raises `StoreError` when `out` holds a store made with a different configuration (unless
    `overwrite`), or files that are not a store.
    """
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is not None and overwrite:
        log.warning("--overwrite: deleting the store in %s", out)
        clear_store(out)
        return None
    if manifest is not None:
        old = manifest.get("config", {})
        if canonical(old) != canonical(config):
            keys = sorted(k for k in set(old) | set(config)
                          if canonical(old.get(k)) != canonical(config.get(k)))
            diff = "; ".join(f"{k}: {old.get(k)!r} in the store, {config.get(k)!r} now"
                             for k in keys)
            raise StoreError(
                f"{out} holds a store made with a different configuration ({diff}). Refusing to "
                f"mix them: pass --overwrite (overwrite=True) to start fresh, delete {out}, or "
                f"choose another --out")
        return manifest
    if out.is_dir():
        foreign = [p.name for p in out.iterdir()
                   if p.name not in OWN_NAMES and not p.name.startswith((GEN_PREFIX, "."))]
        if foreign:
            raise StoreError(f"{out} is not empty and holds no feature store ({foreign[:3]}...); "
                             "choose an empty or new --out folder")
    return None


def clear_store(out: Path) -> None:
    """Delete a store's own files (manifest, generations, vocab, rank stores) from `out`."""
    (out / MANIFEST).unlink(missing_ok=True)
    for p in out.iterdir():
        if p.name in OWN_NAMES or p.name.startswith(GEN_PREFIX):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def canonical(obj: Any) -> str:
    """A comparable JSON text (tuples and lists alike, sorted keys)."""
    return json.dumps(obj, sort_keys=True, default=str)


def save_state(out: Path, manifest: dict, accs: Sequence[FeatureAccumulator],
               pool: WindowPool, logits: Sequence[Mapping[str, np.ndarray]]) -> None:
    """Write accumulators + windows + logits as a new generation and commit the manifest."""
    pool.prune(accs)
    index, tokens = pool.arrays(int(manifest["ctx"]))
    saes = {}
    for info, acc, lg in zip(manifest["saes"], accs, logits, strict=True):
        summary, per_feature = acc.to_arrays(index, tokens)
        per_feature.update(lg)
        saes[info["dir"]] = (summary, per_feature)
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_generation(out, manifest, saes, index, tokens, int(manifest["feature_shard_size"]))


def load_state(out: Path, manifest: Mapping[str, Any], devices: Sequence[Any] | None = None
               ) -> tuple[list[FeatureAccumulator], WindowPool, list[dict[str, np.ndarray]]]:
    """Read back what `save_state` wrote: accumulators (on `devices`, one per SAE; default CPU),
    window pool, logits."""
    accs, logits = [], []
    devices = devices or ["cpu"] * len(manifest["saes"])
    for info, device in zip(manifest["saes"], devices, strict=True):
        summary, per_feature = load_sae_arrays(out, manifest, info["dir"])
        accs.append(FeatureAccumulator.from_arrays(summary, per_feature, int(manifest["ctx"]),
                                                   device=device))
        logits.append({k: per_feature[k] for k in LOGIT_KEYS})
    pool = WindowPool()
    pool.add_arrays(*load_windows(out, manifest))
    return accs, pool, logits


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
            raise StoreError(f"{p} is not a feature store (no {MANIFEST})")
        if m.get("status") != STATUS_COMPLETE:
            raise StoreError(f"{p} is partial: finish it first by rerunning its extract command")
        manifests.append(m)
    shards = [tuple(m["config"].get("shard") or (0, 1)) for m in manifests]
    n = shards[0][1]
    if sorted(shards) != [(i, n) for i in range(n)]:
        raise StoreError(f"cannot merge shards {sorted(shards)}: need each of 0/{n} ... "
                         f"{n - 1}/{n} exactly once")
    order = sorted(range(len(paths)), key=lambda j: shards[j])
    base = dict(manifests[order[0]]["config"], shard=None)
    for j in order:
        if canonical(dict(manifests[j]["config"], shard=None)) != canonical(base):
            raise StoreError(f"{paths[j]} was made with a different configuration than "
                             f"{paths[order[0]]}; only shards of one run merge")
    out = Path(out)
    if check_out_dir(out, base, overwrite) is not None:
        existing = read_manifest(out)
        if existing.get("status") == STATUS_COMPLETE:
            log.info("%s already holds the merged store", out)
            return open_store(out)
    out.mkdir(parents=True, exist_ok=True)
    accs, pool, logits = load_state(paths[order[0]], manifests[order[0]])
    for j in order[1:]:
        more, more_pool, _ = load_state(paths[j], manifests[j])
        for acc, other in zip(accs, more, strict=True):
            acc.merge(other)
        pool.rows.update(more_pool.rows)
    if not (out / VOCAB).is_file():
        shutil.copyfile(paths[order[0]] / VOCAB, out / VOCAB)
    manifest = dict(manifests[order[0]], config=base, shard=None, data=None,
                    status=STATUS_COMPLETE)
    manifest["tokens"] = sum(int(m["tokens"]) for m in manifests)
    manifest["windows"] = sum(int(m["windows"]) for m in manifests)
    save_state(out, manifest, accs, pool, logits)
    log.info("merged %d shard stores into %s", len(paths), out)
    return open_store(out)
