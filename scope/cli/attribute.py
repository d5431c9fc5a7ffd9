"""`scope attribute`: which SAE features make the model predict a token (and the graph behind it).

    scope attribute --model bundled --sae bundled --prompt "The capital of France is" --target " Paris"
    scope attribute --sae bundled/all --prompt "..." --target " Paris" --vs " London" --graph g.json

Prints the top features with their attribution (activation x gradient of the logit or logit
difference), label (from `--store`), the completeness sums, the splice check and the ablation
cross-check; `--graph` also writes the circuit-tracer / Neuronpedia graph JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLE = ('scope attribute --model bundled --sae bundled/all --prompt "The capital of France '
           'is" --target " Paris" --vs " London" --graph paris.json')


def add_parser(sub: Any, subparser: Callable[..., argparse.ArgumentParser],
               run: Callable | None = None) -> argparse.ArgumentParser:
    """Declare the subcommand on `sub` using cli.py's `_subparser` helper."""
    p = subparser(sub, "attribute",
                  "Attribute a next-token prediction to SAE features; optionally write the "
                  "attribution graph.", EXAMPLE, run or run_attribute)
    p.add_argument("--model", default="bundled", help="model spec (default 'bundled')")
    p.add_argument("--sae", action="append", metavar="SPEC",
                   help="SAE or transcoder (repeat for several); 'bundled' = the layer-9 demo "
                        "SAE, 'bundled/layer_N' another demo layer, 'bundled/all' every one "
                        "(default: bundled)")
    p.add_argument("--prompt", required=True, help="text; the prediction after its last token")
    p.add_argument("--target", required=True, help="the token whose logit is explained, e.g. ' Paris'")
    p.add_argument("--vs", dest="contrast", help="a contrast token: explain logit(target) - logit(vs)")
    p.add_argument("--mode", choices=["total", "direct"], default="total",
                   help="total: full backward; direct: attention, norms and other features frozen")
    p.add_argument("--top", type=int, default=15, help="features to print (default 15)")
    p.add_argument("--ablation-k", type=int, default=5,
                   help="zero the top K features one at a time to check the estimates (default 5)")
    p.add_argument("--store", type=Path, help="feature store to read labels from")
    p.add_argument("--graph", type=Path, metavar="OUT.json",
                   help="also build the attribution graph and write it as Neuronpedia JSON")
    p.add_argument("--node-threshold", type=float, default=0.8,
                   help="graph: keep nodes carrying this share of influence (default 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98,
                   help="graph: keep edges carrying this share of influence (default 0.98)")
    p.add_argument("--max-feature-nodes", type=int, default=1024,
                   help="graph: compute incoming edges for at most this many features, most "
                        "influential first (default 1024; 0 = all)")
    return p


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _label(store: Any, sae: str | None, feature: int | None) -> str:
    if store is None or sae is None or feature is None:
        return ""
    try:
        return str(getattr(store.feature(sae, feature), "label", "") or "")
    except Exception:  # noqa: BLE001 - an SAE the store lacks: no label
        return ""


def run_attribute(args: argparse.Namespace) -> int:
    from scope.attribution import attribute, attribution_graph
    from scope.attribution.attribute import expand_sae_specs
    from scope.model.load import load_model
    from scope.saes.loading import load_sae
    from scope.store import open_store

    model = load_model(args.model)
    specs = expand_sae_specs(args.sae or ["bundled"])
    saes = [load_sae(s, model=model) for s in specs]
    store = open_store(args.store) if args.store else None
    r = attribute(model, saes, args.prompt, args.target, contrast=args.contrast, mode=args.mode,
                  ablation_k=args.ablation_k)
    short = {s.cfg.name: (s.cfg.hook_name if len(saes) > 1 else "") for s in saes}
    _say(f"prompt:  {r.prompt!r} ({len(r.tokens)} tokens)")
    _say(f"metric:  {r.metric_name} = {r.metric:.4f}" + (
        f"  (p(target) = {r.target_prob:.3f})" if r.target_prob is not None else ""))
    _say(f"mode:    {r.mode}; splice check: max |logit change| / max |logit| = "
          f"{r.splice_max_rel_error:.1e}")
    _say()
    _say(f"{'rank':>4}  {'attribution':>11}  {'activation':>10}  {'feature':>7}  {'pos':>3}  "
          f"{'token':<12} {'site':<24} label")
    for i, n in enumerate(r.features()[:args.top], 1):
        tok = repr(n.token)[:12]
        _say(f"{i:>4}  {n.attribution:>+11.4f}  {n.activation:>10.3f}  {n.feature:>7}  "
              f"{n.position:>3}  {tok:<12} {short.get(n.sae, '')[:24]:<24} "
              f"{_label(store, n.sae, n.feature)}")
    c = r.completeness
    _say()
    _say(f"sum of attributions: features {c['feature']:+.3f}, errors {c['error']:+.3f}, "
          f"embeddings {c['embedding']:+.3f}, total {c['total']:+.3f}; metric {c['metric']:+.3f}")
    ab = r.ablation_check
    if ab is not None and ab.nodes:
        corr = "n/a" if math.isnan(ab.correlation) else f"{ab.correlation:.3f}"
        _say(f"ablation check (top {len(ab.nodes)} zeroed one at a time): correlation {corr}, "
              f"sign agreement {ab.sign_agreement:.0%}")
        for n, pred, meas in zip(ab.nodes, ab.predicted, ab.measured, strict=True):
            _say(f"  feature {n.feature:>6} @ {n.position:>2}: predicted {pred:+.4f}, "
                  f"measured {meas:+.4f}")
    if args.graph:
        g = attribution_graph(model, saes, args.prompt, node_threshold=args.node_threshold,
                              edge_threshold=args.edge_threshold,
                              max_feature_nodes=args.max_feature_nodes or None, store=store)
        data = g.to_json(str(args.graph))
        s = g.scores()
        _say()
        _say(f"graph: {g.n_features} active features, {g.stats['feature_rows']} with computed "
              f"inputs, {g.stats['backward_passes']} backward passes, {g.stats['seconds']:.1f} s; "
              f"kept {len(data['nodes'])} nodes, {len(data['links'])} links; replacement score "
              f"{s['replacement']:.3f}, completeness {s['completeness']:.3f}")
        _say(f"wrote {args.graph} (open it in Neuronpedia's graph viewer or the dashboard's "
              "Attribution page)")
    return 0
