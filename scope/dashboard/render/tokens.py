"""HTML of tokens and tables: shaded token lines, cropped contexts, logit tables, feature links.

Pure functions from plain values to HTML strings; token text passes through `esc` in element
bodies and `title=` attributes alike, so a corpus holding `<script>` renders as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from scope.dashboard.render.text import display_token, esc, format_value

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


# Page layout that fits 900 px and up: rows of columns wrap instead of squeezing their contents
# (a metric's value, a button's label) into an ellipsis, and labels wrap instead of being cut.
LAYOUT_CSS = (
    "<style>"
    '[data-testid="stMainBlockContainer"]{padding-left:2rem;padding-right:2rem;'
    "padding-top:3rem}"
    '[data-testid="stHorizontalBlock"]{flex-wrap:wrap;row-gap:0.5rem}'
    '[data-testid="stHorizontalBlock"]>[data-testid="stColumn"]{min-width:min(100%,10rem)}'
    '[data-testid="stMetricValue"],[data-testid="stMetricValue"] *{white-space:normal;'
    "overflow:visible;text-overflow:clip;overflow-wrap:anywhere}"
    '[data-testid="stMetricValue"]{font-size:clamp(1.15rem,2.1vw,2.1rem);line-height:1.2}'
    '[data-testid="stMetricLabel"] *,[data-testid="stWidgetLabel"] *{white-space:normal;'
    "overflow:visible;text-overflow:clip}"
    '[data-testid="stBaseButton-secondary"] *,[data-testid="stBaseButton-primary"] *,'
    '[data-testid="stBaseLinkButton-secondary"] *{white-space:normal;overflow:visible;'
    "text-overflow:clip}"
    '[data-testid="stTable"] table{table-layout:fixed;width:100%}'
    '[data-testid="stTable"] td,[data-testid="stTable"] th{overflow-wrap:anywhere;'
    'word-break:break-word}'
    # a toggle's or checkbox's text wraps inside its column instead of running over the next
    '[data-testid="stCheckbox"] p{white-space:normal}'
    # up to 1100 px the sidebar takes 16rem, not 300 px: a 900 px window keeps 644 px for the
    # page, which the tables' widths (render.table.FIT_PX) are fitted to
    '@media (max-width:1100px){[data-testid="stSidebar"]{width:16rem!important;'
    "min-width:16rem!important;max-width:16rem!important}}"
    "</style>"
)
