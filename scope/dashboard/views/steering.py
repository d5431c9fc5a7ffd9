"""Steering: the default and a steered continuation side by side, and a strength sweep.

Features are typed as `index:strength` pairs, found by label, or added from the feature page the
user came from (a button: the box starts empty, nothing is steered that the user did not pick).
In "add" mode a strength is, by default, a multiple of the feature's max activation in this
store (the defaults, chosen by a measured sweep, live in scope/steer/defaults.py, shared with
`scope steer`); "clamp" fixes the feature's activation to the value. Every text is shown with its drift: its loss under the unsteered model, so a reader
sees where steering turns into word salad. Both continuations use the same seed, so strength 0
reproduces the default exactly.
"""

from __future__ import annotations

import streamlit as st

from scope.dashboard import data, render
from scope.errors import ScopeError
from scope.steer import defaults as sd

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
n = store.n_features(sae)

st.subheader("Steering")
model, sae_obj = data.require_live_pair(path, sae, "Steering")
names = data.labels(path, sae)
current = min(max(0, int(st.session_state.get("feature", 0))), n - 1)
st.session_state.setdefault("steer_spec", "")  # never pre-filled: the user picks every feature


def _add(pick: int | None) -> None:
    if pick is None:
        return
    spec = st.session_state.get("steer_spec", "").strip()
    if str(int(pick)) in {e.split(":")[0].strip() for e in spec.split(",") if e.strip()}:
        return  # already listed
    strength = sd.STRENGTH_X_MAX if st.session_state.get("steer_relative", True) else sd.STRENGTH_RAW
    entry = f"{int(pick)}:{strength:g}"
    st.session_state["steer_spec"] = f"{spec}, {entry}" if spec else entry


def _add_found() -> None:
    _add(st.session_state.get("steer_found"))


find = st.columns([3, 4, 1], vertical_alignment="bottom")
query = find[0].text_input("Find a feature by label", key="steer_find",
                           placeholder="e.g. 'def', 'bracket', 'python'")
if query.strip():
    found = data.table(path, sae).query(query, page_size=15, hide_dense=False,
                                        hide_rare=False).rows
    if found:
        options = {r.index: f"#{r.index}  {r.label[:70]}" for r in found}
        find[1].selectbox(f"{len(found)} best matches", list(options), format_func=options.get,
                          key="steer_found")
        find[2].button("Add", key="steer_add", on_click=_add_found, width="stretch")
    else:
        find[1].caption("No label matches.")
st.button(f"Add feature {current:d} (the feature page's): {render.md_text(names[current], 60)}",
          key="steer_add_current", on_click=_add, args=(current,))

c1, c2 = st.columns([3, 1])
spec_text = c1.text_input("Features and strengths (index:strength, comma separated)",
                          key="steer_spec")
mode = c2.radio("Mode", ["add", "clamp"], key="steer_mode", horizontal=True)
relative = st.checkbox(
    "Strengths are multiples of each feature's max activation in this store",
    value=True, key="steer_relative",
    help=f"e.g. {sd.STRENGTH_X_MAX:g} (the default, chosen by a measured sweep) adds "
    f"{sd.STRENGTH_X_MAX:g}x the feature's largest recorded activation along its decoder "
    "direction; untick for raw multiples of the unit direction (add mode only)",
)
prompt = st.text_area("Prompt", sd.PROMPT, key="steer_prompt", height=80)
c = st.columns(3)
max_tokens = c[0].number_input("Max new tokens", 1, 512, sd.MAX_NEW_TOKENS, key="steer_max_tokens")
temperature = c[1].number_input(
    "Temperature", 0.0, 2.0, sd.TEMPERATURE, step=0.1, key="steer_temperature",
    help="0 picks the most likely token (greedy)",
)
seed = c[2].number_input("Seed", 0, 2**31 - 1, sd.SEED, key="steer_seed")

try:
    spec = render.parse_steering(spec_text)
except ValueError as exc:
    st.error(render.md_text(exc))
    st.stop()
bad = [f for f in spec if f >= n]
if bad:
    st.error(f"Feature(s) {render.md_text(bad)} out of range: SAE {render.md_text(sae)} has {n:,} features "
             f"(0…{n - 1:,}).")
    st.stop()
if not spec:
    st.info("Add at least one feature:strength pair, or find one by label above.")
else:
    st.caption(render.md_text(" · ".join(f"#{f} {names[f][:60]}" for f in spec)))

peak = data.max_activations(path, sae)
scale = relative and mode == "add"


def _applied(strengths: dict[int, float]) -> dict[int, float]:
    return sd.scale_by_max(strengths, peak) if scale else dict(strengths)


gen = dict(max_new_tokens=int(max_tokens), temperature=float(temperature), seed=int(seed))
b = st.columns([1, 1, 4])
go = b[0].button("Generate", key="steer_go", type="primary", disabled=not spec or not prompt)
sweep = b[1].button("Strength sweep", key="steer_sweep", disabled=not spec or not prompt
                    or mode != "add",
                    help=render.md_text("every listed feature at " + ", ".join(
                        f"{m:g}" for m in sd.SWEEP) + ("× its max activation" if scale
                                                       else " (raw)") + ", side by side"))
if go or sweep:
    try:
        with st.spinner("Generating…"):
            default = data.default_continuation(path, prompt, **gen)
            runs = []
            levels = [None] if go else list(sd.SWEEP)
            for m in levels:
                strengths = spec if m is None else {f: m for f in spec}
                applied = _applied(strengths)
                text = data.steered_continuation(path, model, sae_obj, applied, mode, prompt,
                                                 **gen)
                runs.append({"strengths": strengths, "applied": applied, "text": text,
                             "level": m})
    except ScopeError as exc:  # e.g. a strength the steering code refuses
        st.error(f"Steering failed: {render.md_text(exc)}")
        st.stop()
    st.session_state["steer_result"] = {"default": default, "runs": runs, "prompt": prompt,
                                        "mode": mode, "scale": scale}

result = st.session_state.get("steer_result")
if result:
    runs = result["runs"]
    # the texts first; their drift (one batched forward pass) fills the headers after
    if len(runs) == 1:
        left, right = st.columns(2)
        heads = [left.empty(), right.empty()]
        heads[0].markdown("**Default**")
        heads[1].markdown("**Steered**")
        left.text(result["prompt"] + result["default"])
        right.text(result["prompt"] + runs[0]["text"])
        if runs[0]["text"] == result["default"]:
            st.warning("The steered text is identical to the default: raise the strength "
                       "(or run a strength sweep).")
    else:
        cols = st.columns(len(runs))
        heads = [col.empty() for col in cols]
        unit = "× max" if result["scale"] else ""
        for head, col, run in zip(heads, cols, runs, strict=True):
            head.markdown(f"**{run['level']:g}{render.md_text(unit)}**")
            col.text(result["prompt"] + run["text"])
    note = st.empty()
    rows = []
    for run in runs:
        for f, applied in run["applied"].items():
            rows.append({"feature": f, "label": names[f][:80], "mode": result["mode"],
                         "strength": run["strengths"][f], "applied (raw)": round(applied, 3)})
    fit = render.fit_table({"feature": 64, "mode": 56, "strength": 72, "applied (raw)": 100},
                           "label", (r["label"] for r in rows))
    st.dataframe(rows, hide_index=True, row_height=fit.row_height,
                 height=render.table_height(len(rows), fit.row_height, most=420),
                 column_config={k: st.column_config.Column(width=v)
                                for k, v in fit.widths.items()})
    if "losses" not in result:
        with st.spinner("Measuring drift…"):
            result["losses"] = data.drift(path, result["prompt"],
                                          (result["default"], *[r["text"] for r in runs]))
    base, losses = result["losses"][0], result["losses"][1:]
    for run, loss in zip(runs, losses, strict=True):
        run["loss"] = loss
    result["base_loss"] = base
    if len(runs) == 1:
        heads[0].markdown(f"**Default** · loss {base:.2f}")
        heads[1].markdown(f"**Steered** · drift {losses[0]:.2f} ({losses[0] - base:+.2f} vs "
                          "default)")
    else:
        for head, run in zip(heads, runs, strict=True):
            head.markdown(f"**{run['level']:g}{render.md_text(unit)}** · drift {run['loss']:.2f}")
    note.caption("Drift: the text's loss (nats/token) under the unsteered model; the default "
                 f"text scores {base:.2f}. A steep rise marks word salad (repetition can stay "
                 "low: read the texts too).")
