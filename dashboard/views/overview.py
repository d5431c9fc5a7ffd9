"""Store overview: the manifest, the density distribution across features, dead features."""

from __future__ import annotations

import streamlit as st

from dashboard import data, render

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
manifest = store.manifest

st.subheader("Store overview")
model = manifest.get("model") or {}
corpus = manifest.get("corpus")
c = st.columns([2, 1, 1, 1])
c[0].metric("Model", str(model.get("name", "?")), help=f"spec: {model.get('spec')}")
c[1].metric("SAEs", len(store.sae_names))
c[2].metric("Tokens", f"{int(manifest.get('tokens') or 0):,}")
c[3].metric("Status", str(manifest.get("status", "?")))
st.caption(
    f"Corpus: {render.md_escape(render.describe_corpus(corpus))} · "
    f"context {manifest.get('ctx', '?')} · top-k {manifest.get('top_k', '?')} · "
    f"format v{manifest.get('format_version', '?')} · scope {manifest.get('tool_version', '?')}"
)

rows = []
for name in store.sae_names:
    info = store.sae_info(name)
    rows.append({
        "SAE": name,
        "hook": info.get("hook_name"),
        "d_in": info.get("d_in"),
        "d_sae": info.get("d_sae"),
        "Neuronpedia": info.get("neuronpedia_id") or "",
    })
st.dataframe(rows, hide_index=True)

dens = data.densities(path, sae)
summary = render.density_summary(dens)
st.markdown(f"**Feature density — {render.md_escape(sae)}**")
d = st.columns(4)
d[0].metric("Features", f"{summary['features']:,}")
d[1].metric("Dead features", f"{summary['dead']:,}")
d[2].metric("Dense (>10%)", f"{summary['dense']:,}")
d[3].metric("Median live density", render.format_density(summary["median_live_density"]))
if summary["live"]:
    st.plotly_chart(render.density_figure(dens), config={"displayModeBar": False}, key="density",
                    theme=None)
else:
    st.info("No feature fired in this store.")

with st.expander("Manifest (manifest.json)"):
    st.json(manifest, expanded=1)
