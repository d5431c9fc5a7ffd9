"""Store overview: the manifest, the density distribution across features, dead features."""

from __future__ import annotations

import streamlit as st

from scope.dashboard import data, render

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
manifest = store.manifest

st.subheader("Store overview")
model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
corpus = manifest.get("corpus")
c = st.columns([2, 1, 1, 1])
c[0].metric("Model", render.md_text(model.get("name", "?"), 80),
            help=f"spec: {render.md_text(model.get('spec'))}")
c[1].metric("SAEs", len(store.sae_names))
c[2].metric("Tokens", render.format_count(render.as_int(manifest.get("tokens"))))
c[3].metric("Status", render.md_text(manifest.get("status", "?"), 40))
st.caption(
    f"Corpus: {render.md_text(render.describe_corpus(corpus))} · "
    f"context {render.md_text(manifest.get('ctx', '?'))} · "
    f"top-k {render.md_text(manifest.get('top_k', '?'))} · "
    f"format v{render.md_text(manifest.get('format_version', '?'))} · "
    f"scope {render.md_text(manifest.get('tool_version', '?'))}"
)
if data.histograms_may_be_clipped(path):
    st.caption("⚠ Format 1 store: histograms may clip activations above a fixed edge into the "
               "last bin; extract again for bins that fit the SAE's scale.")

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
# a static table: its cells wrap (LAYOUT_CSS), so it fits any width; st.table renders cells as
# Markdown, so every string from the manifest is escaped (a name must not become a live link)
st.table([{k: render.md_text(v) if isinstance(v, str) else v for k, v in r.items()}
          for r in rows])

dens = data.densities(path, sae)
summary = render.density_summary(dens)
st.markdown(f"**Feature density — {render.md_text(sae)}**")
d = st.columns(4)
d[0].metric("Features", f"{summary['features']:,}")
d[1].metric("Dead features", f"{summary['dead']:,}")
d[2].metric("Dense (>1%)", f"{summary['dense']:,}")
d[3].metric("Median live density", render.format_density(summary["median_live_density"]))
if summary["live"]:
    st.plotly_chart(render.density_figure(dens), config={"displayModeBar": False}, key="density",
                    theme=None)
else:
    st.info("No feature fired in this store.")

with st.expander("Manifest (manifest.json)"):
    st.json(manifest, expanded=1)
