"""Label token shares of one SAE of a store, for the feature list: the store's summary and
range files' token sketches fed to `scope.store.bulk_labels` (`top_shares` of every row at
once, or `LazyShares` block by block, each block reading only its own rows of one range file).
"""

from __future__ import annotations

import logging

import numpy as np

from scope.store import labels as L
from scope.store.bulk_labels import AutoLabels, LazyShares, TokenShares, sketch_rows

log = logging.getLogger(__name__)


def bulk_fires_on(store, sae: str, n: int = L.LABEL_TOKENS) -> list[list[tuple[str, float]]]:
    """Per feature, `(token, share of its firings)` best first, for labelling every feature at
    once: `labels.token_shares` over the summary's peak tokens, with the token sketch's counts
    read one range file at a time (format 2), exactly as `Feature.label` computes them."""
    auto = AutoLabels(np.zeros(store.n_features(sae)), np.zeros(store.n_features(sae)),
                      bulk_shares(store, sae, n), store.vocab)
    return [auto.fires_on(i) for i in range(len(auto))]


def bulk_shares(store, sae: str, n: int = L.LABEL_TOKENS) -> TokenShares:
    """`bulk_labels.top_shares` of one SAE's summary (the arrays behind `bulk_fires_on`)."""
    return lazy_shares(store, sae, n).all()


#: most rows of a `lazy_shares` block: a page's 50 rows, scattered over the SAE by a sort,
#: compute about 50 blocks, so a block is kept small (a whole-SAE pass still computes
#: `bulk_labels._ROWS` rows a call)
LABEL_BLOCK = 1024


def lazy_shares(store, sae: str, n: int = L.LABEL_TOKENS) -> LazyShares:
    """`bulk_labels.LazyShares` of one SAE's summary: blocks that never straddle a range file
    (the largest divisor of the range file size up to `LABEL_BLOCK` rows), each reading only
    its own rows of its range file's token sketch."""
    summ = store._summary(sae)
    tokens = np.asarray(summ["top_token"])  # int32 as stored: top_shares widens per block
    counts = np.asarray(store.firing_counts(sae), dtype=np.float64)
    size = int(getattr(getattr(store, "info", None), "feature_shard_size", 0) or LABEL_BLOCK)
    block = next(b for b in range(min(size, LABEL_BLOCK), 0, -1) if size % b == 0)
    return LazyShares(tokens, summ["top_value"], counts, _sketch_estimates(store, sae, tokens),
                      n, block)


def _sketch_estimates(store, sae: str, tokens: np.ndarray):
    """Count-min estimates of each feature's firings on each of its `tokens` (`[d_sae, k]`),
    as `top_shares` takes them: a function of a row slice that reads those rows of the range
    files it covers. None for a store without a token sketch (format 1, or a file without
    one: the whole SAE then uses top-context shares).

    A manifest that declares the sketch promises it in every range file (the reader's header
    check refuses a range file that lacks it), so no file is opened before its rows are asked
    for, and one that lacks it raises `StoreCorruptError` then. Without the declaration every
    file is opened now to see whether all of them hold one.
    """
    try:
        from scope.store import schema as S
        from scope.store import validate as V

        if getattr(store, "format_version", 1) < 2:
            return None
        folder = store._sae_folder(sae)
        size = int(store.info.feature_shard_size)
        paths: dict[int, object] = {}

        def path(f: int):
            if f not in paths:
                paths[f] = store._range_file(folder, sae, f * size)[0]
            return paths[f]

        if store.info.token_sketch is None:
            for f in range(-(-len(tokens) // size)):
                if S.TOKEN_SKETCH not in store._handle(path(f)).keys():  # noqa: SIM118
                    raise KeyError(f"{path(f).name} has no {S.TOKEN_SKETCH}")
    except (AttributeError, KeyError, ImportError) as exc:
        log.info("no token sketch for %s (%s): labels use top-context shares", sae, exc)
        return None

    def rows(z: slice) -> np.ndarray:
        parts = []
        for f in range(z.start // size, -(-z.stop // size)):
            a, b = max(z.start, f * size), min(z.stop, (f + 1) * size)
            got = store._read(path(f), [S.TOKEN_SKETCH], slice(a - f * size, b - f * size))
            if S.TOKEN_SKETCH not in got:
                raise V.corrupt(store.path, path(f), f"lacks the arrays {[S.TOKEN_SKETCH]}")
            sketch = got[S.TOKEN_SKETCH]  # [b - a, depth, width]
            parts.append(sketch_rows(sketch, tokens[a:b], a))
        return np.concatenate(parts)

    return rows
