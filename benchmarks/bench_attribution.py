"""Attribution on the bundled Gemma 3 270M: integrated gradients vs activation x gradient, and
the attribution graph of a 16-token prompt with every demo SAE.

Prints, as ratios in one run: the time of `scope.attribute(method="ig")` over `method="grad"`
on the default prompts (the layer-9 SAE; with --sae, those SAEs), with each method's agreement
with the measured removal of the top-8 features; then the graph time (target: <= 60 s on 2 CPU
cores), its backward passes (one per batch of target rows), active features and rows computed,
the size of the edge rows, the growth of peak resident memory while building it, and the ratio
of the graph time to the floor of one batched forward pass plus that many backward passes of a
plain gradient (the cost the algorithm cannot go below), and to the 60 s target.

    python benchmarks/bench_attribution.py [--sae bundled/all] [--batch-size 64]
                                           [--max-feature-nodes N] [--steps 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

import scope
from scope.attribution.attribute import expand_sae_specs
from scope.model.activations import to_tokens

PROMPT = "When Mary and John went to the store, John gave a cold drink to"  # 16 tokens with BOS
TARGET_S = 60.0
DEFAULT_PROMPTS = [("The capital of France is Paris. The capital of Germany is", " Berlin"),
                   ("The capital of France is", " Paris")]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_methods(model, saes, steps: int) -> None:
    """Time and agreement of ig vs grad on the default prompts."""
    scope.attribute(model, saes, DEFAULT_PROMPTS[1][0], DEFAULT_PROMPTS[1][1], method="grad",
                    ablation_k=0)  # warm-up: first-call costs are not the method's
    for prompt, target in DEFAULT_PROMPTS:
        row = {}
        for method in ("grad", "ig"):
            t = time.perf_counter()
            r = scope.attribute(model, saes, prompt, target, method=method, steps=steps,
                                ablation_k=0)
            row[method] = time.perf_counter() - t
            t = time.perf_counter()
            r = scope.attribute(model, saes, prompt, target, method=method, steps=steps,
                                ablation_k=8)
            ab = r.ablation_check
            row[method + "_check"] = (round(ab.sign_agreement * len(ab.nodes)), len(ab.nodes),
                                      ab.correlation)
        print(f"{target!r}: grad {row['grad']:.1f} s, ig ({steps} steps) {row['ig']:.1f} s = "
              f"{row['ig'] / row['grad']:.1f}x; top-8 removal: grad signs "
              f"{row['grad_check'][0]}/{row['grad_check'][1]} r {row['grad_check'][2]:+.2f}, ig "
              f"signs {row['ig_check'][0]}/{row['ig_check'][1]} r {row['ig_check'][2]:+.2f}")


def floor_seconds(model, tokens: torch.Tensor, batch: int, passes: int) -> float:
    """One forward of `batch` copies with grad, then `passes` backward passes through it."""
    emb = model.embed(tokens).expand(batch, -1, -1).clone().requires_grad_(True)
    t = time.perf_counter()
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: emb)]):
        out = model(tokens.expand(batch, -1), stop_at_layer=model.cfg.n_layers)
    for _ in range(passes):
        torch.autograd.grad(out, emb, grad_outputs=torch.randn_like(out), retain_graph=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", action="append", help="SAE specs (default: bundled/all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-feature-nodes", type=int, default=1024,
                        help="feature rows to compute (0 = all with influence)")
    parser.add_argument("--steps", type=int, default=16, help="integration steps of ig")
    parser.add_argument("--skip-methods", action="store_true", help="only the graph")
    parser.add_argument("--json", help="also write the graph JSON here")
    args = parser.parse_args()

    model = scope.load_model("bundled")
    specs = expand_sae_specs(args.sae or ["bundled/all"])
    saes = [scope.load_sae(s, model=model) for s in specs]
    tokens = to_tokens(model, PROMPT)
    print(f"prompt: {tokens.shape[1]} tokens; SAEs: {', '.join(specs)}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")

    if not args.skip_methods:
        compare_methods(model, [scope.load_sae(s, model=model) for s in expand_sae_specs(
            args.sae or ["bundled"])], args.steps)

    from scope.plan import plan

    planned = plan(model, saes, task="attribute", ctx=tokens.shape[1],
                   batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes or None,
                   max_logits=1, strict=False)  # one target: one logit row
    before = rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    g = scope.attribution_graph(model, saes, PROMPT, target=" Mary",
                                batch_size=args.batch_size,
                                max_feature_nodes=args.max_feature_nodes or None)
    t_graph = time.perf_counter() - t
    cpu_graph = time.process_time() - cpu
    peak_mb = rss_mb()
    passes = g.stats["backward_passes"]
    floor = floor_seconds(model, tokens, g.stats["batch_size"], passes)
    s = g.scores()
    print(f"graph: {t_graph:.1f} s wall, {cpu_graph:.1f} CPU-s "
          f"({t_graph / TARGET_S:.2f}x the {TARGET_S:.0f} s target); "
          f"{passes} backward passes of batch {g.stats['batch_size']}; "
          f"{g.n_features} active features, {g.stats['feature_rows']} rows computed; "
          f"edge rows {tuple(g.edges.shape)} ({g.edges.numel() * 4 / 2**20:.0f} MB); "
          f"peak RSS {peak_mb:.0f} MB (+{peak_mb - before:.0f} MB while building)")
    print(f"reference (1 batched forward + {passes} backward passes through all layers, i.e. "
          f"without the splices' leaf cuts): {floor:.1f} s; graph / reference = "
          f"{t_graph / floor:.2f}x")
    threads = torch.get_num_threads()  # the planner's seconds are CPU time over threads
    print(f"planner (registry L0s, not this prompt's): {planned.seconds:.1f} s planned vs "
          f"{cpu_graph / threads:.1f} CPU-s over {threads} threads measured = "
          f"{planned.seconds / (cpu_graph / threads):.2f}x")
    pr = g.prune()
    print(f"pruned (0.8 / 0.98): {int(pr.node_mask.sum())} nodes, {int(pr.edge_mask.sum())} "
          f"edges; replacement score {s['replacement']:.3f}, completeness {s['completeness']:.3f}")
    if args.json:
        g.to_json(args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
