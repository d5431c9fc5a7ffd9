#!/usr/bin/env bash
# Acceptance by the real tool: Neuronpedia's own converter on `scope export neuronpedia`.
#
#   bash benchmarks/neuronpedia_convert.sh [WORK]     # ~1 min on CPU, offline once set up
#
# 1. a venv for the converter (orjson, typer, python-dotenv: all it imports besides its own
#    db_models; no torch) at $NP_VENV (default $WORK/venv);
# 2. Neuronpedia's utils/neuronpedia-utils from $NEURONPEDIA (a checkout or a bare git dir of
#    github.com/hijohnnylin/neuronpedia; default: a shallow clone), used unchanged, not vendored;
# 3. a tiny store (residual SAE + attn.hook_z SAE, dead features, explanations) exported by
#    scope (benchmarks/neuronpedia_convert.py build);
# 4. the converter on each exported SAE folder, with the options run_settings.json names, its
#    output in $WORK/converted/exports, the export's explanations/ copied beside it (where
#    Neuronpedia's importer reads them);
# 5. every converted row compared with the store (benchmarks/neuronpedia_convert.py check);
#    with $SAEDASHBOARD (a checkout or bare git dir of jbloomAus/SAEDashboard), its 0.8.0
#    in-process exporter runs on the same folders too and must write the same rows.
# Env: SCOPE_PYTHON (default: the repo's .venv or python3); NP_DEMO_TOKENS=N exports the
# store `scope demo` builds (bundled Gemma 3 270M + demo SAE, N tokens) instead of the tiny one.
# Exits non-zero on any failure.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WORK="$(mkdir -p "${1:-${TMPDIR:-/tmp}/scope-np-convert}" && cd "${1:-${TMPDIR:-/tmp}/scope-np-convert}" && pwd)"
PY="${SCOPE_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
NP_VENV="${NP_VENV:-$WORK/venv}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

if [[ ! -x "$NP_VENV/bin/python" ]]; then
  python3 -m venv "$NP_VENV"
  "$NP_VENV/bin/pip" install -q orjson typer python-dotenv
fi

UTILS="$WORK/neuronpedia/utils/neuronpedia-utils"
if [[ ! -d "$UTILS" ]]; then
  rm -rf "$WORK/neuronpedia" && mkdir -p "$WORK/neuronpedia"
  SRC="${NEURONPEDIA:-}"
  if [[ -n "$SRC" && -d "$SRC/utils/neuronpedia-utils" ]]; then
    cp -r "$SRC/utils" "$WORK/neuronpedia/"
  elif [[ -n "$SRC" ]]; then  # a bare git directory (e.g. a mirror)
    git --git-dir="$SRC" archive HEAD utils/neuronpedia-utils | tar -x -C "$WORK/neuronpedia"
  else
    git clone -q --depth 1 https://github.com/hijohnnylin/neuronpedia "$WORK/neuronpedia"
  fi
fi
CONVERTER="$UTILS/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py"
echo "converter: $CONVERTER (sha256 $(sha256sum "$CONVERTER" | cut -c1-12))"

"$PY" "$HERE/neuronpedia_convert.py" build "$WORK" ${NP_DEMO_TOKENS:-} > "$WORK/build.log"
mapfile -t FOLDERS < <(sed -n 's/^EXPORT //p' "$WORK/build.log")

# optional: SAEDashboard 0.8.0's in-process exporter (sae_dashboard/neuronpedia/
# neuronpedia_export.py, which needs only orjson) on the same folders, from $SAEDASHBOARD
SD_EXPORT=""
if [[ -n "${SAEDASHBOARD:-}" ]]; then
  mkdir -p "$WORK/saedashboard"
  if [[ -d "$SAEDASHBOARD/sae_dashboard" ]]; then
    cp "$SAEDASHBOARD/sae_dashboard/neuronpedia/neuronpedia_export.py" "$WORK/saedashboard/"
  else
    git --git-dir="$SAEDASHBOARD" show HEAD:sae_dashboard/neuronpedia/neuronpedia_export.py \
      > "$WORK/saedashboard/neuronpedia_export.py"
  fi
  SD_EXPORT="$WORK/saedashboard/neuronpedia_export.py"
  rm -rf "$WORK/converted-saedashboard"
fi
rm -rf "$WORK/converted" && mkdir -p "$WORK/converted"
for folder in "${FOLDERS[@]}"; do
  # the options the export fixes (model, source set, layer, hook point, prompts) + the user's
  mapfile -t OPTS < <("$PY" - "$folder/run_settings.json" <<'EOF'
import json, sys
args = json.load(open(sys.argv[1]))["scope_export"]["converter_args"]
for k, v in args.items():
    print(f"--{k}={v}")
EOF
)
  echo "== converting $(basename "$folder")"
  # the converter prompts for its one boolean option (--zero-out-bos-token); answer no
  (cd "$WORK/converted" && echo n | DEFAULT_CREATOR_ID="${DEFAULT_CREATOR_ID:-clkht01d40000jv08hvalcvly}" \
    PYTHONPATH="$UTILS" "$NP_VENV/bin/python" "$CONVERTER" \
      --saedashboard-output-dir="$folder" --creator-name=scope-check --release-id=scope-check \
      --release-title="scope check" --url=https://example.org \
      --neuronpedia-source-set-description="scope check" --hf-weights-repo-id=local/none \
      --hf-weights-path=none/cfg.json "${OPTS[@]}" > "$WORK/converted/$(basename "$folder").log" 2>&1) \
    || { tail -20 "$WORK/converted/$(basename "$folder").log"; echo "converter FAILED"; exit 1; }
  grep -E "reading activations|generated successfully|^\./exports" "$WORK/converted/$(basename "$folder").log" | sed 's/^/  /'
  src="$(tail -1 "$WORK/converted/$(basename "$folder").log")"
  if [[ -d "$folder/explanations" ]]; then cp -r "$folder/explanations" "$WORK/converted/$src/"; fi
  echo "  output: $(cd "$WORK/converted/$src" && find . -type f | sort | tr '\n' ' ')"
  if [[ -n "$SD_EXPORT" ]]; then
    "$NP_VENV/bin/python" - "$SD_EXPORT" "$folder" "$WORK/converted-saedashboard/exports" \
        "${OPTS[@]}" <<'EOF' | sed 's/^/  saedashboard: /'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("np_export_sd", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod  # its dataclasses look their module up
spec.loader.exec_module(mod)
opts = dict(a[2:].split("=", 1) for a in sys.argv[4:])
cfg = mod.NeuronpediaExportConfig(
    saedashboard_output_dir=sys.argv[2], exports_dir=sys.argv[3], creator_name="scope-check",
    creator_id=mod.FALLBACK_CREATOR_ID, release_id="scope-check", release_title="scope check",
    url="https://example.org", model_name=opts["model-name"],
    neuronpedia_source_set_id=opts["neuronpedia-source-set-id"],
    neuronpedia_source_set_description="scope check", hf_weights_repo_id="local/none",
    hf_weights_path="none/cfg.json", hook_point=opts["hook-point"],
    layer_num=int(opts["layer-num"]),
    prompts_huggingface_dataset_path=opts["prompts-huggingface-dataset-path"],
    n_prompts_total=int(opts["n-prompts-total"]), n_tokens_in_prompt=int(opts["n-tokens-in-prompt"]))
print("wrote", mod.export_neuronpedia_dashboards(cfg))
EOF
  fi
done
"$PY" "$HERE/neuronpedia_convert.py" check "$WORK"
