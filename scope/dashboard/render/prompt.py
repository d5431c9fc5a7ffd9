"""Live prompts: per-token feature rankings (inspector) and steering requests typed by the user.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scope.dashboard.render.text import display_token, esc, format_value
from scope.dashboard.render.tokens import feature_link


def top_features_per_token(
    acts: np.ndarray, tokens: Sequence[str], k: int = 5
) -> list[list[tuple[int, float]]]:
    """For activations [pos, d_sae], each position's k strongest firing features, best first."""
    acts = np.asarray(acts)
    if acts.ndim != 2 or acts.shape[0] != len(tokens):
        raise ValueError(f"expected activations [pos={len(tokens)}, d_sae], got {acts.shape}")
    k = max(1, min(int(k), acts.shape[1]))
    out = []
    idx = np.argpartition(-acts, k - 1, axis=1)[:, :k]
    for p in range(acts.shape[0]):
        row = sorted(((int(f), float(acts[p, f])) for f in idx[p]), key=lambda t: -t[1])
        out.append([(f, v) for f, v in row if v > 0])
    return out

def prompt_features(acts: np.ndarray, k: int = 20) -> list[tuple[int, float]]:
    """Features of a prompt ranked by their max activation over it, best first (nonzero only)."""
    acts = np.asarray(acts)
    peak = acts.max(axis=0)
    order = np.argsort(-peak, kind="stable")[:k]
    return [(int(f), float(peak[f])) for f in order if peak[f] > 0]

def inspector_rank(acts: np.ndarray, store_max: np.ndarray, *, relative: bool = True,
                   hide: np.ndarray | None = None, k: int = 5) -> list[list[tuple[int, float, float]]]:
    """Per token, its top `k` features as `(feature, activation, activation / store max)`.

    Args:
        acts: `[pos, d_sae]` activations of a prompt.
        store_max: `[d_sae]` each feature's max activation in the store.
        relative: rank by the fraction of the feature's store max (else by raw activation).
        hide: `[d_sae]` bool, features to leave out (e.g. dense ones).
        k: features per token.
    """
    acts = np.asarray(acts, dtype=np.float64)
    peak = np.asarray(store_max, dtype=np.float64)
    frac = np.divide(acts, peak, out=np.zeros_like(acts), where=peak > 0)
    key = frac if relative else acts.copy()
    key = np.where(acts > 0, key, -np.inf)
    if hide is not None:
        key[:, np.asarray(hide, dtype=bool)] = -np.inf
    k = max(1, min(int(k), acts.shape[1]))
    idx = np.argpartition(-key, k - 1, axis=1)[:, :k]
    out = []
    for p in range(acts.shape[0]):
        row = sorted(idx[p], key=lambda f: (-key[p, f], f))
        out.append([(int(f), float(acts[p, f]), float(frac[p, f])) for f in row
                    if np.isfinite(key[p, f])])
    return out

def inspector_html(sae: str, tokens: Sequence[str], ranked: Sequence[Sequence[tuple]],
                   labels: Sequence[str], skip: int = 0) -> str:
    """The inspector's per-token table: position, token, then each feature as a link with its
    label, activation and share of its store max. Wraps inside the page's width."""
    rows = []
    for p, (tok, feats) in enumerate(zip(tokens, ranked, strict=True)):
        if p < skip:
            cell = '<span style="color:#888">BOS: not read by SAEs</span>'
        elif not feats:
            cell = '<span style="color:#888">—</span>'
        else:
            cell = "<br>".join(
                f'{feature_link(sae, f, labels[f] if f < len(labels) else None, max_label=40)} '
                f'<span style="color:#a04000">{esc(format_value(v))}</span>'
                f'<span style="color:#888"> ({frac:.0%} of max)</span>'
                for f, v, frac in feats)
        rows.append(f'<tr style="border-top:1px solid #eee;vertical-align:top">'
                    f'<td style="color:#888;padding:2px 6px 2px 0">{p}</td>'
                    f'<td style="font-family:ui-monospace,monospace;white-space:pre-wrap;'
                    f'overflow-wrap:anywhere;padding:2px 8px 2px 0">{esc(display_token(tok))}</td>'
                    f'<td style="overflow-wrap:anywhere;padding:2px 0">{cell}</td></tr>')
    return ('<table style="border-collapse:collapse;width:100%;table-layout:fixed;'
            'font-size:0.85em"><colgroup><col style="width:2.5em"><col style="width:7em"><col>'
            '</colgroup><thead><tr><th style="text-align:left">pos</th>'
            '<th style="text-align:left">token</th><th style="text-align:left">top features '
            "(activation, share of the feature's max in the store)</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")

def parse_steering(text: str) -> dict[int, float]:
    """Parse "12:8, 40:-3.5" into {12: 8.0, 40: -3.5}; raises ValueError naming the bad part."""
    spec: dict[int, float] = {}
    for raw in text.replace(";", ",").split(","):
        part = raw.strip()
        if not part:
            continue
        if ":" not in part:
            raise ValueError(f"{part!r}: write each entry as FEATURE:STRENGTH, e.g. 1234:8")
        f, s = (x.strip() for x in part.split(":", 1))
        try:
            feature = int(f)
        except ValueError:
            raise ValueError(f"{part!r}: feature {f!r} is not an integer index") from None
        try:
            strength = float(s)
        except ValueError:
            raise ValueError(f"{part!r}: strength {s!r} is not a number") from None
        if feature < 0:
            raise ValueError(f"{part!r}: feature index must be >= 0")
        if not math.isfinite(strength):
            raise ValueError(f"{part!r}: strength must be finite")
        spec[feature] = strength
    return spec

def steering_rows(spec: dict[int, float], mode: str, d_sae: int | None = None) -> list[dict]:
    """Rows describing a steering request for display; flags indices outside the SAE."""
    rows = []
    for f, s in spec.items():
        row = {"feature": f, "mode": mode, "strength": s}
        if d_sae is not None and not 0 <= f < d_sae:
            row["note"] = f"out of range (SAE has {d_sae} features)"
        rows.append(row)
    return rows
