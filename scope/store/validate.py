"""What each file of a store must hold, checked as the reader opens it (numpy only).

A file's header (array names, shapes, dtypes) is checked against the manifest once, when the
reader first opens it: that costs a few microseconds and reads no data. Values are checked on
the rows a reader actually reads (one feature's rows, or a whole summary when it is loaded):
indices below `d_sae`, positions inside the context, finite numbers where the format has them,
no negative counts. Anything else raises `StoreCorruptError` naming the file and the array, so
a damaged or hand-edited store is never shown as if it were data. Folders and files must not
lead outside the store (a symlink into another store is refused with `StoreOutsideError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scope.errors import StoreCorruptError, StoreOutsideError
from scope.store import schema as S

#: `{array name: (shape, safetensors dtype)}`; `None` in a shape is "any length, the same for
#: every array of the file" (the window count)
Spec = dict[str, tuple[tuple[int | None, ...], str]]


def corrupt(root: Path, path: Path, what: str) -> StoreCorruptError:
    return StoreCorruptError(f"store {root}: {path} {what}; the store is corrupt (a damaged "
                             "copy or an edit by hand): extract it again")


def inside(root: Path, path: Path) -> Path:
    """`path` when it (after following symlinks) lies inside the store `root`."""
    base, real = root.resolve(), path.resolve()
    if real != base and not real.is_relative_to(base):
        raise StoreOutsideError(f"store {root}: {path} leads outside the store (to {real}); "
                                "refusing to read another folder as this store's data. Copy "
                                "the files in instead of linking them")
    return path


def summary_spec(m: S.Manifest, entry: S.SAEEntry) -> Spec:
    F, k = entry.d_sae, m.top_k
    return {S.FIRING_COUNT: ((F,), "I64"), S.ACT_SUM_FIXED: ((F,), "I64"),
            S.MAX_ACTIVATION: ((F,), "F32"), S.MEAN_ACTIVATION: ((F,), "F32"),
            S.DENSITY: ((F,), "F64"), S.TOP_VALUE: ((F, k), "F32"),
            S.TOP_TOKEN: ((F, k), "I32"), S.TOKENS_COUNTED: ((1,), "I64")}


def features_spec(m: S.Manifest, n: int) -> Spec:
    k, P, s = m.top_k, m.ctx, m.band_samples
    B = len(m.band_edges) - 1
    spec: Spec = {
        S.HISTOGRAM: ((n, len(m.histogram_edges) - 1), "I64"),
        S.TOP_WINDOW: ((n, k), "I64"), S.TOP_VALUE: ((n, k), "F32"),
        S.TOP_POS: ((n, k), "I32"), S.TOP_ACTS: ((n, k, P), "F16"),
        S.BAND_WINDOW: ((n, B, s), "I64"), S.BAND_VALUE: ((n, B, s), "F32"),
        S.BAND_POS: ((n, B, s), "I32"), S.BAND_ACTS: ((n, B, s, P), "F16")}
    if m.token_sketch is not None:
        spec[S.TOKEN_SKETCH] = ((n, m.token_sketch["depth"], m.token_sketch["width"]), "I64")
    return spec


def tables_spec(m: S.Manifest, n: int) -> Spec:
    spec: Spec = {key: ((n, m.n_logits), "I32" if key.endswith("_ids") else "F32")
                  for key in S.LOGIT_KEYS}
    if m.format_version >= 2:
        spec[S.NEIGHBOUR_INDEX] = ((n, m.n_neighbours), "I32")
        spec[S.NEIGHBOUR_COSINE] = ((n, m.n_neighbours), "F32")
    return spec


def windows_spec(m: S.Manifest) -> Spec:
    return {S.WINDOW_INDEX: ((None,), "I64"), S.WINDOW_TOKENS: ((None, m.ctx), "I32")}


def check_header(root: Path, path: Path, handle: Any, spec: Spec, strict: bool) -> None:
    """Array names, shapes and dtypes of an opened safetensors file against `spec`.

    `strict` (format 2): every array of `spec` must be there with its dtype. Otherwise
    (format 1, written by older scopes) only the row counts of the arrays present are checked.
    Arrays the spec does not name are tolerated (newer writers may add some).
    """
    keys = set(handle.keys())
    missing = sorted(set(spec) - keys)
    if strict and missing:
        raise corrupt(root, path, f"lacks the arrays {missing}")
    free: int | None = None
    for key in sorted(keys & set(spec)):
        shape, dtype = spec[key]
        sl = handle.get_slice(key)
        got, got_dtype = tuple(sl.get_shape()), sl.get_dtype()
        if shape[0] is None:
            free = got[0] if free is None and got else free
            shape = (free, *shape[1:])
        want = shape if strict else shape[:1]
        if got[: len(want)] != want or (strict and (len(got) != len(shape) or got_dtype != dtype)):
            raise corrupt(root, path, f"holds `{key}` of shape {list(got)} {got_dtype}, where "
                                      f"the manifest implies {list(shape)} {dtype}")


_NP = {"I64": np.int64, "I32": np.int32, "F32": np.float32, "F16": np.float16, "F64": np.float64}


def check_arrays(root: Path, path: Path, arrays: Mapping[str, np.ndarray], spec: Spec) -> None:
    """`check_header` for arrays already loaded (resume, merge): every array of `spec` there,
    with its shape and dtype."""
    missing = sorted(set(spec) - set(arrays))
    if missing:
        raise corrupt(root, path, f"lacks the arrays {missing}")
    free: int | None = None
    for key, (shape, dtype) in spec.items():
        a = arrays[key]
        if shape[0] is None:
            free = a.shape[0] if free is None and a.ndim else free
            shape = (free, *shape[1:])
        if tuple(a.shape) != shape or a.dtype != _NP[dtype]:
            raise corrupt(root, path, f"holds `{key}` of shape {list(a.shape)} {a.dtype}, "
                                      f"where the manifest implies {list(shape)} {dtype}")


def _bad(root: Path, path: Path, key: str, what: str) -> StoreCorruptError:
    return corrupt(root, path, f"holds {what} in `{key}`")


def _contexts(root, path, rows, window_key, value_key, pos_key, acts_key, ctx) -> None:
    if window_key not in rows:
        return
    w = rows[window_key]
    if (w < -1).any():
        raise _bad(root, path, window_key, "a window index below -1")
    used = w >= 0
    if pos_key in rows:
        p = rows[pos_key][used]
        if ((p < 0) | (p >= ctx)).any():
            raise _bad(root, path, pos_key, f"a position outside the context (0..{ctx - 1})")
    if value_key in rows:
        v = rows[value_key][used]
        if not np.isfinite(v).all() or (v < 0).any():
            raise _bad(root, path, value_key, "a NaN, infinite or negative activation")
    if acts_key in rows and not np.isfinite(rows[acts_key][used]).all():
        raise _bad(root, path, acts_key, "a NaN or infinite activation")


def check_feature_rows(root: Path, path: Path, rows: Mapping[str, np.ndarray], ctx: int) -> None:
    """Values of the per-feature rows read from a data file (any number of rows)."""
    for key in (S.HISTOGRAM, S.TOKEN_SKETCH):
        if key in rows and (rows[key] < 0).any():
            raise _bad(root, path, key, "a negative count")
    _contexts(root, path, rows, S.TOP_WINDOW, S.TOP_VALUE, S.TOP_POS, S.TOP_ACTS, ctx)
    _contexts(root, path, rows, S.BAND_WINDOW, S.BAND_VALUE, S.BAND_POS, S.BAND_ACTS, ctx)


def check_table_rows(root: Path, path: Path, rows: Mapping[str, np.ndarray], d_sae: int) -> None:
    """Values of the rows read from a tables file: logit ids and neighbours."""
    for ids_key, vals_key in ((S.LOGIT_POS_IDS, S.LOGIT_POS_VALS),
                              (S.LOGIT_NEG_IDS, S.LOGIT_NEG_VALS),
                              (S.NEIGHBOUR_INDEX, S.NEIGHBOUR_COSINE)):
        if ids_key not in rows:
            continue
        ids = rows[ids_key]
        if (ids < -1).any():
            raise _bad(root, path, ids_key, "an index below -1")
        if ids_key == S.NEIGHBOUR_INDEX and (ids >= d_sae).any():
            raise _bad(root, path, ids_key, f"a feature index >= d_sae ({d_sae})")
        if vals_key in rows and not np.isfinite(rows[vals_key][ids >= 0]).all():
            raise _bad(root, path, vals_key, "a NaN or infinite value")


def check_summary(root: Path, path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Values of a summary (whole or one row)."""
    for key in (S.FIRING_COUNT, S.TOKENS_COUNTED):
        if key in arrays and (arrays[key] < 0).any():
            raise _bad(root, path, key, "a negative count")
    for key in (S.MAX_ACTIVATION, S.MEAN_ACTIVATION, S.DENSITY, S.TOP_VALUE):
        if key in arrays and not np.isfinite(arrays[key]).all():
            raise _bad(root, path, key, "a NaN or infinite value")
    if S.TOP_TOKEN in arrays and (arrays[S.TOP_TOKEN] < -1).any():
        raise _bad(root, path, S.TOP_TOKEN, "a token id below -1")


def check_windows(root: Path, path: Path, index: np.ndarray) -> None:
    """The window index must ascend strictly (the reader looks windows up by bisection)."""
    if len(index) > 1 and not (np.diff(index) > 0).all():
        raise _bad(root, path, S.WINDOW_INDEX, "window indices that do not ascend")
