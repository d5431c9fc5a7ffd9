"""Plotly figures: a feature's activation histogram (log-spaced bins) and the density histogram.

Every tick label and hover text is built from numbers formatted here, never from store text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from scope.dashboard.render.text import format_value

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
