"""A 1,024-token attribution graph on this machine, within a stated memory budget.

The bundled Gemma 3 270M, its layer-9 SAE, a 1,024-token prompt (the `json` module's docstring and
`json.JSONDecoder`'s, BOS included), `max_memory` (default 8 GB, the whole process's peak: model, clean run, edge rows
and the batched pass) and `max_feature_nodes` 64. Prints the batch the budget allowed, backward
passes, time, peak resident memory against the budget (target: <= 1.0) and the planner's
estimate (`scope plan --task attribute` with the same settings: for the 10 logit rows it must
assume, and for the rows the prompt's distribution needed) against each measured figure.
Runs in a fresh process so VmHWM is this graph's peak.

    python benchmarks/bench_long_graph.py [--tokens 1024] [--max-memory 8GB] [--max-feature-nodes 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _vmhwm() -> int:
    from scope.base.resident import peak_resident_bytes

    return peak_resident_bytes()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--max-memory", default="8GB")
    p.add_argument("--max-feature-nodes", type=int, default=64)
    args = p.parse_args()

    import torch

    import scope
    from scope.attribution.rows import parse_memory
    from scope.plan import plan

    budget = parse_memory(args.max_memory)
    planned = plan("gemma-3-270m", ["bundled"], task="attribute", ctx=args.tokens,
                   max_memory=budget, max_feature_nodes=args.max_feature_nodes)
    model = scope.load_model("bundled", device="cpu", dtype=torch.float32)
    sae = scope.load_sae("bundled", model=model)
    text = json.__doc__ + json.JSONDecoder.__doc__
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([[model.tokenizer.bos_token_id] + ids[:args.tokens - 1]])
    assert tokens.shape[1] == args.tokens, f"the docstrings have only {tokens.shape[1]} tokens"
    start, cpu = time.perf_counter(), time.process_time()
    g = scope.attribution_graph(model, [sae], tokens, max_memory=budget,
                                max_feature_nodes=args.max_feature_nodes)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak, st = _vmhwm(), g.stats
    gib = 2**30
    print(f"{args.tokens}-token graph, bundled layer-9 SAE, max_memory {budget / gib:.1f} GiB, "
          f"max_feature_nodes {args.max_feature_nodes}, {torch.get_num_threads()} threads")
    print(f"  {st['active_features']:,} active features; resident before the passes "
          f"{st['resident_bytes'] / gib:.2f} GiB, one copy of the pass "
          f"{st['forward_bytes_per_copy'] / gib:.2f} GiB -> batch {st['batch_size']} "
          f"(planned {planned.settings['batch_size']}); {st['backward_passes']} backward passes")
    print(f"  {wall:.0f} s wall, {cpu:.0f} CPU-s; peak RSS {peak / gib:.2f} GiB = "
          f"{peak / budget:.2f} of the budget (target <= 1.00)")
    # the planner cannot know how many of the 10 logit rows the prompt's distribution will
    # need (the top tokens up to 95%): it plans the bound, and here also the rows this run had
    used = plan("gemma-3-270m", ["bundled"], task="attribute", ctx=args.tokens,
                max_memory=budget, max_feature_nodes=args.max_feature_nodes,
                max_logits=len(g.logit_tokens))
    per_thread = cpu / torch.get_num_threads()
    for label, p in ((f"{planned.settings['max_logits']} logit rows (the bound)", planned),
                     (f"the {len(g.logit_tokens)} logit row(s) this prompt needed", used)):
        print(f"  planner / measured, {label}: peak memory {p.peak_memory_bytes / peak:.2f}, "
              f"seconds {p.seconds / wall:.2f} (wall), {p.seconds / per_thread:.2f} (CPU time "
              "over threads)")
    return 0 if peak <= budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
