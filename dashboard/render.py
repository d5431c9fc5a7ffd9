"""Pure rendering helpers for the dashboard: token shading, logit tables, figures, parsing.

Nothing here imports Streamlit or touches a store or a model: every function maps plain values
(lists, numpy arrays, dicts) to HTML strings, plotly figures or plain rows, so each is tested on
its own. Every piece of token text that goes into HTML passes through `esc` (html.escape with
quote=True), in element bodies and in `title=` attributes alike, so a corpus holding `<script>`
renders as text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

NEURONPEDIA_BASE = "https://www.neuronpedia.org"

# Shading colours (r, g, b): positive activations orange, negative ones blue.
_POS_RGB = (255, 138, 0)
_NEG_RGB = (40, 120, 255)

# Shared token styles, sent once per st.html block so each token carries only its colour
# (a page of 20 contexts is ~5x smaller than with inline styles, and renders faster).
TOKEN_CSS = (
    "<style>"
    ".scope-tokens{line-height:1.9;margin:2px 0 6px 0;overflow-wrap:anywhere}"
    ".scope-tok{white-space:pre-wrap;border-radius:3px;padding:1px 0;margin:0;"
    "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.85em}"
    ".scope-peak{border-bottom:2px solid #c04000}"
    ".scope-more{color:#888}"
    "</style>"
)


def with_css(fragment: str) -> str:
    """Prefix an HTML fragment of token lines with the token styles."""
    return TOKEN_CSS + fragment


def esc(text: object) -> str:
    """HTML-escape any text (including quotes) for element bodies and attribute values."""
    return html.escape(str(text), quote=True)


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:")


def md_escape(text: object) -> str:
    """Backslash-escape Markdown syntax so text from a store shows literally in st.markdown,
    captions and widget labels (Streamlit escapes raw HTML there itself)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


def display_token(token: str) -> str:
    """Make invisible characters visible: newlines as ↵, tabs as ⇥, an empty token as ∅."""
    if token == "":
        return "∅"
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def format_value(value: float) -> str:
    """A compact number for hover text and tables (3 significant digits, no -0)."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    return f"{value:.3g}"


def format_density(density: float) -> str:
    """A firing fraction as a percentage with enough digits for rare features."""
    if density <= 0:
        return "0% (dead)"
    pct = 100.0 * density
    return f"{pct:.3g}%" if pct >= 0.001 else f"{pct:.2e}%"


def shade(value: float, max_value: float) -> str:
    """Background colour for a token: opacity grows with |value| / max_value."""
    if max_value <= 0 or value == 0 or not math.isfinite(value):
        return "transparent"
    alpha = min(1.0, abs(value) / max_value)
    r, g, b = _POS_RGB if value > 0 else _NEG_RGB
    return f"rgba({r},{g},{b},{alpha:.3f})"


def tokens_html(
    tokens: Sequence[str],
    activations: Sequence[float],
    max_value: float | None = None,
    *,
    highlight: int | None = None,
    prefix: str = "",
    suffix: str = "",
) -> str:
    """One line of tokens, each shaded by its activation, the value shown on hover.

    Args:
        tokens: token strings (any text; escaped here).
        activations: one value per token.
        max_value: the activation that gets full colour (default: the largest |value| here).
        highlight: index of a token to underline (the example's peak).
        prefix, suffix: plain text shown before/after (escaped), e.g. "…" for a cropped window.

    Returns:
        A `<div class="scope-tokens">` of `<span class="scope-tok" title="…">` elements, shaded
        ones with an inline background colour; show it with `with_css` (the shared styles).
    """
    if len(tokens) != len(activations):
        raise ValueError(f"{len(tokens)} tokens but {len(activations)} activations")
    acts = [float(a) for a in activations]
    if max_value is None:
        max_value = max((abs(a) for a in acts), default=0.0)
    parts = ['<div class="scope-tokens">']
    if prefix:
        parts.append(f'<span class="scope-more">{esc(prefix)}</span>')
    for i, (tok, act) in enumerate(zip(tokens, acts, strict=True)):
        cls = "scope-tok scope-peak" if i == highlight else "scope-tok"
        colour = shade(act, max_value)
        style = f' style="background-color:{colour}"' if colour != "transparent" else ""
        title = f"{display_token(tok)!r}  activation {format_value(act)}"
        parts.append(
            f'<span class="{cls}" title="{esc(title)}"{style}>{esc(display_token(tok))}</span>'
        )
    if suffix:
        parts.append(f'<span class="scope-more">{esc(suffix)}</span>')
    parts.append("</div>")
    return "".join(parts)


class Window(NamedTuple):
    """A cropped slice of a context: its tokens, activations and where it sits."""

    tokens: list[str]
    activations: list[float]
    start: int
    end: int
    center: int  # index of the peak token within the window


def context_window(
    tokens: Sequence[str], activations: Sequence[float], center: int, left: int = 24, right: int = 8
) -> Window:
    """Crop a context to `left` tokens before and `right` tokens after position `center`."""
    n = len(tokens)
    center = max(0, min(int(center), n - 1)) if n else 0
    start = max(0, center - left)
    end = min(n, center + right + 1)
    return Window(list(tokens[start:end]), [float(a) for a in activations[start:end]], start, end,
                  center - start)


def example_html(
    tokens: Sequence[str],
    activations: Sequence[float],
    max_position: int,
    max_value: float,
    *,
    left: int | None = 24,
    right: int = 8,
) -> str:
    """One top-k context, cropped around its peak (`left=None` shows it whole)."""
    if left is None:
        return tokens_html(tokens, activations, max_value, highlight=max_position)
    w = context_window(tokens, activations, max_position, left, right)
    return tokens_html(
        w.tokens,
        w.activations,
        max_value,
        highlight=w.center,
        prefix="… " if w.start > 0 else "",
        suffix=" …" if w.end < len(tokens) else "",
    )


def contexts_html(top_examples, band_examples, max_value: float, *, full: bool = False) -> str:
    """The feature page's contexts as one HTML block: the top-k, then samples per band.

    Args:
        top_examples: objects with `.tokens`, `.activations`, `.max_position`,
            `.max_activation` (a store `Example` or the dashboard's copy), best first.
        band_examples: objects with `.low`, `.high`, `.examples` (same kind of examples).
        max_value: the feature's max activation (full colour).
        full: show whole contexts instead of a window around each peak.
    """
    head = '<div style="font-weight:600;margin:10px 0 4px 0">{}</div>'
    parts = [TOKEN_CSS, head.format(f"Top {len(top_examples)} contexts")]
    if not top_examples:
        parts.append('<div class="scope-more">No contexts: the feature did not fire.</div>')
    for e in top_examples:
        line = example_html(e.tokens, e.activations, e.max_position, max_value,
                            left=None if full else 24)
        parts.append(
            '<div style="display:flex;gap:8px;align-items:baseline">'
            f'<code style="min-width:4.5em;text-align:right">{format_value(e.max_activation)}'
            f"</code>{line}</div>"
        )
    if band_examples:
        parts.append(head.format("Samples across activation bands"))
    for band in band_examples:
        parts.append(
            '<div style="margin-top:6px;color:#666;font-size:0.85em">activation '
            f"{esc(format_value(band.low))} – {esc(format_value(band.high))} "
            f"({len(band.examples)} samples)</div>"
        )
        for e in band.examples:
            parts.append(example_html(e.tokens, e.activations, e.max_position, max_value,
                                      left=None if full else 16, right=6))
    return "".join(parts)


def logit_table_html(rows: Sequence[tuple[str, float]], title: str, positive: bool = True) -> str:
    """A two-column table of (token, logit effect), tokens escaped, values coloured."""
    colour = "#1a7f37" if positive else "#c0392b"
    head = (
        f'<table class="scope-logits" style="border-collapse:collapse;width:100%;'
        f'font-size:0.85em"><thead><tr><th style="text-align:left">{esc(title)}</th>'
        f'<th style="text-align:right">effect</th></tr></thead><tbody>'
    )
    body = []
    for tok, value in rows:
        body.append(
            '<tr><td style="font-family:ui-monospace,monospace;white-space:pre">'
            f"{esc(display_token(tok))}</td>"
            f'<td style="text-align:right;color:{colour}">{float(value):+.3f}</td></tr>'
        )
    if not rows:
        body.append('<tr><td colspan="2" style="color:#888">none</td></tr>')
    return head + "".join(body) + "</tbody></table>"


# Figures carry their own light template; the pages pass theme=None to st.plotly_chart, which
# skips Streamlit's theme pass in the browser (~40 ms of a feature page's redraw).
_TEMPLATE = "plotly_white"


def log_spaced(bin_edges: Sequence[float]) -> bool:
    """True when positive edges grow by a constant ratio (the store's log-spaced histogram)."""
    e = np.asarray(bin_edges, dtype=float)
    if e.size < 3 or e[0] <= 0 or np.any(np.diff(e) <= 0):
        return False
    ratios = e[1:] / e[:-1]
    return bool(ratios.min() > 1.0001 and np.allclose(ratios, ratios[0], rtol=1e-3))


def histogram_figure(counts: Sequence[float], bin_edges: Sequence[float], title: str = ""):
    """A plotly step histogram of a feature's nonzero activations (log-count axis).

    Drawn as a filled step line over the bin edges, so log-spaced bins (a log x axis) and
    linear ones render alike. Hover shows each bin's range and count.
    """
    import plotly.graph_objects as go

    counts = np.asarray(counts, dtype=float)
    edges = np.asarray(bin_edges, dtype=float)
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} counts need {len(counts) + 1} bin edges, got {len(edges)}")
    x = edges.tolist()
    y = counts.tolist() + [counts[-1] if counts.size else 0.0]
    ranges = [f"{format_value(a)} – {format_value(b)}" for a, b in zip(edges[:-1], edges[1:],
                                                                      strict=True)]
    fig = go.Figure(
        go.Scatter(
            x=x, y=y, mode="lines", line_shape="hv", fill="tozeroy",
            line=dict(color="rgb(230,120,0)", width=1.5), fillcolor="rgba(255,138,0,0.55)",
            customdata=ranges + [ranges[-1] if ranges else ""],
            hovertemplate="activation %{customdata}<br>count %{y}<extra></extra>",
        )
    )
    log_x = log_spaced(edges)
    xaxis = dict(title="activation (nonzero)", type="log" if log_x else "linear")
    nz = np.flatnonzero(counts > 0)
    if nz.size:  # show the occupied bins, one empty bin either side
        lo, hi = edges[max(nz[0] - 1, 0)], edges[min(nz[-1] + 2, len(edges) - 1)]
        xaxis["range"] = [float(np.log10(lo)), float(np.log10(hi))] if log_x else [lo, hi]
    fig.update_layout(
        template=_TEMPLATE,
        title=title or None,
        height=260,
        margin=dict(l=10, r=10, t=30 if title else 10, b=10),
        xaxis=xaxis,
        yaxis=dict(title="count", type="log", dtick=1) if counts.max(initial=0) > 0
        else dict(title="count", type="linear"),
        showlegend=False,
    )
    return fig


def density_figure(densities: np.ndarray, bins: int = 60):
    """A plotly histogram of log10(density) over live features (dead ones are counted apart)."""
    import plotly.graph_objects as go

    d = np.asarray(densities, dtype=float)
    live = d[d > 0]
    fig = go.Figure()
    if live.size:
        logd = np.log10(live)
        counts, edges = np.histogram(logd, bins=bins)
        centers = (edges[:-1] + edges[1:]) / 2
        fig.add_bar(
            x=centers.tolist(),
            y=counts.tolist(),
            width=float(edges[1] - edges[0]) if len(edges) > 1 else None,
            marker_color="rgb(40,120,255)",
            hovertemplate="log10 density %{x:.2f}<br>features %{y}<extra></extra>",
        )
    fig.update_layout(
        template=_TEMPLATE,
        height=300,
        margin=dict(l=10, r=10, t=10, b=10),
        xaxis_title="log10(firing density), live features",
        yaxis_title="features",
        bargap=0,
    )
    return fig


def density_summary(densities: np.ndarray) -> dict[str, float]:
    """Counts of dead, live and dense (>10% firing) features and the median live density."""
    d = np.asarray(densities, dtype=float)
    live = d[d > 0]
    return {
        "features": int(d.size),
        "dead": int((d <= 0).sum()),
        "live": int(live.size),
        "dense": int((d > 0.1).sum()),
        "median_live_density": float(np.median(live)) if live.size else 0.0,
    }


def describe_corpus(corpus: object) -> str:
    """One line for the manifest's corpus description (a string, or a dict of its fields)."""
    if not isinstance(corpus, dict):
        return str(corpus) if corpus else "?"
    parts = [str(corpus.get("source") or corpus.get("name") or "?")]
    for key, value in corpus.items():
        if key in ("source", "name") or value in (None, "", [], {}):
            continue
        text = str(value)
        parts.append(f"{key} {text[:12] + '…' if len(text) > 16 else text}")
    return ", ".join(parts)


def neuronpedia_url(neuronpedia_id: str | None, feature: int) -> str | None:
    """Link to a feature on Neuronpedia, e.g. gemma-2-2b/20-gemmascope-res-16k -> .../1234."""
    if not neuronpedia_id:
        return None
    return f"{NEURONPEDIA_BASE}/{neuronpedia_id.strip('/')}/{int(feature)}"


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
