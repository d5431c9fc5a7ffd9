"""The feature store's format, spelled once: version, file and array names, manifest dataclasses.

Every other module (reader, writer, checkpoint, merge, extraction) takes its names from here.
The manifest on disk is JSON; `Manifest.from_dict` validates what it reads (types, versions, and
that every folder it names stays inside the store) and keeps unknown keys, so newer writers'
additions survive a round trip. Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scope.errors import StoreCorruptError, StoreError, StoreOutsideError

#: version this scope writes; 1 is still read (read-only, histograms may be clipped at 1e3)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# -- file and folder names ------------------------------------------------------------------------
MANIFEST = "manifest.json"
VOCAB = "vocab.json"
LOCK = ".scope.lock"
WINDOWS = "windows.safetensors"
SUMMARY = "summary.safetensors"
SAES_DIR = "saes"
TABLES_DIR = "tables"
RANKS_DIR = "ranks"
GEN_PREFIX = "gen-"
STATUS_PARTIAL = "partial"
STATUS_COMPLETE = "complete"
#: names a store folder may hold besides the manifest, generations and dot-files
OWN_NAMES = (VOCAB, TABLES_DIR, RANKS_DIR)


def features_filename(start: int, end: int) -> str:
    """Name of the file holding features `start <= i < end` (data and tables alike)."""
    return f"features_{start:06d}_{end:06d}.safetensors"


def generation_name(number: int) -> str:
    return f"{GEN_PREFIX}{number:06d}"


def is_generation(name: str) -> bool:
    """Whether `name` is a generation folder name this scope writes (`gen-` and six digits);
    `gen-analysis.md` or `gen-notes/` are a user's, never a store's."""
    return (len(name) == len(GEN_PREFIX) + 6 and name.startswith(GEN_PREFIX)
            and name[len(GEN_PREFIX):].isdigit())


def is_own_temp(name: str) -> bool:
    """Whether `name` is a leftover of an interrupted atomic write of one of the store's own
    files or folders (`.manifest.json.XXXX.tmp`, `.gen-000003.XXXX.tmp`, a stale lock aside)."""
    if name.startswith(f"{LOCK}.stale-"):
        return True
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:-len(".tmp")].rsplit(".", 1)[0]
    return target in (MANIFEST, *OWN_NAMES) or is_generation(target)


# -- array names ----------------------------------------------------------------------------------
# windows.safetensors
WINDOW_INDEX = "window_index"  # [W] int64 global window indices, ascending
WINDOW_TOKENS = "window_tokens"  # [W, ctx] int32
# summary.safetensors: [F] per feature, plus one scalar
FIRING_COUNT = "firing_count"  # [F] int64
ACT_SUM_FIXED = "act_sum_fixed"  # [F] int64, sum of round(a * 2**sum_bits)
MAX_ACTIVATION = "max_activation"  # [F] float32
MEAN_ACTIVATION = "mean_activation"  # [F] float32
DENSITY = "density"  # [F] float64
TOP_VALUE = "top_value"  # [F, k] float32 (also in the feature files)
TOP_TOKEN = "top_token"  # [F, k] int32 token id at each top context's peak
TOKENS_COUNTED = "tokens_counted"  # [1] int64
SCALAR_KEYS = (TOKENS_COUNTED,)
# features_START_END.safetensors in a generation: rows START..END-1
HISTOGRAM = "histogram"  # [n, n_bins] int64
TOP_WINDOW, TOP_POS, TOP_ACTS = "top_window", "top_pos", "top_acts"
BAND_WINDOW, BAND_VALUE, BAND_POS, BAND_ACTS = "band_window", "band_value", "band_pos", "band_acts"
TOKEN_SKETCH = "token_sketch"  # [n, depth, width] int64 count-min sketch of firing tokens
# features_START_END.safetensors in tables/<sae dir>/: written once per run
LOGIT_POS_IDS, LOGIT_POS_VALS = "logit_pos_ids", "logit_pos_vals"
LOGIT_NEG_IDS, LOGIT_NEG_VALS = "logit_neg_ids", "logit_neg_vals"
LOGIT_KEYS = (LOGIT_POS_IDS, LOGIT_POS_VALS, LOGIT_NEG_IDS, LOGIT_NEG_VALS)
NEIGHBOUR_INDEX, NEIGHBOUR_COSINE = "neighbour_index", "neighbour_cosine"  # [n, 10]
NEIGHBOUR_MODES = ("exact", "approximate")  # how a neighbour table was made
TABLE_KEYS = (*LOGIT_KEYS, NEIGHBOUR_INDEX, NEIGHBOUR_COSINE)


def token_sketch_buckets(tokens, features, row: int, width: int):
    """Bucket of each (token, feature) in row `row` of the count-min sketch of firing tokens.

    A multiply-shift-xor mix of the token id salted by feature and row, in int64 with operators
    only, so numpy arrays (the reader) and torch tensors (the accumulator) give the same buckets.
    Every step is masked to 32 bits, so numpy arrays are mixed in uint32 (where the masks are
    free: the same buckets, about twice as fast). `width` is a power of two.
    """
    m = 0xFFFFFFFF
    x = (tokens & m) ^ ((features * 0x9E3779B1 + (row + 1) * 0x85EBCA6B) & m)
    if isinstance(x, np.ndarray):
        x = x.astype(np.uint32)
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & m
    x = x ^ (x >> 16)
    return x & (width - 1)


def _plain_name(root: Path, key: str, name: Any) -> str:
    """`name` if it is one plain folder name inside `root`; else a StoreOutsideError."""
    bad = (not isinstance(name, str) or not name or name in (".", "..")
           or any(c in name for c in "/\\\0"))
    if not bad:
        base = root.resolve()
        target = (base / name).resolve()
        bad = target == base or not target.is_relative_to(base)
    if bad:
        raise StoreOutsideError(
            f"{root / MANIFEST}: {key} = {name!r} is not a plain folder name inside the store; "
            "refusing a store that points outside its folder. Re-extract it or fix the "
            "manifest by hand")
    return name


def _damaged(root: Path, what: str) -> StoreCorruptError:
    return StoreCorruptError(f"{root / MANIFEST}: {what}; the manifest is damaged: restore it "
                             "or extract the store again")


def _int(root: Path, key: str, value: Any, low: int = 0) -> int:
    """`value` if it is an int >= `low` (not a bool, not a string); else a named error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _damaged(root, f"`{key}` = {value!r} is not an integer >= {low}")
    return value


def _edges(root: Path, key: str, value: Any) -> list[float]:
    """`value` if it is a list of >= 2 finite, strictly increasing numbers."""
    ok = (isinstance(value, list) and len(value) >= 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  for v in value)
          and all(a < b for a, b in zip(value, value[1:], strict=False)))
    if not ok:
        raise _damaged(root, f"`{key}` is not a list of increasing finite numbers")
    return value


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@dataclass
class SAEEntry:
    """One SAE of the store (`manifest["saes"][i]`)."""

    name: str
    """Unique within the store: the SAE's release/id or hook name (`#2` for a repeat)."""
    dir: str
    """Its folder under `saes/` and `tables/` (a plain name, checked on read)."""
    hook_name: str
    d_in: int
    d_sae: int
    spec: str | None = None
    """What `scope.load_sae` accepts to load it again."""
    neuronpedia_id: str | None = None
    model_name: str | None = None
    release: str | None = None
    sae_id: str | None = None
    kind: str | None = None
    neighbours: str | None = None
    """How its neighbour table was made: "exact" or "approximate" (None: not recorded)."""
    extra: dict = field(default_factory=dict)
    """Keys this version does not know (kept on a round trip)."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], root: Path) -> SAEEntry:
        if not isinstance(d, Mapping):
            raise StoreCorruptError(f"{root / MANIFEST}: an entry of `saes` is not an object; "
                                    "the store is corrupt: extract it again")
        _plain_name(root, "saes[].dir", d.get("dir"))
        known = _fields(cls) - {"extra"}
        try:
            entry = cls(**{k: d[k] for k in known if k in d},
                        extra={k: v for k, v in d.items() if k not in known})
        except TypeError as exc:
            raise StoreCorruptError(f"{root / MANIFEST}: SAE entry {dict(d)!r} lacks a key "
                                    f"({exc}); the store is corrupt: extract it again") from None
        for key in ("name", "hook_name"):
            if not isinstance(getattr(entry, key), str) or not getattr(entry, key):
                raise _damaged(root, f"`saes[].{key}` = {getattr(entry, key)!r} is not a name")
        _int(root, "saes[].d_in", entry.d_in, 1)
        _int(root, "saes[].d_sae", entry.d_sae, 1)
        if entry.neighbours not in (None, *NEIGHBOUR_MODES):
            raise _damaged(root, f"`saes[].neighbours` = {entry.neighbours!r} is none of "
                                 f"{', '.join(NEIGHBOUR_MODES)}")
        return entry

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in _fields(self) - {"extra"}}
        return {**self.extra, **d}


@dataclass
class RunConfig:
    """The resolved run configuration; resuming and merging require it to be equal."""

    model: str
    saes: list[dict]
    """Per SAE: name, spec, hook_name, d_sae, dtype."""
    corpus: dict
    tokens: int | None
    ctx: int
    batch_size: int
    top_k: int
    shard: list[int] | None
    """`[i, n]` for a `--shard i/n` run, else None."""
    model_dtype: str
    logits: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Manifest:
    """`manifest.json`: what the store holds, how it was made, how far the run got."""

    saes: list[SAEEntry]
    config: dict
    """`RunConfig.to_dict()` of the run that made it."""
    model: dict
    """`{name, spec}`; spec is what `scope.load_model` accepts."""
    corpus: dict
    ctx: int
    top_k: int
    band_samples: int
    histogram_edges: list[float]
    band_edges: list[float]
    feature_shard_size: int
    format_version: int = FORMAT_VERSION
    tool_version: str = ""
    status: str = STATUS_PARTIAL
    shard: list[int] | None = None
    tokens: int = 0
    windows: int = 0
    sum_bits: int = 20
    n_logits: int = 10
    n_neighbours: int = 10
    token_sketch: dict | None = None
    """`{depth, width}` of the count-min sketch of firing tokens (None in v1)."""
    tables: str | None = None
    """Folder of the once-per-run tables (decoder logits, neighbours); None in v1."""
    data: str | None = None
    """The current generation folder; None until the first checkpoint."""
    corpus_skipped: dict = field(default_factory=dict)
    created: str = ""
    updated: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, root: Path) -> Manifest:
        path = root / MANIFEST
        if not isinstance(d, Mapping) or "format_version" not in d:
            raise StoreCorruptError(f"{path} is not a scope store manifest (no format_version); "
                                    "point at a folder `scope extract` wrote")
        version = d["format_version"]
        if not isinstance(version, int) or version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and version > FORMAT_VERSION
            raise StoreError(f"{path}: store format {version!r} is not one this scope reads "
                             f"({', '.join(map(str, READABLE_VERSIONS))})"
                             + ("; upgrade scope" if newer else "; extract the store again"))
        if d.get("data") is not None:
            _plain_name(root, "data", d["data"])
        if d.get("tables") is not None:
            _plain_name(root, "tables", d["tables"])
        saes = d.get("saes")
        if not isinstance(saes, list):
            raise StoreCorruptError(f"{path}: `saes` is not a list; the store is corrupt: "
                                    "extract it again")
        known = _fields(cls) - {"extra", "saes"}
        kw = {k: d[k] for k in known if k in d}
        try:
            m = cls(saes=[SAEEntry.from_dict(s, root) for s in saes], **kw,
                    extra={k: v for k, v in d.items() if k not in known | {"saes"}})
        except TypeError as exc:
            raise StoreCorruptError(f"{path} lacks a key ({exc}); the store is corrupt: extract "
                                    "it again") from None
        m._check(root)
        return m

    def _check(self, root: Path) -> None:
        """Types and ranges of every field a reader or a resumed run relies on."""
        for key, low in (("ctx", 2), ("top_k", 1), ("band_samples", 1),
                         ("feature_shard_size", 1), ("tokens", 0), ("windows", 0),
                         ("sum_bits", 0), ("n_logits", 0), ("n_neighbours", 0)):
            _int(root, key, getattr(self, key), low)
        _edges(root, "histogram_edges", self.histogram_edges)
        _edges(root, "band_edges", self.band_edges)
        if self.status not in (STATUS_PARTIAL, STATUS_COMPLETE):
            raise _damaged(root, f"`status` = {self.status!r} is neither {STATUS_PARTIAL!r} nor "
                                 f"{STATUS_COMPLETE!r}")
        if not isinstance(self.config, dict):
            raise _damaged(root, "`config` is not an object")
        if self.token_sketch is not None:
            ts = self.token_sketch
            if not isinstance(ts, dict):
                raise _damaged(root, "`token_sketch` is not an object")
            _int(root, "token_sketch.depth", ts.get("depth"), 1)
            width = _int(root, "token_sketch.width", ts.get("width"), 1)
            if width & (width - 1):
                raise _damaged(root, f"`token_sketch.width` = {width} is not a power of two")
        for key in ("name", "dir"):
            seen: set[str] = set()
            for entry in self.saes:
                value = getattr(entry, key)
                if value in seen:
                    raise _damaged(root, f"two SAEs share the {key} {value!r}")
                seen.add(value)

    def to_dict(self) -> dict:
        d = {f: getattr(self, f) for f in _fields(self) - {"extra", "saes"}}
        return {**self.extra, **d, "saes": [s.to_dict() for s in self.saes]}

    def sae(self, name: str) -> SAEEntry:
        for s in self.saes:
            if s.name == name:
                return s
        raise KeyError(name)
