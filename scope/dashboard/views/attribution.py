"""Attribution: which features make the model predict a token, and what happens if we remove one.

Prompt + target token (+ an optional contrast token) -> `scope.attribute` over the dictionaries:
by default, on the bundled model, its transcoders at every layer (`bundled/transcoders`, the
circuit-tracing setup), else the store's selected SAE; plus any extra SAEs: a token x feature heatmap of the strongest attributions, a ranked table with
labels and links to each feature's page, and the ablation check drawn as predicted vs measured
removal (with a plain sentence when they disagree). The default method ("auto") is integrated
gradients for residual SAEs and activation x gradient for transcoders, the one that agrees with
removal for each (docs/attribution.md).
"Build graph" draws the attribution graph of the same target: by default only its most
influential nodes (a slider sets how many; pinned nodes always show), node kinds in colours
apart from the blue/red of edge signs, full labels on hover. "Apply" scales one feature's
decoder contribution (0 removes it, 2 doubles it) and shows how the target's probability moves.
Every string from the user, the store or a file goes through `render.md_text` (Markdown) or
`render.esc` (plot labels, which plotly renders as HTML).
"""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import streamlit as st

from scope.dashboard import data, render

path = st.session_state["store_path"]
sae_name = st.session_state["sae"]
store = data.get_store(path)

st.subheader("Attribution")
model, sae_obj = data.require_live_pair(path, sae_name, "Attribution")

# measured on the bundled layer-9 SAE (docs/attribution.md): ig's top 8 agree with their
# measured removal here (7/8 signs, r 0.89)
DEFAULT_PROMPT = "The capital of France is Paris. The capital of Germany is"
DEFAULT_TARGET = " Berlin"
NODE_COLOURS = {"feature": "#2ca02c", "error": "#7f7f7f", "token": "#9467bd", "logit": "#ff7f0e"}
EDGE_COLOURS = {1: "rgba(31,119,180,0.45)", -1: "rgba(214,39,40,0.45)"}  # blue +, red -
TRANSCODERS = "bundled/transcoders"


@st.cache_resource(show_spinner="Loading the SAE…")
def _extra_sae(spec: str, _model):
    from scope.saes.loading import load_sae

    return load_sae(spec, model=_model)


def _bundled_shape() -> bool:
    """Whether the model has the bundled Gemma 3 270M's shape (its dictionaries fit it)."""
    return (getattr(model.cfg, "d_model", None), getattr(model.cfg, "n_layers", None)) == (640, 18)


@st.cache_resource(show_spinner="Loading the bundled transcoders…")
def _transcoders(_model) -> list:
    from scope.saes.loading import load_saes

    return load_saes(TRANSCODERS, model=_model)


def _transcoders_fit() -> bool:
    """Whether the model is the bundled one and its shipped transcoders are installed."""
    from scope.errors import UnknownSAEError
    from scope.saes.bundled import set_members

    try:
        return _bundled_shape() and bool(set_members(TRANSCODERS))
    except UnknownSAEError:  # not installed: the store's SAE only
        return False


def _extra_choices() -> dict[str, str]:
    """Display name -> loader key for SAEs besides the selected one."""
    out = {n: f"store:{n}" for n in store.sae_names if n != sae_name}
    if _bundled_shape():
        from scope.attribution.inputs import expand_sae_specs

        for spec in expand_sae_specs(["bundled/all"]):
            if spec != "bundled":
                out[f"demo SAE {spec}"] = f"spec:{spec}"
    return out


def _load_extra(key: str):
    kind, _, name = key.partition(":")
    if kind == "store":
        return data.live_sae(path, name)
    return _extra_sae(name, model)


def _label(name: str | None, feature: int | None) -> str:
    if name is None or feature is None or name not in store.sae_names:
        return ""
    try:
        return str(getattr(store.feature(name, int(feature)), "label", "") or "")
    except Exception:  # noqa: BLE001 - a label is decoration
        return ""


def _feature_link(name: str | None, feature: int | None) -> str | None:
    """The feature's page in this store (render.feature_href), or None for an SAE it lacks."""
    if name is None or feature is None or name not in store.sae_names:
        return None
    return render.feature_href(name, int(feature))


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


DICT_OPTIONS = ([f"transcoders at every layer ({TRANSCODERS})"] if _transcoders_fit() else []) + [
    f"this store's SAE ({sae_name})"]

with st.form("attr_form"):
    dicts = st.radio("Dictionaries", DICT_OPTIONS, horizontal=True, key="attr_dicts",
                     help="Transcoders replace every MLP (the circuit-tracing setup: the graph "
                          "covers every layer; about 1 s with the auto method, grad); the "
                          "store's SAE gives labels and feature pages but covers one layer.")
    prompt = st.text_area("Prompt", st.session_state.get("attr_prompt", DEFAULT_PROMPT),
                          height=70, key="attr_prompt_in")
    c = st.columns([2, 2, 2, 2])
    target = c[0].text_input("Target token", st.session_state.get("attr_target", DEFAULT_TARGET),
                             help="One token; mind the leading space (' Paris').",
                             key="attr_target_in")
    contrast = c[1].text_input("Contrast token (optional)",
                               st.session_state.get("attr_contrast", ""),
                               help="Explain logit(target) - logit(contrast).",
                               key="attr_contrast_in")
    method = c[2].radio("Method", ["auto", "ig", "grad"], horizontal=True,
                        help="auto: ig for residual SAEs, grad for transcoders (each agrees "
                             "with measured removal there, docs/attribution.md); ig: integrated "
                             "gradients (16 forward+backward passes per SAE); grad: activation "
                             "x gradient (one pass), a first-order estimate.")
    mode = c[3].radio("Mode", ["total", "direct"], horizontal=True,
                      help="total: the effect of removing the feature from the model; direct: "
                           "attention, norms and other features frozen (the graph's edges "
                           "into the logit; gradient only).")
    choices = _extra_choices()
    extra = st.multiselect("Extra SAEs", list(choices), default=[],
                           help="Attribute over several SAEs at once (and draw a graph); each "
                                "adds about 16 forward+backward passes with 'ig'.")
    go_button = st.form_submit_button("Attribute", type="primary")

if go_button:
    from scope.attribution import attribute

    st.session_state.update(attr_prompt=prompt, attr_target=target, attr_contrast=contrast)
    base = _transcoders(model) if dicts.startswith("transcoders") else [sae_obj]
    saes = list(base) + [_load_extra(choices[e]) for e in extra]
    use = "grad" if mode == "direct" else method
    try:
        with st.spinner("Attributing…"), data.model_lock(path):
            res = attribute(model, saes, prompt, target, contrast=contrast or None, mode=mode,
                            method=use, ablation_k=8)
    except Exception as exc:  # noqa: BLE001 - shown to the user (bad token, long prompt, ...)
        st.error(f"Attribution failed: {render.md_text(exc)}")
        st.stop()
    st.session_state["attr_result"] = {"res": res, "saes": saes, "prompt": prompt,
                                       "target": target, "contrast": contrast or None}
    st.session_state.pop("attr_graph", None)
    st.session_state.pop("attr_intervention", None)

state = st.session_state.get("attr_result")
if not state:
    st.info("Enter a prompt and the token it should predict, then press Attribute.")
    st.stop()
res = state["res"]
feats = res.features()
m = st.columns(4)
m[0].metric("Metric", f"{res.metric:.3f}", help=render.md_text(res.metric_name))
if res.target_prob is not None:
    m[1].metric("p(target)", f"{res.target_prob:.3f}")
m[2].metric("Splice check", f"{res.splice_max_rel_error:.1e}",
            help="max |logit change| / max |logit| from splicing the SAEs with their errors")
ab = res.ablation_check
if ab is not None and ab.nodes:
    m[3].metric("Ablation agreement", "n/a" if math.isnan(ab.correlation)
                else f"r = {ab.correlation:.2f}",
                help=f"correlation of the estimate with the measured effect of "
                     f"{render.md_text(ab.measures)} for each of the top {len(ab.nodes):d} features")
cm = res.completeness
st.caption(f"{render.md_text(res.metric_name)} · method {render.md_text(res.method)}"
           + (f" ({res.steps:d} steps)" if res.method == "ig" else "")
           + f" · sums of attributions: features {cm['feature']:+.3f}, errors {cm['error']:+.3f}, "
           f"embeddings {cm['embedding']:+.3f} (total {cm['total']:+.3f} vs metric "
           f"{cm['metric']:+.3f})")

# token x feature heatmap of the strongest attributions
top = feats[:20]
if top:
    rows = sorted({(n.sae_index, n.feature) for n in top}, key=lambda k: (k[0], k[1]))
    names = {n.sae_index: n.sae for n in top}
    layer_of = {n.sae_index: n.layer for n in top}
    z = [[0.0] * len(res.tokens) for _ in rows]
    for n in feats:
        key = (n.sae_index, n.feature)
        if key in rows:
            z[rows.index(key)][n.position] += n.attribution
    full = [f"L{layer_of[s]}/{f} {_label(names[s], f)}".strip() for s, f in rows]
    ylab = [render.esc(_short(t, 60)) for t in full]
    xlab = [render.esc(f"{i}:{t!r}") for i, t in enumerate(res.tokens)]
    hover = [[render.esc(f"{full[r]} · token {res.tokens[p]!r}") for p in range(len(res.tokens))]
             for r in range(len(rows))]
    lim = max(abs(v) for r in z for v in r) or 1.0
    fig = go.Figure(go.Heatmap(z=z, x=xlab, y=ylab, text=hover, colorscale="RdBu", zmid=0,
                               zmin=-lim, zmax=lim, colorbar={"title": "attribution"},
                               hovertemplate="%{text}<br>attribution %{z:.3f}<extra></extra>"))
    fig.update_layout(height=120 + 22 * len(rows), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title="Strongest feature attributions by token")
    st.plotly_chart(fig, width="stretch")

# the ablation check: predicted vs measured removal
if ab is not None and len(ab.nodes) >= 2:
    lo = min(ab.predicted + ab.measured)
    hi = max(ab.predicted + ab.measured)
    fig = go.Figure([
        go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="agreement",
                   line={"color": "#bbbbbb", "dash": "dash"}, hoverinfo="skip"),
        go.Scatter(x=ab.predicted, y=ab.measured, mode="markers", name="feature",
                   marker={"color": NODE_COLOURS["feature"], "size": 9},
                   text=[render.esc(f"L{n.layer} f{n.feature} @ {n.position} {n.token!r} "
                                    f"{_label(n.sae, n.feature)}") for n in ab.nodes],
                   hovertemplate="%{text}<br>predicted %{x:.3f}, measured %{y:.3f}"
                                 "<extra></extra>")])
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title=f"Top {len(ab.nodes)} features: predicted vs measured removal",
                      xaxis_title="predicted change (-attribution)",
                      yaxis_title="measured change")
    st.plotly_chart(fig, width="stretch")
    agree = round(ab.sign_agreement * len(ab.nodes))
    r_text = "n/a" if math.isnan(ab.correlation) else f"{ab.correlation:.2f}"
    if ab.agrees:
        st.caption(f"The estimates agree with the measured removal: r = {render.md_text(r_text)}, "
                   f"signs agree for {agree:d} of {len(ab.nodes):d}.")
    else:
        st.warning(f"The estimates disagree with the measured removal (r = {render.md_text(r_text)}, "
                   f"signs agree for {agree:d} of {len(ab.nodes):d}): trust the measured values, not the "
                   "ranking" + (" — try method 'ig'." if res.method == "grad" else "."))

table = []
for rank, n in enumerate(feats[:50], 1):
    table.append({"rank": rank, "attribution": round(n.attribution, 4),
                  "activation": round(n.activation, 3), "feature": n.feature,
                  "layer": n.layer, "pos": n.position, "token": n.token,
                  "label": _label(n.sae, n.feature), "page": _feature_link(n.sae, n.feature)})
if table and not any(r["label"] or r["page"] for r in table):  # e.g. transcoders: not in the store
    table = [{k: v for k, v in r.items() if k not in ("label", "page")} for r in table]
    st.caption("These dictionaries are not in this store, so their features have no labels or "
               "pages here (extract a store of them for both).")
st.dataframe(table, hide_index=True, column_config={
    "page": st.column_config.LinkColumn("page", display_text="open")})

# intervention: scale one feature and watch the target
st.markdown("**Scale one feature** (its decoder contribution, in the unmodified model)")
options = list(range(min(len(feats), 50)))
if options:
    ic = st.columns([4, 2, 1])
    pick = ic[0].selectbox("Feature", options, format_func=lambda i: (
        f"#{i + 1} L{feats[i].layer} f{feats[i].feature} @ {feats[i].position} "
        f"({feats[i].attribution:+.3f})"), key="attr_pick")
    factor = ic[1].select_slider("Scale it by", [0.0, 0.5, 1.0, 2.0, 4.0], value=0.0,
                                 key="attr_factor", help="0 removes, 2 doubles")
    if ic[2].button("Apply", key="attr_apply"):
        from scope.attribution import intervene

        n = feats[pick]
        with st.spinner("Running…"), data.model_lock(path):
            out = intervene(model, state["saes"], state["prompt"], n.sae_index, n.feature,
                            n.position, factor, state["target"], contrast=state["contrast"])
        st.session_state["attr_intervention"] = (n, out)
    done = st.session_state.get("attr_intervention")
    if done:
        n, out = done
        c = st.columns(3)
        c[0].metric("metric", f"{out.metric_after:.3f}",
                    f"{out.metric_after - out.metric_before:+.3f}")
        if out.prob_after is not None:
            c[1].metric("p(target)", f"{out.prob_after:.3f}",
                        f"{out.prob_after - out.prob_before:+.3f}")
        c[2].caption(f"feature {n.feature:d} at position {n.position:d} × {out.factor:g}; "
                     f"attribution predicted {-(1 - out.factor) * n.attribution:+.3f}")

# graph
st.markdown("**Attribution graph** (of the same target)")
gc = st.columns([1, 1, 1, 1])
node_t = gc[0].number_input("Node threshold", 0.1, 1.0, 0.8, 0.05, key="attr_node_t")
edge_t = gc[1].number_input("Edge threshold", 0.1, 1.0, 0.98, 0.01, key="attr_edge_t")
bos = gc[2].radio("BOS", ["keep", "zero"], horizontal=True, key="attr_bos",
                  help="zero: circuit-tracer's convention (no BOS error nodes), scores "
                       "comparable with Neuronpedia's")
if gc[3].button("Build graph", key="attr_graph_go"):
    from scope.attribution import attribution_graph

    try:
        with st.spinner("Building the graph…"), data.model_lock(path):
            st.session_state["attr_graph"] = attribution_graph(
                model, state["saes"], state["prompt"], target=state["target"],
                contrast=state["contrast"], node_threshold=float(node_t),
                edge_threshold=float(edge_t), bos=bos, store=store)
    except Exception as exc:  # noqa: BLE001 - shown to the user
        st.error(f"The graph failed: {render.md_text(exc)}")
graph = st.session_state.get("attr_graph")
if graph is not None:
    from scope.attribution.export import uncantor

    gj = graph.to_json(node_threshold=float(node_t), edge_threshold=float(edge_t))
    ranked = sorted(gj["nodes"], key=lambda n: n["influence"] if n["influence"] is not None
                    else 2.0)  # cumulative influence: most influential first
    movable = [n for n in ranked if n["feature_type"] not in ("embedding", "logit")]
    sc = st.columns([3, 3])
    shown_n = sc[0].slider("Nodes shown (most influential)", 1, max(len(movable), 1),
                           min(30, max(len(movable), 1)), key="attr_graph_n")
    label_of = {n["node_id"]: f"{n['node_id']} {n.get('clerp', '')}".strip() for n in movable}
    pinned = sc[1].multiselect("Pin nodes", list(label_of), format_func=lambda i: _short(
        label_of[i], 60), key="attr_graph_pins")
    keep = {n["node_id"] for n in movable[:shown_n]} | set(pinned) | {
        n["node_id"] for n in ranked if n["feature_type"] in ("embedding", "logit")}
    nodes = [n for n in gj["nodes"] if n["node_id"] in keep]
    links = [x for x in gj["links"] if x["source"] in keep and x["target"] in keep]
    layers = sorted({s.layer for s in graph.sites})
    row = {"E": 0, **{str(L): i + 1 for i, L in enumerate(layers)},
           str(graph.n_layers + 1): len(layers) + 1}
    pos_of = {}
    for n in nodes:
        same = [x for x in nodes if x["layer"] == n["layer"] and x["ctx_idx"] == n["ctx_idx"]]
        k = same.index(n)
        pos_of[n["node_id"]] = (n["ctx_idx"] + 0.8 * (k + 1) / (len(same) + 1) - 0.4,
                                row.get(n["layer"], 0))
    wmax = max((abs(x["weight"]) for x in links), default=1.0) or 1.0
    fig = go.Figure()
    for sign, colour in EDGE_COLOURS.items():
        xs, ys = [], []
        for x in links:
            if (x["weight"] > 0) == (sign > 0) and abs(x["weight"]) > 0.02 * wmax:
                (x0, y0), (x1, y1) = pos_of[x["source"]], pos_of[x["target"]]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": 1},
                                 hoverinfo="skip", name="positive edge" if sign > 0
                                 else "negative edge"))
    kinds = {"cross layer transcoder": ("feature", "circle"),
             "mlp reconstruction error": ("error", "square"),
             "embedding": ("token", "diamond"), "logit": ("logit", "star")}
    for ft, (kind, symbol) in kinds.items():
        ns = [n for n in nodes if n["feature_type"] == ft]
        if not ns:
            continue
        hover = []
        for n in ns:
            text = f"{n['node_id']} · {n.get('sae') or kind}"
            if ft == "cross layer transcoder":
                text += f" · feature {uncantor(n['feature'])[1]}"
            if n.get("clerp"):
                text += f" · {n['clerp']}"
            if n.get("activation") is not None:
                text += f" · activation {n['activation']:.3g}"
            hover.append(render.esc(text))
        fig.add_trace(go.Scatter(
            x=[pos_of[n["node_id"]][0] for n in ns], y=[pos_of[n["node_id"]][1] for n in ns],
            mode="markers", marker={"symbol": symbol, "size": 11, "color": NODE_COLOURS[kind],
                                    "line": {"color": "#333333", "width": 1}},
            name=kind, customdata=[n["node_id"] for n in ns], text=hover, hoverinfo="text"))
    s = graph.scores()
    fig.update_layout(
        height=540, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title=f"{len(nodes)} of {len(gj['nodes'])} nodes, {len(links)} of {len(gj['links'])} "
              f"links · replacement {s['replacement']:.2f}, completeness "
              f"{s['completeness']:.2f} · {graph.stats['backward_passes']} backward passes, "
              f"{graph.stats['seconds']:.1f} s",
        xaxis={"tickvals": list(range(graph.n_pos)),
               "ticktext": [render.esc(repr(t)) for t in graph.tokens], "title": "position"},
        yaxis={"tickvals": list(row.values()),
               "ticktext": ["emb"] + [f"L{L}" for L in layers] + ["logits"], "title": "layer"})
    event = st.plotly_chart(fig, width="stretch", on_select="rerun", key="attr_graph_plot",
                            selection_mode="points")
    picked = [p.get("customdata") for p in (event.selection.points if event else [])
              if p.get("customdata")]
    by_id = {n["node_id"]: n for n in gj["nodes"]}
    for nid in picked[:5]:
        n = by_id.get(nid)
        if n is None or n["feature_type"] != "cross layer transcoder":
            continue
        index = uncantor(n["feature"])[1]
        here = _feature_link(n.get("sae"), index) is not None
        st.markdown(f"feature {index:d} at position {int(n['ctx_idx']):d} "
                    f"({render.md_text(n.get('sae'))})"
                    + (f" · [open its page]({render.feature_href(n['sae'], index)})"
                       if here else ""))
    st.download_button("Download graph JSON (Neuronpedia format)",
                       data=json.dumps(gj), file_name=f"{gj['metadata']['slug']}.json",
                       mime="application/json")
