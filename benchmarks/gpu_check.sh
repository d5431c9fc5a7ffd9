#!/usr/bin/env bash
# GPU check: Gemma-2-2B-shaped extraction, generation and one attribution graph on one GPU.
#
#   bash benchmarks/gpu_check.sh              # one CUDA GPU, bf16, <= 10 minutes on an H200
#   bash benchmarks/gpu_check.sh --cpu-smoke  # the same steps, tiny shapes, on CPU (CI; ~1 min)
#
# Steps (random weights from Gemma 2 2B's real config; nothing is downloaded):
#   1. extraction at blocks.12.hook_resid_post with a 16k and a 262k JumpReLU SAE (bf16 model,
#      float32 accumulators): time vs the floor (bare forward to block 12 + encode on the same
#      batches), achieved FLOP/s vs a measured bf16 matmul roofline, peak device memory vs plan;
#   2. greedy generation, scope.generate vs transformers' generate (tokens/s ratio);
#   3. one attribution graph (64-token prompt, the 16k SAE), seconds and peak memory vs plan.
# Prints one table; exits non-zero if a step fails. Env: SCOPE_PYTHON (default: the repo's
# .venv or python3), GPU_CHECK_TOKENS (extraction tokens per SAE, default 262144).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${SCOPE_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
  elif [[ -x /work/main/.venv/bin/python ]]; then PY=/work/main/.venv/bin/python
  else PY=python3; fi
fi
MODE=gpu
if [[ "${1:-}" == "--cpu-smoke" ]]; then MODE=cpu; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 GPU_CHECK_MODE="$MODE"
exec "$PY" - <<'PYEOF'
import json, os, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(os.environ["PYTHONPATH"].split(":")[0])
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests")]
import torch

import bench_scale as B
from scope.model.activations import capture
from scope.pipeline.corpus import iter_batches
from scope.plan import plan

SMOKE = os.environ["GPU_CHECK_MODE"] == "cpu"
if not SMOKE and not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU here (use --cpu-smoke for the CPU smoke run)")
DEV = "cpu" if SMOKE else "cuda"
DTYPE = torch.float32 if SMOKE else torch.bfloat16
if SMOKE:  # the same code path at toy sizes
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    B.GEMMA_2_2B.update(vocab_size=512, hidden_size=128, intermediate_size=256,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    LAYERS, LAYER, WIDTHS, TOKENS, CTX, BATCH = 2, 1, [1024, 4096], 1024, 64, 4
    GEN, PROMPT = 8, 16
else:
    LAYERS, LAYER, WIDTHS = 26, 12, [16384, 262144]
    TOKENS, CTX, BATCH = int(os.environ.get("GPU_CHECK_TOKENS", 262144)), 128, 32
    GEN, PROMPT = 64, 64
rows = []


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


def peak_reset():
    if DEV == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak():
    if DEV == "cuda":
        return torch.cuda.max_memory_allocated()
    return B._vmhwm()


def roofline():
    """Measured dense matmul FLOP/s in the model's dtype (the ceiling extraction is held to)."""
    n = 512 if SMOKE else 8192
    a = torch.randn(n, n, device=DEV, dtype=DTYPE)
    (a @ a); sync()
    best = float("inf")
    for _ in range(3 if SMOKE else 10):
        t0 = time.perf_counter(); (a @ a); sync(); best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def shape_dict():
    c = B.GEMMA_2_2B
    return {"name": "gemma-2-2b (random)", "layers": LAYERS, "d_model": c["hidden_size"],
            "vocab": c["vocab_size"], "d_mlp": c["intermediate_size"],
            "n_heads": c["num_attention_heads"], "n_kv_heads": c["num_key_value_heads"],
            "d_head": c["head_dim"], "dtype": str(DTYPE).removeprefix("torch.")}


t_start = time.perf_counter()
model = B.gemma_2_2b(dtype=str(DTYPE).removeprefix("torch."), device=DEV, layers=LAYERS)
peak_flops = roofline()
hook = f"blocks.{LAYER}.hook_resid_post"
d = model.cfg.d_model
batches = [t.to(DEV) for _, t in iter_batches(None, model.tokenizer, CTX, BATCH, TOKENS)]
ntok = sum(t.numel() for t in batches)
layer_params = sum(p.numel() for p in model.blocks[0].parameters())
import scope.pipeline.extract as ext

for width in WIDTHS:
    sae = B.random_sae(model, width, LAYER, dtype=torch.float32)
    sp = {"d_in": d, "d_sae": width, "layer": LAYER, "l0": 64}
    with torch.no_grad():
        capture(model, batches[0], [hook]); sync()
        t0 = time.perf_counter()
        for toks in batches:
            sae.encode(capture(model, toks, [hook])[hook]); sync()
        floor = time.perf_counter() - t0
    peak_reset()
    with tempfile.TemporaryDirectory(prefix="scope-gpu-check-") as tmp:
        t0 = time.perf_counter()
        ext.extract(model, [sae], None, Path(tmp) / "s", tokens=TOKENS, ctx=CTX,
                    batch_size=BATCH, progress=False, checkpoint_every=1e9, logits=True)
        sync()
        total = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    mem = peak()
    p = plan(shape_dict(), [sp], tokens=TOKENS, ctx=CTX, batch_size=BATCH, device=DEV,
             dtype=str(DTYPE).removeprefix("torch."), checkpoint_every=1e9, strict=False)
    flops = ntok * ((LAYER + 1) * 2 * layer_params + 2 * d * width)
    loop = total - p.time["tables"] - p.time["vocab"]
    rows.append((f"extract {width // 1024}k", f"{floor / max(loop, 1e-9):.2f}x floor",
                 f"{flops / floor / peak_flops:.2f} of roofline (floor)",
                 f"{mem / 2**30:.2f} GiB peak; plan {p.peak_memory_bytes / mem:.2f}x",
                 f"{total:.1f} s (plan {p.seconds / total:.2f}x); disk plan "
                 f"{p.disk_bytes / disk:.2f}x"))
    del sae

# generation: scope.generate vs transformers' generate, greedy, the same prompt
import scope
from scope.steer.intervene import generate

prompt_ids = batches[0][0, :PROMPT]
text = model.tokenizer.decode(prompt_ids[1:])
generate(model, text, max_new_tokens=2, temperature=0)
sync(); t0 = time.perf_counter()
generate(model, text, max_new_tokens=GEN, temperature=0, stop_at_eos=False)
sync(); ours = time.perf_counter() - t0
hf = model.original_model
ids = model.tokenizer(text, return_tensors="pt").input_ids.to(DEV)
with torch.no_grad():
    hf.generate(ids, max_new_tokens=2, do_sample=False)
    sync(); t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=GEN, min_new_tokens=GEN, do_sample=False)
    sync(); theirs = time.perf_counter() - t0
rows.append(("generate", f"{theirs / ours:.2f}x transformers", f"{GEN / ours:.1f} tok/s",
             "", f"{ours:.2f} s"))

# one attribution graph
from scope.attribution.build import attribution_graph

sae = B.random_sae(model, WIDTHS[0], LAYER, dtype=torch.float32)
peak_reset()
t0 = time.perf_counter()
g = attribution_graph(model, [sae], batches[0][:1, :PROMPT], max_feature_nodes=256 if SMOKE
                      else 1024, batch_size=8 if SMOKE else 32)
sync(); secs = time.perf_counter() - t0
mem = peak()
nf = g.stats["active_features"]
p = plan(shape_dict(), [{"d_in": d, "d_sae": WIDTHS[0], "layer": LAYER, "l0": nf / PROMPT}],
         task="attribute", ctx=PROMPT, batch_size=8 if SMOKE else 32, device=DEV,
         max_feature_nodes=256 if SMOKE else 1024, strict=False)
rows.append(("attribution graph", f"{nf} active features", f"{g.stats['backward_passes']} passes",
             f"{mem / 2**30:.2f} GiB peak; plan {p.peak_memory_bytes / mem:.2f}x",
             f"{secs:.1f} s (plan {p.seconds / secs:.2f}x)"))

name = "CPU smoke (toy shapes)" if SMOKE else torch.cuda.get_device_name()
print(f"\ngpu_check on {name}: Gemma-2-2B-shaped random model, {LAYERS} layers, "
      f"{str(DTYPE).removeprefix('torch.')}, {ntok:,} tokens per SAE, measured roofline "
      f"{peak_flops / 1e9:,.0f} GFLOP/s; {time.perf_counter() - t_start:.0f} s in all")
print("| step | vs reference | throughput | memory | time |")
print("|---|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PYEOF
