"""Writing explanations into a store without losing anyone's: the lock, re-read, merge, save.

Every writer of `labels.json` (explain, labels import) calls `save_explanations`: it takes the
store's lock (`scope.pipeline.checkpoint.store_lock`, the one extraction and merge hold), reads
the file as it is now on disk, merges its own explanations into it (`Labels.merge`: scored ones
are kept unless the caller says otherwise), writes it atomically and lets go. The lock is held
for one read-merge-write only, so two explain runs on different features, or an import during an
explain run, interleave and both keep their results. A lock held longer (an extraction running)
is waited for up to `wait` seconds, then `StoreLockedError`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from scope.errors import StoreLockedError
from scope.pipeline.checkpoint import store_lock
from scope.store import labels as L

log = logging.getLogger(__name__)

#: threads of one process take turns before the file lock (it is per process)
_IN_PROCESS = threading.Lock()


def save_explanations(store_path: str | os.PathLike,
                      updates: Mapping[str, Mapping[int, L.Explanation]], *,
                      replace_scored: bool = False, wait: float = 60.0) -> dict[str, L.MergeReport]:
    """Merge `updates` into the store's labels file under its lock and write it atomically
    (all SAEs in one write: nothing half-written).

    Args:
        store_path: the store folder.
        updates: `{sae name: {feature index: Explanation}}`.
        replace_scored: also replace explanations that carry a score (the `--replace-scored`
            flag of an import, `--force` of explain).
        wait: seconds to wait for a lock another run holds.

    Returns:
        `{sae name: MergeReport}` (added, replaced, scored ones kept).
    """
    root = Path(store_path)
    deadline = time.monotonic() + wait
    delay = 0.02
    with _IN_PROCESS:
        while True:
            try:
                with store_lock(root):
                    labels = L.Labels(root)  # what is on disk now, other writers' work included
                    reports = {sae: labels.merge(sae, dict(items), replace_scored=replace_scored)
                                for sae, items in updates.items()}
                    labels.save()
                    return reports
            except StoreLockedError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
