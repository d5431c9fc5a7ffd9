"""What a store folder may hold, and what a writer may delete there: only what the store wrote.

A folder is a store when it holds a valid `manifest.json`; the store owns the names its format
defines (the manifest, `vocab.json`, `tables/`, `ranks/`, the generation folders `gen-NNNNNN/`,
the lock and the hidden leftovers of its own atomic writes). Anything else in the folder is the
user's (`notes.txt`, `gen-analysis.md`, `tables_mine/`, `.git/`): `--overwrite` and a run that
stops before its first checkpoint delete the store's own names only and leave the rest as it
was. A folder without a manifest is used only when it is empty (or holds nothing but a lock,
temporaries or rank stores of a run of ours): a non-empty folder that is not a store is refused, whatever it
holds. Standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scope.errors import StoreError
from scope.store import schema as S
from scope.store.reader import read_manifest
from scope.store.writer import write_manifest

log = logging.getLogger(__name__)


def canonical(obj: Any) -> str:
    """A comparable JSON text (tuples and lists alike, sorted keys)."""
    return json.dumps(obj, sort_keys=True, default=str)


def _own(p: Path) -> bool:
    """Whether the entry `p` of a store folder is one the store writes."""
    name = p.name
    if name == S.VOCAB:
        return not p.is_dir()
    if name in S.OWN_NAMES or S.is_generation(name):
        return p.is_dir() or p.is_symlink()
    return S.is_own_temp(name)


def _leftover(p: Path) -> bool:
    """What a run of ours leaves in a folder before it writes the manifest: the lock, hidden
    temporaries of its atomic writes, the rank stores of a torchrun extraction."""
    return (p.name == S.LOCK or S.is_own_temp(p.name)
            or p.name == S.RANKS_DIR and p.is_dir() and not p.is_symlink())


def check_out_path(out: Path) -> None:
    """Refuse an `--out` that cannot hold a store, before anything is written.

    Raises:
        StoreError: `out` is a file, or a non-empty folder that holds no store (its entries are
            named; nothing in it is touched).
    """
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file; choose a folder")
    if not out.is_dir() or read_manifest(out) is not None:
        return
    foreign = sorted(p.name for p in out.iterdir() if not _leftover(p))
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise StoreError(f"--out {out} is not empty and holds no feature store ({shown}); scope "
                         "writes a store only into an empty or new folder: choose another --out")


def clear_store(out: Path, manifest: S.Manifest | None = None) -> None:
    """Delete the store's own files in `out` (module docstring); the user's files stay.

    The manifest goes last, and a manifest naming data is first rewritten to name none, so a
    clear that is killed halfway leaves a store "without a checkpoint", which the next run
    clears again, never a folder of orphans that looks foreign.
    """
    if manifest is not None and manifest.data is not None:
        write_manifest(out, dataclasses.replace(manifest, data=None))
    for p in sorted(out.iterdir()):
        if not _own(p):
            continue
        if p.is_symlink() or not p.is_dir():
            p.unlink()  # a link is removed, never followed
        else:
            shutil.rmtree(p)
    (out / S.MANIFEST).unlink(missing_ok=True)
    kept = [p.name for p in out.iterdir() if p.name != S.LOCK]
    if kept:
        log.info("%s: kept files that are not the store's: %s", out, kept[:10])


def check_out_dir(out: Path, config: Mapping[str, Any], overwrite: bool) -> S.Manifest | None:
    """Decide what to do with `out` for a run with `config` (call it holding `store_lock`).

    Returns the manifest of a store to resume or reuse (same configuration), or None to start
    fresh. A store that never reached its first checkpoint is cleared (nothing is lost), so a
    run that failed before its first batch never blocks the corrected command; `overwrite`
    clears a store made with another configuration. Clearing removes the store's own files only.

    Raises:
        StoreError: `out` is a file or a non-empty folder that is not a store; it holds a store
            made with another configuration (unless `overwrite`) or a format 1 store.
    """
    check_out_path(out)
    manifest = read_manifest(out) if out.is_dir() else None
    if manifest is None:
        return None
    if overwrite or manifest.data is None:
        if overwrite:
            log.warning("--overwrite: deleting the store in %s (its own files only)", out)
        else:
            log.info("%s holds a store without any checkpoint; starting it afresh", out)
        clear_store(out, manifest)
        return None
    old = manifest.config
    if canonical(old) != canonical(config):
        keys = sorted(k for k in set(old) | set(config)
                      if canonical(old.get(k)) != canonical(config.get(k)))
        diff = "; ".join(f"{k}: {old.get(k)!r} in the store, {config.get(k)!r} now" for k in keys)
        raise StoreError(
            f"{out} holds a store made with a different configuration ({diff}). Refusing to "
            f"mix them: pass --overwrite (overwrite=True) to start fresh, delete {out}, or "
            f"choose another --out")
    if manifest.format_version != S.FORMAT_VERSION:
        raise StoreError(
            f"{out} holds a format {manifest.format_version} store, which this scope reads "
            f"but does not extend (it writes format {S.FORMAT_VERSION}); pass --overwrite "
            "to extract it again, or choose another --out")
    return manifest
