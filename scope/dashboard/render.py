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
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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


_MD_SPECIAL = set("\\`*_{}[]()#+-.!|<>~$:@&")


def md_escape(text: object) -> str:
    """Backslash-escape Markdown syntax so text from a store shows literally in st.markdown,
    captions and widget labels (Streamlit escapes raw HTML there itself)."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))


_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto|www|xmpp)(\\?[:.])")


def md_text(value: object, limit: int = 300) -> str:
    """Text from a store, a manifest, a model spec or a file name, ready for any Streamlit
    element that renders Markdown (markdown, caption, subheader, metric, error, help, labels).

    The one helper for that: it cuts the text to `limit` characters and backslash-escapes every
    Markdown character, so `![x](http://host/)` is shown, not fetched, `[a](b)` is not a link,
    and `http://host` or `www.host` is not auto-linked (its `:` and `.` are escaped)."""
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = md_escape(text.replace("\r", " ").replace("\n", " "))
    # GFM turns URL-like text into links after escapes are resolved: a word joiner (U+2060,
    # invisible) inside each pattern keeps it plain text
    text = _AUTOLINK.sub(lambda m: m.group(1) + "\u2060" + m.group(2), text)
    return text.replace("@", "\u2060@")


def as_int(value: object, default: int = 0) -> int:
    """An int from a manifest field that may be missing or hostile."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return default


def store_error_message(exc: BaseException) -> str:
    """What the dashboard says when the store cannot be read: no traceback, no server path."""
    return ("The feature store cannot be read: it is missing, corrupt or was written by a "
            f"newer scope ({md_text(type(exc).__name__)}; the server log has the details). "
            "Extract it again with `scope extract`, or start the dashboard on another store.")


def store_caption(name: str, manifest: dict) -> str:
    """The sidebar's one line about the store (every field escaped)."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    return (f"Store {md_text(name)} · model {md_text(model.get('name', '?'))} · "
            f"{as_int(manifest.get('tokens')):,} tokens · {md_text(manifest.get('status', '?'))}")


def display_token(token: str) -> str:
    """Make invisible characters visible: newlines as ↵, tabs as ⇥, an empty token as ∅, a long
    run of more than 16 spaces as `␣×N` (so a highlighted whitespace token stays inside its
    column)."""
    if token == "":
        return "∅"
    if len(token) > 16 and token.strip(" ") == "":
        return f"␣×{len(token)}"
    return token.replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def format_value(value: float) -> str:
    """A number as a researcher reads it: `2,030`, `20.3`, `0.203`, `0.00012` (no e-notation,
    no -0)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    a = abs(value)
    if a >= 999.5:
        return f"{value:,.0f}"
    if a >= 1e-4:
        return f"{value:.3g}"
    return f"{value:.2e}"


def format_count(count: float) -> str:
    """An integer count with thousands separators: `1,234`."""
    return f"{int(count):,}"


def format_density(density: float) -> str:
    """A firing fraction as a percentage in plain notation: `12.3%`, `0.0077%`, `0.00012%`."""
    if density <= 0:
        return "0% (dead)"
    pct = 100.0 * density
    if pct >= 1:
        return f"{pct:.3g}%"
    digits = max(0, 1 - math.floor(math.log10(pct)))  # two significant digits
    text = f"{pct:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text}%"


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
    n_top = len(top_examples)
    parts = [TOKEN_CSS, head.format("Top context" if n_top == 1 else f"Top {n_top} contexts")]
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


def log_ticks(lo: float, hi: float, max_ticks: int = 9) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k, thinned to 1 x 10^k when too many) in [lo, hi]."""
    if lo <= 0 or hi <= lo:
        return []
    ticks: list[float] = []
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
                 for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= max_ticks:
            break
    return ticks


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
        if log_x:  # 1-2-5 ticks labelled in full (plotly's own log ticks read "3 4 5 … 100 2 3")
            ticks = log_ticks(lo, hi)
            xaxis.update(tickmode="array", tickvals=ticks, ticktext=[format_value(t) for t in ticks])
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
    """Counts of dead, live and dense (>1% firing, as the feature list hides) features and the
    median live density."""
    d = np.asarray(densities, dtype=float)
    live = d[d > 0]
    return {
        "features": int(d.size),
        "dead": int((d <= 0).sum()),
        "live": int(live.size),
        "dense": int((d > 0.01).sum()),
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


# ---------------------------------------------------------------------------------------------
# labels, links, neighbours, inspector
# ---------------------------------------------------------------------------------------------


def feature_href(sae: str, index: int) -> str:
    """Relative link to a feature's page (a deep link the router reads)."""
    from urllib.parse import urlencode

    return "./?" + urlencode({"sae": sae, "feature": int(index)})


def feature_link(sae: str, index: int, label: str | None = None, *, max_label: int = 60) -> str:
    """`<a>#index</a>` to the feature's page, followed by its (escaped, shortened) label."""
    link = (f'<a href="{esc(feature_href(sae, index))}" target="_self" '
            f'style="font-family:ui-monospace,monospace">#{int(index)}</a>')
    if not label:
        return link
    short = label if len(label) <= max_label else label[: max_label - 1] + "…"
    return f'{link} <span style="color:#555" title="{esc(label)}">{esc(short)}</span>'


def explanation_caption(explanation: tuple[str, float | None, str] | None) -> str:
    """Markdown for the line under a feature's label: who explained it and how well."""
    if explanation is None:
        return ("Automatic label: the tokens it fires on most with their share of its firings "
                "(import or write explanations with `scope labels import` / `scope explain`).")
    _, score, explainer = explanation
    how = (f"detection score {score:.2f} (0.5 = chance, 1 = perfect)" if score is not None
           else "not scored")
    return f"Explanation by {md_text(explainer or 'unknown')} · {how}"


def neighbours_html(sae: str, rows: Sequence[tuple[int, float, str]]) -> str:
    """Nearest features by decoder cosine: link, cosine, label."""
    head = ('<table style="border-collapse:collapse;width:100%;font-size:0.85em">'
            '<thead><tr><th style="text-align:left">Nearest features (decoder cosine)</th>'
            '<th style="text-align:right">cos</th></tr></thead><tbody>')
    body = [f'<tr><td style="padding:1px 4px 1px 0">{feature_link(sae, i, lab, max_label=48)}</td>'
            f'<td style="text-align:right">{c:.2f}</td></tr>' for i, c, lab in rows]
    if not rows:
        body.append('<tr><td colspan="2" style="color:#888">not in this store (format 1): '
                    "extract again to get neighbours</td></tr>")
    return head + "".join(body) + "</tbody></table>"


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
