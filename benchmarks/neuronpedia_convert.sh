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
# 5. every converted row compared with the store (benchmarks/neuronpedia_convert.py check).
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

"$PY" "$HERE/neuronpedia_convert.py" build "$WORK" ${NP_DEMO_TOKENS:-} > "$WORK/folders.txt"
mapfile -t FOLDERS < "$WORK/folders.txt"
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
done
"$PY" "$HERE/neuronpedia_convert.py" check "$WORK"
