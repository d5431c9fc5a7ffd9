"""The dashboard's entry point and router: `streamlit run scope/dashboard/app.py -- STORE`.

It opens the store (cached), puts the SAE selector in the sidebar (shared by every page) and
hands over to `st.navigation`. Pages live in `views/` (given by absolute path, so the thin
top-level `dashboard/app.py` can run this file too), not `pages/`: Streamlit would also serve
a `pages/` folder as legacy pages that skip this router. The data they read comes from
`data.py`, their HTML and figures from the pure helpers in `render.py`. `scope dashboard STORE`
runs this file; tests drive it with `streamlit.testing.v1.AppTest` and $SCOPE_DASHBOARD_STORE.
"""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from scope.dashboard import data, render

st.set_page_config(page_title="scope dashboard", layout="wide")
st.html(render.LAYOUT_CSS)  # rows wrap at 900 px instead of cutting numbers and labels
log = logging.getLogger("scope.dashboard")
VIEWS = Path(__file__).resolve().parent / "views"

PAGES = {
    "feature": st.Page(VIEWS / "feature.py", title="Feature", default=True),
    "features": st.Page(VIEWS / "features.py", title="Feature list"),
    "inspector": st.Page(VIEWS / "inspector.py", title="Prompt inspector"),
    "steering": st.Page(VIEWS / "steering.py", title="Steering"),
    "attribution": st.Page(VIEWS / "attribution.py", title="Attribution"),
    "overview": st.Page(VIEWS / "overview.py", title="Store overview"),
}

path = data.store_path()
if not path:
    st.error(
        "No feature store given. Start the dashboard with `scope dashboard STORE` "
        f"(or set ${render.md_text(data.STORE_ENV)})."
    )
    st.stop()
try:
    store = data.get_store(path)
    names = list(store.sae_names)
except Exception as exc:  # a missing or corrupt store: a message, never a traceback or a path
    log.warning("dashboard: cannot open the store at %s: %s", path, exc)
    st.error(render.store_error_message(exc))
    st.stop()

if not names:
    st.error("This feature store holds no SAEs: extract again with `scope extract`.")
    st.stop()

# Deep links: ?sae=NAME&feature=N open that feature (read once per session).
if "feature" not in st.session_state:
    qp = st.query_params
    if qp.get("sae") in names:
        st.session_state["sae"] = qp.get("sae")
    try:
        st.session_state["feature"] = int(qp["feature"])  # out of range: the page says so
    except (KeyError, ValueError):  # no deep link: the most specific live feature
        sae0 = st.session_state.get("sae", names[0])
        try:
            st.session_state["feature"] = data.home_feature(path, sae0 if sae0 in names
                                                            else names[0])
        except Exception:  # a corrupt summary: the page shows the error
            st.session_state["feature"] = 0
st.session_state["store_path"] = path

# "sae" is plain session state (it outlives page switches); "sae_box" is its widget.
if st.session_state.get("sae") not in names:
    st.session_state["sae"] = names[0]
st.session_state["sae_box"] = st.session_state["sae"]


def _pick_sae() -> None:
    st.session_state["sae"] = st.session_state["sae_box"]


with st.sidebar:
    short = render.short_sae_names(names)
    st.selectbox(
        "SAE", names, key="sae_box", on_change=_pick_sae, format_func=short.get,
        help="The SAE (hook site) every page reads; its full name is shown below.",
    )
    st.caption(render.md_text(st.session_state["sae"]))  # the full name, wrapped
    st.caption(render.store_caption(Path(path).name, store.manifest))

page = st.navigation(list(PAGES.values()))
try:
    page.run()
except Exception as exc:  # e.g. a store file that went missing or is corrupt: say so, no trace
    log.warning("dashboard: page %s failed: %s", page.title, exc, exc_info=True)
    if data.store_changed(exc):  # rewritten while open: the next run reads the new version
        data.forget_store()
    st.error(render.store_error_message(exc))
