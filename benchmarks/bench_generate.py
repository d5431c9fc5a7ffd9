"""scope.generate against transformers' own generate on the same weights; load time and memory.

Model: the bundled Gemma 3 270M. Both sides read the same weights (its cached Hugging Face
checkpoint, `scope.model.load.bundled_checkpoint()`), the same prompt, greedy, `--tokens` new tokens:
- transformers `generate` with its default attention (SDPA) = the floor; "steered" there is a
  forward hook on `model.layers[9]` adding the vector that scope's steering adds;
- `scope.generate`, plain and inside `scope.steering` (mode "add", one feature of a random SAE at
  `blocks.9.hook_resid_post`).
The four runs alternate `--repeats` times so machine noise hits all alike; medians, ratios, and
whether the greedy texts are identical are printed. Fresh processes then measure the cached load
of "bundled", the peak RSS after load + one forward, and `capture` throughput (to layer 6).
`--baseline DIR` repeats those fresh-process measurements (and scope.generate) with another
checkout of scope first on the path, e.g. one from before the TransformerBridge, for old/new
ratios.

Targets: generate <= 1.1x transformers, plain and steered, same text; cached load <= 5 s; peak
RSS <= 0.6x the HookedTransformer-era figure; capture throughput >= it.

    python benchmarks/bench_generate.py [--tokens 32] [--repeats 3] [--device cpu]
        [--dtype float32] [--baseline /path/to/old/checkout] [--skip-fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

PROMPT = "The history of the city begins in the twelfth century, when"
SITE, LAYER, FEATURE, STRENGTH = "blocks.9.hook_resid_post", 9, 7, 4.0
CAPTURE_SITE, CAPTURE_BATCHES, CAPTURE_BATCH, CTX = "blocks.6.hook_resid_post", 4, 8, 128


def _random_sae(d: int, d_sae: int = 4096):
    import torch

    from scope.saes.sae import JumpReLUSAE, SAEConfig

    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_sae, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d, d_sae=d_sae, hook_name=SITE)
    return JumpReLUSAE(cfg, W_dec.T.clone(), W_dec, torch.zeros(d_sae), torch.zeros(d),
                       torch.full((d_sae,), 0.5))


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM where Linux has it: ru_maxrss survives exec, so a child
    started from a big parent would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, device: str) -> tuple[float, object]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def child(args) -> dict:
    """Fresh-process figures: cached load, peak RSS after load + forward, capture, generate."""
    import torch

    import scope
    from scope.pipeline.corpus import iter_batches

    dtype = getattr(torch, args.dtype)  # the cache exists: compare_generate ran first
    if args.child == "load":
        start = time.perf_counter()
        model = scope.load_model("bundled", device=args.device, dtype=dtype)
        load_s = time.perf_counter() - start
        with torch.no_grad():
            model(model.to_tokens(PROMPT))
        return {"load_s": load_s, "max_rss_mb": _peak_rss_mb()}
    model = scope.load_model("bundled", device=args.device, dtype=dtype)
    batches = [t for _, t in iter_batches(None, model.tokenizer, CTX, CAPTURE_BATCH,
                                          CAPTURE_BATCHES * CAPTURE_BATCH * CTX)]
    with torch.no_grad():
        scope.capture(model, batches[0], [CAPTURE_SITE])  # warm-up
        secs, _ = _timed(lambda: [scope.capture(model, b, [CAPTURE_SITE]) for b in batches],
                         args.device)
    result = {"capture_tok_s": sum(b.numel() for b in batches) / secs}
    sae = _random_sae(model.cfg.d_model).to(args.device)
    kw = dict(max_new_tokens=args.tokens, temperature=0, stop_at_eos=False)
    scope.generate(model, PROMPT, **kw)
    plain, steered = [], []
    for _ in range(args.repeats):
        t, text = _timed(lambda: scope.generate(model, PROMPT, **kw), args.device)
        plain.append(t)
        with scope.steering(model, sae, {FEATURE: STRENGTH}):
            t, steered_text = _timed(lambda: scope.generate(model, PROMPT, **kw), args.device)
        steered.append(t)
    result.update(plain_s=statistics.median(plain), steered_s=statistics.median(steered),
                  text=text, steered_text=steered_text)
    return result


def _run_child(mode: str, args, path: str | None) -> dict:
    env = dict(os.environ)
    if path:
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", mode, "--tokens", str(args.tokens), "--repeats",
           str(args.repeats), "--device", args.device, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        sys.exit(f"{mode} run ({path or 'this checkout'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_generate(args) -> dict:
    """transformers generate vs scope.generate, plain and steered, alternating, in-process."""
    import torch
    from transformers import AutoModelForCausalLM

    import scope
    from scope.model.load import bundled_checkpoint

    dtype = getattr(torch, args.dtype)
    model = scope.load_model("bundled", device=args.device, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(bundled_checkpoint()), dtype=dtype)
    hf.to(args.device).eval()
    sae = _random_sae(model.cfg.d_model).to(args.device)
    delta = (STRENGTH * sae.W_dec[FEATURE]).to(args.device, dtype)
    toks = model.to_tokens(PROMPT)
    n = args.tokens

    def hf_generate():
        with torch.inference_mode():
            out = hf.generate(toks, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return model.tokenizer.decode(out[0, toks.shape[1]:].tolist())

    def add_delta(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    def hf_steered():
        handle = hf.model.layers[LAYER].register_forward_hook(add_delta)
        try:
            return hf_generate()
        finally:
            handle.remove()

    kw = dict(max_new_tokens=n, temperature=0, stop_at_eos=False)

    def scope_steered():
        with scope.steering(model, sae, {FEATURE: STRENGTH}):
            return scope.generate(model, PROMPT, **kw)

    runs = {"hf": hf_generate, "hf_steered": hf_steered,
            "scope": lambda: scope.generate(model, PROMPT, **kw), "scope_steered": scope_steered}
    texts = {name: fn() for name, fn in runs.items()}  # warm-up, and the texts
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn, args.device)[0])
    return {"median_s": {k: statistics.median(v) for k, v in times.items()}, "texts": texts,
            "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--baseline", help="another scope checkout (fresh-process figures only)")
    p.add_argument("--skip-fresh", action="store_true",
                   help="only the in-process generate comparison (no load / memory / capture)")
    p.add_argument("--child", choices=["load", "run"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    gen = compare_generate(args)
    m, t = gen["median_s"], gen["texts"]
    print(f"bundled Gemma 3 270M, {args.device} {args.dtype}, {gen['threads']} threads, greedy "
          f"{args.tokens} new tokens, median of {args.repeats}")
    for label, ours, ref in (("plain", "scope", "hf"), ("steered", "scope_steered", "hf_steered")):
        ratio = m[ours] / m[ref]
        same = t[ours] == t[ref]
        print(f"generate {label:8s} transformers {m[ref]:6.2f} s  scope {m[ours]:6.2f} s  "
              f"ratio {ratio:.2f}x (target <= 1.10) {'OK' if ratio <= 1.1 else 'ABOVE TARGET'}; "
              f"text {'identical' if same else 'DIFFERENT'}")
        if not same:
            print(f"  transformers: {t[ref]!r}\n  scope:        {t[ours]!r}")
    if args.skip_fresh:
        return
    checkouts = [("this checkout", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    figures = {}
    for name, path in checkouts:
        figures[name] = {**_run_child("load", args, path), **_run_child("run", args, path)}
        f = figures[name]
        print(f"{name}: cached load {f['load_s']:.1f} s, peak RSS after load+forward "
              f"{f['max_rss_mb']:,.0f} MB, capture {f['capture_tok_s']:,.0f} tok/s, "
              f"generate {f['plain_s']:.2f} s plain / {f['steered_s']:.2f} s steered")
    new = figures["this checkout"]
    print(f"cached load {new['load_s']:.1f} s (target <= 5 s) "
          f"{'OK' if new['load_s'] <= 5 else 'ABOVE TARGET'}")
    if args.baseline:
        old = figures["baseline"]
        print(f"new/old: peak RSS {new['max_rss_mb'] / old['max_rss_mb']:.2f}x (target <= 0.60), "
              f"capture throughput {new['capture_tok_s'] / old['capture_tok_s']:.2f}x "
              f"(target >= 1.00), generate {new['plain_s'] / old['plain_s']:.2f}x plain, "
              f"{new['steered_s'] / old['steered_s']:.2f}x steered, load "
              f"{new['load_s'] / old['load_s']:.2f}x; same greedy text: "
              f"{new['text'] == old['text']}")


if __name__ == "__main__":
    main()
