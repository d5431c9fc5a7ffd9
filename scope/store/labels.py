"""Feature names: automatic labels from store statistics, and stored explanations.

An automatic label is always available: the tokens a feature fires on most with their share of
its firings (e.g. `' the' 62% · ' a' 20%`), plus flags for features that mislead rankings
(dense, rare, start-of-context, single-token). Explanations (imported from Neuronpedia or written
by `scope explain`) live in `labels.json` in the store folder, beside the store's data, which they
never rewrite. This module knows the standard library and numpy only; the store reader calls it
for `Feature.label` and `Feature.explanation`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scope.base.atomic import atomic_write_text
from scope.errors import StoreError

LABELS_FILE = "labels.json"
LABELS_VERSION = 1
#: firing density above which a feature is flagged "dense" (fires on more than 1% of tokens)
DENSE = 0.01
#: firing count below which a feature is flagged "rare"
RARE = 10
#: one token's share of firings at or above which a feature is "single-token"
SINGLE_TOKEN = 0.9
#: share of top contexts peaking in the first POSITION_LIKE_MAX positions -> "start-of-context"
POSITION_LIKE_SHARE = 0.8
POSITION_LIKE_MAX = 2
#: tokens named in an automatic label
LABEL_TOKENS = 3


@dataclass(frozen=True)
class Explanation:
    """A feature's explanation and how good it is.

    Attributes:
        text: the explanation, e.g. "references to cats".
        score: detection balanced accuracy in [0, 1] (0.5 is chance), or None when not scored.
        explainer: the model that wrote it, e.g. "gpt-4o-mini" or "neuronpedia:gpt-4o-mini".
        prompt_version: version of the prompt that produced it (None for imports).
        source: "explain" (scope explain) or "neuronpedia" (imported).
    """

    text: str
    score: float | None = None
    explainer: str = ""
    prompt_version: str | None = None
    source: str = "explain"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping) -> Explanation:
        score = d.get("score")
        score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
        pv = d.get("prompt_version")
        return cls(text=str(d.get("text", "")), score=score, explainer=str(d.get("explainer", "")),
                   prompt_version=None if pv is None else str(pv),
                   source=str(d.get("source", "explain")))


# ---------------------------------------------------------------------------------------------
# automatic labels
# ---------------------------------------------------------------------------------------------


def show_token(token: str) -> str:
    """A token as it appears in a label: quoted, with invisible characters made visible."""
    t = token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")
    return repr(t) if t else "∅"


def flags(
    density: float,
    firing_count: int,
    fires_on: Sequence[tuple[str, float]] = (),
    peak_positions: Sequence[int] = (),
) -> list[str]:
    """Flags that warn a reader: "dead", "dense", "rare", "start-of-context", "single-token".

    Args:
        density: the feature's firing fraction.
        firing_count: how many tokens it fired on.
        fires_on: `(token, share of firings)` best first.
        peak_positions: positions of the peak token in its top contexts (0 is BOS or the first
            token of a window).
    """
    if firing_count <= 0:
        return ["dead"]
    out = []
    if density > DENSE:
        out.append("dense")
    if firing_count < RARE:
        out.append("rare")
    if peak_positions:
        early = sum(1 for p in peak_positions if p <= POSITION_LIKE_MAX) / len(peak_positions)
        if early >= POSITION_LIKE_SHARE:
            out.append("start-of-context")
    if fires_on and fires_on[0][1] >= SINGLE_TOKEN and firing_count >= RARE:
        out.append("single-token")
    return out


def auto_label(
    density: float,
    firing_count: int,
    fires_on: Sequence[tuple[str, float]] = (),
    peak_positions: Sequence[int] = (),
    n_tokens: int = LABEL_TOKENS,
) -> str:
    """The automatic label: top tokens with their share of firings, then flags.

    Returns:
        e.g. `"' the' 62% · ' a' 20% [dense]"`, or `"never fired on the store's corpus"`.
    """
    marks = flags(density, firing_count, fires_on, peak_positions)
    if marks == ["dead"]:
        return "never fired on the store's corpus"
    toks = " · ".join(f"{show_token(t)} {_pct(s)}" for t, s in list(fires_on)[:n_tokens] if s > 0)
    text = toks or "no token statistics"
    return f"{text} [{', '.join(marks)}]" if marks else text


def _pct(share: float) -> str:
    p = 100.0 * float(share)
    return f"{p:.0f}%" if p >= 1 else "<1%"


def token_shares(tokens, values, count: float, vocab: Sequence[str], est=None,
                 n: int = LABEL_TOKENS) -> list[tuple[str, float]]:
    """The tokens an automatic label names: `(token, share of firings)` best first.

    Candidates are the peak tokens of the feature's top contexts (`tokens`, `values`: the
    summary's `top_token` and `top_value` rows). With `est` (count-min estimates of the
    feature's firings on each of `tokens`, from a format 2 store's token sketch) a share is
    `est / count`; without it, the token's share of the top contexts. The feature list labels
    every feature with this same function, so its labels match `Feature.label`.
    """
    import numpy as np

    tokens = np.asarray(tokens).astype(np.int64)
    valid = (np.asarray(values) > 0) & (tokens >= 0)
    cand = tokens[valid]
    if cand.size == 0:
        return []
    if est is None:
        ids, c = np.unique(cand, return_counts=True)
        share = c / cand.size
    else:
        ids, first = np.unique(cand, return_index=True)
        share = np.minimum(1.0, np.asarray(est, dtype=np.float64)[valid][first] / max(count, 1.0))
    order = np.lexsort((ids, -share))[:n]
    return [(vocab[t] if t < len(vocab) else f"<{t}>", float(share[j]))
            for j, t in zip(order, ids[order].tolist(), strict=True) if share[j] > 0]


def sketch_estimates(sketch, tokens, features):
    """Count-min estimates `[..., k]` of firings of `features` on `tokens` from a token sketch
    `[..., depth, width]` (format 2 stores)."""
    import numpy as np

    from scope.store.schema import token_sketch_buckets

    sketch = np.asarray(sketch)
    depth, width = sketch.shape[-2:]
    tokens = np.maximum(np.asarray(tokens).astype(np.int64), 0)
    feats = np.asarray(features, dtype=np.int64)
    if sketch.ndim == 2:
        return np.min([sketch[r][token_sketch_buckets(tokens, feats, r, width)]
                       for r in range(depth)], axis=0)
    rows = np.arange(sketch.shape[0])[:, None]
    return np.min([sketch[rows, r, token_sketch_buckets(tokens, feats, r, width)]
                   for r in range(depth)], axis=0)


def feature_auto_label(feature) -> str:
    """`auto_label` of a store feature (its summary row, token sketch and top contexts)."""
    count = int(feature.firing_count)
    if count <= 0:
        return auto_label(0.0, 0)
    top = list(feature.top_examples)
    positions = [int(e.max_position) for e in top]
    summary = getattr(feature, "_summary", None)
    if isinstance(summary, Mapping) and "top_token" in summary:
        rows = feature._rows
        sketch = rows.get("token_sketch") if isinstance(rows, Mapping) else None
        est = None if sketch is None else sketch_estimates(sketch, summary["top_token"],
                                                           int(feature.index))
        fires_on = token_shares(summary["top_token"], summary["top_value"], count,
                                feature._store.vocab, est)
    else:  # a Feature-like object with its own token shares
        fires_on = list(getattr(feature, "fires_on", None) or [])
    return auto_label(float(feature.density), count, fires_on, positions)


def feature_label(feature) -> str:
    """`Feature.label`: the stored explanation's text when there is one, else the automatic
    label (always a non-empty string)."""
    exp = feature_explanation(feature)
    return exp.text if exp is not None and exp.text.strip() else feature_auto_label(feature)


def feature_explanation(feature) -> Explanation | None:
    """`Feature.explanation`: the stored explanation of a store feature, or None."""
    return labels_for(feature._store.path).get(feature.sae_name, int(feature.index))


# ---------------------------------------------------------------------------------------------
# the labels file (explanations, one per feature and SAE)
# ---------------------------------------------------------------------------------------------


class Labels:
    """The explanations stored beside a store: `labels.json` in its folder.

    Layout: `{"format_version": 1, "saes": {SAE_NAME: {"INDEX": {text, score, explainer,
    prompt_version, source}}}}`. Reading tolerates unknown keys; writing is atomic.
    """

    def __init__(self, store_path: str | os.PathLike) -> None:
        self.path = Path(store_path) / LABELS_FILE
        self._data: dict[str, dict[int, Explanation]] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                saes = raw["saes"]
                if not isinstance(saes, dict):
                    raise TypeError("'saes' is not a mapping")
                for name, feats in saes.items():
                    self._data[str(name)] = {int(i): Explanation.from_json(e)
                                             for i, e in feats.items()}
            except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                    AttributeError) as exc:
                raise StoreError(f"{self.path} is unreadable ({exc}); delete it and import or "
                                 "explain again (the store's data is not affected)") from exc

    def get(self, sae: str, index: int) -> Explanation | None:
        return self._data.get(sae, {}).get(int(index))

    def for_sae(self, sae: str) -> dict[int, Explanation]:
        """Every explanation of one SAE, by feature index."""
        return dict(self._data.get(sae, {}))

    def __len__(self) -> int:
        return sum(len(v) for v in self._data.values())

    def update(self, sae: str, items: Mapping[int, Explanation] | Iterable) -> None:
        """Add or replace explanations of one SAE (in memory; `save` writes them)."""
        pairs = items.items() if isinstance(items, Mapping) else items
        self._data.setdefault(sae, {}).update({int(i): e for i, e in pairs})

    def save(self) -> None:
        """Write the file atomically (temp file + rename): readers see old or new, never half."""
        body = {"format_version": LABELS_VERSION,
                "saes": {name: {str(i): e.to_json() for i, e in sorted(feats.items())}
                         for name, feats in sorted(self._data.items())}}
        atomic_write_text(self.path, json.dumps(body, ensure_ascii=False, indent=0))
        _forget(self.path.parent)


_CACHE: dict[Path, tuple[float, Labels]] = {}
_LOCK = threading.Lock()


def labels_for(store_path: str | os.PathLike) -> Labels:
    """The store's `Labels`, re-read only when `labels.json` changed (by mtime)."""
    root = Path(store_path)
    f = root / LABELS_FILE
    try:
        mtime = f.stat().st_mtime_ns
    except OSError:
        mtime = -1
    with _LOCK:
        hit = _CACHE.get(root)
        if hit is not None and hit[0] == mtime:
            return hit[1]
    labels = Labels(root)
    with _LOCK:
        _CACHE[root] = (mtime, labels)
    return labels


def _forget(root: Path) -> None:
    with _LOCK:
        _CACHE.pop(root, None)
