"""The store's one lock: every command that writes into a store holds it while it writes.

`store_lock(folder)` holds `folder/.scope.lock` (pid, host, start time), created with
`O_EXCL` so exactly one writer wins; a second writer is refused with `StoreLockedError` naming
the holder. A lock left by a killed run on this machine (its pid is gone) is taken over. Used by
extraction, merge, `scope explain` and `scope labels import`: a read-modify-write of any store
file (the manifest, a generation, `labels.json`) happens inside it, so no writer's result is
lost to another's. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scope.errors import StoreLockedError
from scope.store import schema as S

log = logging.getLogger(__name__)


def _lock_holder(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return holder if isinstance(holder, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by someone else, treated as live


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True  # cannot tell for another machine: assume it runs
    if holder["pid"] == os.getpid():
        return False  # a lock of this process that is not held: left by an aborted call
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELD: set[Path] = set()


@contextmanager
def store_lock(out: str | os.PathLike) -> Iterator[None]:
    """Hold `out/.scope.lock` while writing the store in `out` (the folder is created if needed).

    Args:
        out: the store folder; created if needed, and removed again on exit when it was created
            here and is left empty (a writer that failed at once leaves nothing behind).

    Raises:
        StoreLockedError: another live run holds the lock (its pid and host are named), or this
            process holds it already (the lock is not re-entrant: one writer at a time).
    """
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = (out / S.LOCK).resolve()
    if path in _HELD:
        raise StoreLockedError(f"{out} is already being written by this process")
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is None:
                continue  # released meanwhile
            if _alive(holder):
                raise StoreLockedError(
                    f"{out} is being written by another run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}); wait for it to "
                    f"finish or choose another --out. If no such run exists, delete "
                    f"{path}") from None
            aside = path.with_name(f"{S.LOCK}.stale-{os.getpid()}")
            try:
                os.rename(path, aside)  # only one of several takers wins this
            except FileNotFoundError:
                continue
            if _lock_holder(aside) != holder:  # a live lock replaced the stale one meanwhile
                try:
                    os.link(aside, path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                continue
            aside.unlink(missing_ok=True)
            log.warning("%s: taking over the lock of a run that no longer exists (pid %s)",
                        out, holder.get("pid"))
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(me, fh)
        break
    else:
        raise StoreLockedError(f"{out}: could not take the store lock {path}; retry")
    _HELD.add(path)
    try:
        yield
    finally:
        _HELD.discard(path)
        if _lock_holder(path) == me:
            path.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a writer that wrote nothing leaves no empty folder either
