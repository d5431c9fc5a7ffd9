"""Steering: generate the default and a steered continuation side by side.

Features and strengths are typed as `index:strength` pairs; "add" adds strength x the decoder
direction, "clamp" fixes the feature's activation to the value. Both continuations use the same
seed, so strength 0 in add mode reproduces the default exactly.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, render
from scope.errors import ScopeError

path = st.session_state["store_path"]
sae = st.session_state["sae"]
store = data.get_store(path)
n = store.n_features(sae)

st.subheader("Steering")
model, sae_obj, unavailable = data.live_pair(path, sae)
if unavailable:
    st.warning(f"Steering needs the model and SAE, which are unavailable: {unavailable}")
    st.stop()
current = int(st.session_state.get("feature", 0))
c1, c2 = st.columns([3, 1])
spec_text = c1.text_input(
    "Features and strengths (index:strength, comma separated)", f"{current}:8",
    key="steer_spec",
)
mode = c2.radio("Mode", ["add", "clamp"], key="steer_mode", horizontal=True)
prompt = st.text_area("Prompt", "Once upon a time", key="steer_prompt", height=80)
c = st.columns(3)
max_tokens = c[0].number_input("Max new tokens", 1, 512, 30, key="steer_max_tokens")
temperature = c[1].number_input(
    "Temperature", 0.0, 2.0, 0.0, step=0.1, key="steer_temperature",
    help="0 picks the most likely token (greedy)",
)
seed = c[2].number_input("Seed", 0, 2**31 - 1, 0, key="steer_seed")
relative = st.checkbox(
    "Strengths are multiples of each feature's max activation in this store",
    key="steer_relative",
    help="e.g. 2 adds twice the feature's largest recorded activation along its direction",
)

try:
    spec = render.parse_steering(spec_text)
except ValueError as exc:
    st.error(str(exc))
    st.stop()
bad = [f for f in spec if f >= n]
if bad:
    st.error(f"Feature(s) {bad} out of range: SAE `{sae}` has {n} features (0…{n - 1}).")
    st.stop()
if not spec:
    st.info("Add at least one feature:strength pair.")

if st.button("Generate", key="steer_go", type="primary", disabled=not spec or not prompt):
    applied = dict(spec)
    if relative:
        peak = data.max_activations(path, sae)
        applied = {f: s * float(peak[f]) for f, s in spec.items()}
    try:
        with st.spinner("Generating…"), data.model_lock(path):
            default, steered = data.generate_pair(
                model, sae_obj, applied, mode, prompt, max_new_tokens=int(max_tokens),
                temperature=float(temperature), seed=int(seed),
            )
    except ScopeError as exc:  # e.g. a strength the steering code refuses
        st.error(f"Steering failed: {exc}")
        st.stop()
    st.session_state["steer_result"] = {
        "default": default, "steered": steered, "spec": spec, "applied": applied,
        "mode": mode, "prompt": prompt, "sae": sae, "relative": relative,
    }

result = st.session_state.get("steer_result")
if result:
    left, right = st.columns(2)
    with left:
        st.markdown("**Default**")
        st.text(result["prompt"] + result["default"])
    with right:
        st.markdown("**Steered**")
        st.text(result["prompt"] + result["steered"])
    st.caption("What was steered" + (" (identical output)" if result["default"] == result["steered"] else ""))
    rows = render.steering_rows(result["applied"], result["mode"])
    if result["relative"]:
        for row in rows:
            row["× max activation"] = result["spec"][row["feature"]]
    st.dataframe(rows, hide_index=True)
