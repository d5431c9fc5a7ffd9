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

import numpy as np

from scope.base.atomic import atomic_write_text
from scope.errors import StoreError

LABELS_FILE = "labels.json"
LABELS_VERSION = 2
READABLE_LABELS_VERSIONS = (1, 2)
#: firing density above which a feature is flagged "dense" (fires on more than 1% of tokens)
DENSE = 0.01
#: firing count below which a feature is flagged "rare"
RARE = 10
#: one token's share of firings at or above which a feature is "single-token"
SINGLE_TOKEN = 0.9
#: share of top contexts peaking in the first POSITION_LIKE_MAX positions -> "start-of-context"
POSITION_LIKE_SHARE = 0.8
POSITION_LIKE_MAX = 2
#: tokens named in an automatic label; the labels of dead features and of those without any
LABEL_TOKENS = 3
DEAD_LABEL, NO_TOKENS_LABEL = "never fired on the store's corpus", "no token statistics"


@dataclass(frozen=True)
class Explanation:
    """A feature's explanation and how good it is.

    Attributes:
        text: the explanation, e.g. "references to cats".
        score: detection balanced accuracy in [0, 1] (0.5 is chance), or None when not scored.
        explainer: the model that wrote it, e.g. "gpt-4o-mini" or "neuronpedia:gpt-4o-mini".
        prompt_version: version of the prompt that produced it (None for imports).
        source: "explain" (scope explain) or "neuronpedia" (imported).
        score_ci: 95% confidence interval `[low, high]` of `score`, or None.
        fuzz_score: fuzzing balanced accuracy in [0, 1], or None when not run.
        protocol: how `score` was measured (`name` plus the protocol's parameters); a score
            written before scoring had a protocol reads as `OLD_PROTOCOL`.
        counts: what the score rests on: `positives` (held-out activating contexts),
            `negatives` (verified non-activating), `hard_negatives`, the confusion counts, and
            the windows used (so a score can be audited).
    """

    text: str
    score: float | None = None
    explainer: str = ""
    prompt_version: str | None = None
    source: str = "explain"
    score_ci: tuple[float, float] | None = None
    fuzz_score: float | None = None
    protocol: dict | None = None
    counts: dict | None = None

    @property
    def scored(self) -> bool:
        return self.score is not None or self.fuzz_score is not None

    def to_json(self) -> dict:
        d = asdict(self)
        d["score_ci"] = None if self.score_ci is None else list(self.score_ci)
        keep = ("text", "score", "explainer", "prompt_version", "source")
        return {k: v for k, v in d.items() if v is not None or k in keep}

    @classmethod
    def from_json(cls, d: Mapping, legacy: bool = False) -> Explanation:
        """Read one entry; `legacy` (a version 1 file) marks its scores as `OLD_PROTOCOL`."""
        pv = d.get("prompt_version")
        ci = d.get("score_ci")
        ci = (tuple(float(x) for x in ci) if isinstance(ci, (list, tuple)) and len(ci) == 2
              and all(_finite(x) is not None for x in ci) else None)
        protocol = d.get("protocol") if isinstance(d.get("protocol"), Mapping) else None
        score = _finite(d.get("score"))
        source = str(d.get("source", "explain"))
        if legacy and protocol is None and score is not None and source == "explain":
            protocol = dict(OLD_PROTOCOL)
        counts = d.get("counts") if isinstance(d.get("counts"), Mapping) else None
        return cls(text=str(d.get("text", "")), score=score, explainer=str(d.get("explainer", "")),
                   prompt_version=None if pv is None else str(pv), source=source, score_ci=ci,
                   fuzz_score=_finite(d.get("fuzz_score")),
                   protocol=None if protocol is None else dict(protocol),
                   counts=None if counts is None else dict(counts))


#: the protocol of scores written before scores carried one: negatives were other features' top
#: contexts, never checked to be inactive, and positives could overlap the explainer's examples
OLD_PROTOCOL = {"name": "scope-explain-v1", "negatives": "unverified (other features' top "
                "contexts)", "positives": "top and band contexts, may overlap the explainer's"}


def _finite(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _rank(e: Explanation) -> tuple:
    """Sort key of the better explanation of one feature: scored before unscored, then by
    detection score, then by fuzzing score."""
    return (e.score is not None or e.fuzz_score is not None,
            -1.0 if e.score is None else e.score, -1.0 if e.fuzz_score is None else e.fuzz_score)


def better(a: Explanation, b: Explanation) -> bool:
    """True when `a` ranks strictly above `b` (the import's rule for duplicates)."""
    return _rank(a) > _rank(b)


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
    """Flags that warn a reader ("dead", "dense", "rare", "start-of-context", "single-token")
    from `density` (firing fraction), `firing_count`, `fires_on` (`(token, share)` best first)
    and `peak_positions` (the peak token's in each top context; 0: BOS or a window's first)."""
    if firing_count <= 0:
        return ["dead"]
    live = live_flags(density, firing_count, fires_on[0][1] if fires_on else 0.0)
    out = [name for name in ("dense", "rare") if live[name]]
    if peak_positions:
        early = sum(1 for p in peak_positions if p <= POSITION_LIKE_MAX) / len(peak_positions)
        if early >= POSITION_LIKE_SHARE:
            out.append("start-of-context")
    return out + ["single-token"] * bool(live["single-token"])


def live_flags(density, firing_count, top_share) -> dict:
    """A live feature's flags from its density, count and top share (numbers or arrays)."""
    return {"dense": density > DENSE, "rare": firing_count < RARE,
            "single-token": (top_share >= SINGLE_TOKEN) & (firing_count >= RARE)}


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
        return DEAD_LABEL
    toks = " · ".join(f"{show_token(t)} {share_text(s)}"
                      for t, s in list(fires_on)[:n_tokens] if s > 0)
    text = toks or NO_TOKENS_LABEL
    return f"{text} [{', '.join(marks)}]" if marks else text


def percent(share):
    """A share as a label prints it, in whole percent (-1: under 1%), for a number or array."""
    p = 100.0 * np.asarray(share, dtype=np.float64)
    return np.where(p >= 1, np.rint(p), -1).astype(np.int64)


def share_text(share: float) -> str:
    return f"{v}%" if (v := int(percent(float(share)))) >= 0 else "<1%"


def token_shares(tokens, values, count: float, vocab: Sequence[str], est=None,
                 n: int = LABEL_TOKENS) -> list[tuple[str, float]]:
    """The tokens an automatic label names: `(token, share of firings)` best first.

    Candidates are the peak tokens of the feature's top contexts (`tokens`, `values`: the
    summary's `top_token` and `top_value` rows). With `est` (count-min estimates of the
    feature's firings on each of `tokens`, from a format 2 store's token sketch) a share is
    `est / count`; without it, the token's share of the top contexts. The feature list labels
    every feature with this same function, so its labels match `Feature.label`.
    """
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

    Layout: `{"format_version": 2, "saes": {SAE_NAME: {"INDEX": {text, score, explainer,
    prompt_version, source, score_ci?, fuzz_score?, protocol?, counts?}}}}` (version 1 files,
    without the optional keys, read the same). Reading tolerates unknown keys and refuses an
    unknown format version; writing is atomic. Writers that may run beside another (explain,
    import) go through `scope.explore.writing`, which re-reads the file under the store's lock
    and merges, so no writer drops another's explanations.
    """

    def __init__(self, store_path: str | os.PathLike) -> None:
        self.path = Path(store_path) / LABELS_FILE
        self._data: dict[str, dict[int, Explanation]] = {}
        self.reload()

    def reload(self) -> None:
        """Read the file again (what other writers saved meanwhile); missing = empty."""
        self._data = {}
        if not self.path.is_file():
            return
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            version = raw.get("format_version", 1)
            if version not in READABLE_LABELS_VERSIONS:
                raise StoreError(
                    f"{self.path} has labels format {version!r}, which this scope does not read "
                    f"({', '.join(map(str, READABLE_LABELS_VERSIONS))}); upgrade scope (the "
                    "store's data is not affected)")
            saes = raw["saes"]
            if not isinstance(saes, dict):
                raise TypeError("'saes' is not a mapping")
            for name, feats in saes.items():
                self._data[str(name)] = {_index(i): Explanation.from_json(e, version == 1)
                                         for i, e in feats.items()}
        except StoreError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
                RecursionError) as exc:
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

    def merge(self, sae: str, items: Mapping[int, Explanation], *,
              replace_scored: bool = False) -> MergeReport:
        """Add `items`, keeping every scored explanation already there unless `replace_scored`
        (an unscored one is replaced; a scored one is replaced only by the flag, or by an
        explanation of the same explainer and source, i.e. a rerun of the same command)."""
        have = self._data.setdefault(sae, {})
        report = MergeReport()
        for i, e in items.items():
            old = have.get(int(i))
            if (old is not None and old.scored and not replace_scored
                    and (old.source, old.explainer) != (e.source, e.explainer)):
                report.kept_scored += 1
                continue
            report.replaced += old is not None
            report.added += old is None
            have[int(i)] = e
        return report

    def save(self) -> None:
        """Write the file atomically (temp file + rename): readers see old or new, never half."""
        body = {"format_version": LABELS_VERSION,
                "saes": {name: {str(i): e.to_json() for i, e in sorted(feats.items())}
                         for name, feats in sorted(self._data.items())}}
        atomic_write_text(self.path, json.dumps(body, ensure_ascii=False, indent=0,
                                                allow_nan=False))
        _forget(self.path.parent)


@dataclass
class MergeReport:
    """What `Labels.merge` did: explanations added, replaced, and scored ones it kept."""
    added: int = 0
    replaced: int = 0
    kept_scored: int = 0


def _index(key) -> int:
    """A feature index key of labels.json ("12"); anything else is a ValueError."""
    if isinstance(key, str) and key.isdigit():
        return int(key)
    raise ValueError(f"feature key {key!r} is not a non-negative integer")


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
