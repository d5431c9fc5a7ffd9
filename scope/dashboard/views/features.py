"""Feature list: every feature of the SAE with its label; search, sort, filter, page, open.

The table comes from `data.table` (scope.explore.feature_list.FeatureTable, built once per SAE): text
search ranks labels and explanations with BM25 and the list sorts by that relevance until the
user picks another column; dense (> 1%) and rare (< 10 firings) features are hidden by default;
sorting by max or mean activation hides features with fewer than `TRUST_FIRINGS` firings (a
toggle shows them); only one page of rows is sent to the browser. Selecting a row opens its
feature page.
"""

from __future__ import annotations

import math

import streamlit as st

from scope.dashboard import data, render
from scope.explore.feature_list import COLUMNS, SAMPLE_COLUMNS, TRUST_FIRINGS
from scope.store.labels import DENSE, RARE

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
n = store.n_features(sae)
table = data.table(path, sae)

st.subheader("Feature list")
SORTS = {"relevance (with a search)": "relevance", "density": "density",
         "firing count": "firing_count", "max activation": "max_activation",
         "mean activation": "mean_activation", "explanation score": "score", "index": "index"}
assert set(SORTS.values()) - {"relevance"} == set(COLUMNS)

RELEVANCE, DEFAULT_SORT = list(SORTS)[0], "density"
st.session_state.setdefault("fl_sort", DEFAULT_SORT)


def _on_text() -> None:
    """A query sorts by relevance until the user picks another column; clearing it goes back."""
    has_text = bool(st.session_state.get("fl_text", "").strip())
    if not st.session_state.get("fl_sort_picked"):
        st.session_state["fl_sort"] = RELEVANCE if has_text else DEFAULT_SORT
    if not has_text:
        st.session_state["fl_sort_picked"] = False
        if st.session_state["fl_sort"] == RELEVANCE:
            st.session_state["fl_sort"] = DEFAULT_SORT


def _on_sort() -> None:
    st.session_state["fl_sort_picked"] = True


top = st.columns([4, 2, 1.2], vertical_alignment="bottom")
text = top[0].text_input("Search labels and explanations", key="fl_text", on_change=_on_text,
                         placeholder="e.g. 'def' or 'closing bracket' (ranked by BM25)")
sort_name = top[1].selectbox("Sort by", list(SORTS), key="fl_sort", on_change=_on_sort)
descending = top[2].toggle("Largest first", value=True, key="fl_desc")
f = st.columns(4, vertical_alignment="bottom")
hide_dense = f[0].checkbox(f"Hide dense (> {DENSE:.0%})", value=True, key="fl_dense",
                           help="features that fire on more than 1% of tokens top every ranking")
hide_rare = f[1].checkbox(f"Hide rare (< {RARE:d} firings)", value=True, key="fl_rare",
                          help="a handful of firings tells little about a feature")
hide_dead = f[2].checkbox("Hide dead", value=True, key="fl_dead")
lo, hi = f[3].select_slider(
    "Density range", options=[f"1e{k}" for k in range(-8, 1)], value=("1e-8", "1e0"),
    key="fl_range", format_func=lambda v: render.format_density(float(v)),
)

sort = SORTS[sort_name]
if sort == "relevance" and not text.strip():
    sort = "density"
trust = True
if sort in SAMPLE_COLUMNS:
    trust = st.toggle(
        f"Rank only features with ≥ {TRUST_FIRINGS:d} firings", value=True, key="fl_trust",
        help=f"a max or mean over a handful of firings is a handful of samples (a feature seen "
        f"10 times sits at its own max): sorting by it hides features with fewer than "
        f"{TRUST_FIRINGS:d} firings unless this is off")
size = 50
filters = dict(hide_dense=hide_dense, hide_rare=hide_rare, hide_dead=hide_dead,
               min_density=float(lo) if float(lo) > 1e-8 else None,
               max_density=float(hi) if float(hi) < 1.0 else None,
               min_firings=TRUST_FIRINGS if sort in SAMPLE_COLUMNS and trust else None)
total = table.query(text, sort=sort, descending=descending, page_size=1, **filters).total
pages = max(1, math.ceil(total / size))
if st.session_state.get("fl_page", 1) > pages:
    st.session_state["fl_page"] = 1
p = st.columns([1, 5], vertical_alignment="bottom")
page_no = p[0].number_input(f"Page (of {pages:,})", 1, pages, 1, key="fl_page")
res = table.query(text, sort=sort, descending=descending, page=page_no - 1, page_size=size,
                  **filters)
p[1].caption(f"{res.total:,} of {n:,} features match · rows {min(res.total, (page_no - 1) * size + 1):,}"
             f"–{min(res.total, page_no * size):,} · select a row to open its feature page")

rows = [{
    "feature": r.index,
    "label": r.label,
    "score": r.score,
    "density": render.format_density(r.density),
    "firings": r.firing_count,
    "max act": r.max_activation,
    "mean act": r.mean_activation,
    **({"relevance": round(r.relevance, 2)} if r.relevance is not None else {}),
} for r in res.rows]
if not rows:
    st.info("No feature matches. Clear the search or untick the filters.")
    st.stop()
if all(r["score"] is None for r in rows):  # no explanation scores on this page: no empty column
    for r in rows:
        del r["score"]
# Column widths fit a 900 px window beside the sidebar (wider ones stretch them); rows grow to
# wrap the page's longest label, so neither the table scrolls sideways nor a label is cut.
WIDTHS = {"feature": 64, "score": 54, "density": 70, "firings": 66, "max act": 54,
          "mean act": 54, "relevance": 54}
fit = render.fit_table({k: w for k, w in WIDTHS.items() if k in rows[0]}, "label",
                       (r["label"] for r in rows), selectable=True)
w = fit.widths
event = st.dataframe(
    rows, hide_index=True, on_select="rerun", selection_mode="single-row", key="fl_table",
    height=render.table_height(len(rows), fit.row_height), width="stretch",
    row_height=fit.row_height,
    column_config={
        "feature": st.column_config.NumberColumn("feature", format="%d", width=w["feature"]),
        "label": st.column_config.TextColumn("label / explanation", width=w["label"]),
        "score": st.column_config.NumberColumn("score", format="%.2f", width=w.get("score"),
                                               help="explanation's detection score"),
        "density": st.column_config.TextColumn("density", width=w["density"]),
        "firings": st.column_config.NumberColumn("firings", format="localized",
                                                 width=w["firings"]),
        "max act": st.column_config.NumberColumn("max", format="%.3g", width=w["max act"],
                                                 help="max activation"),
        "mean act": st.column_config.NumberColumn("mean", format="%.3g", width=w["mean act"],
                                                  help="mean activation"),
        "relevance": st.column_config.NumberColumn("rel.", format="%.2f",
                                                   width=w.get("relevance"),
                                                   help="BM25 relevance to the query"),
    },
)
chosen = event.selection.rows if event and event.selection else []
if chosen:
    st.session_state["feature"] = int(rows[chosen[0]]["feature"])
    st.switch_page("views/feature.py")
