"""`scope attribute`: which SAE features make the model predict a token (and the graph behind it).

    scope attribute --prompt "The capital of France is" --target " Paris"   # bundled transcoders
    scope attribute --model bundled --sae bundled --prompt "The capital of France is" --target " Paris"
    scope attribute --sae bundled/all --prompt "..." --target " Paris" --vs " London" --graph g.json

Prints the top features with their attribution (the estimated change of the logit or logit
difference if the feature's decoder contribution were removed: by default integrated gradients
for residual SAEs, activation x gradient for transcoders, each as measured against removal),
label (from `--store`), the completeness sums, the splice check and the ablation check (each
top feature removed and the change measured); `--graph` also writes the circuit-tracer /
Neuronpedia graph JSON of the same target (and `graph-metadata.json` beside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scope.cli.common import command, say
from scope.cli.flags import FILE, FRACTION, NON_NEGATIVE, POSITIVE
from scope.errors import UsageError


@dataclass(kw_only=True)
class Attribute:
    """Attribute a next-token prediction to SAE features; optionally write the attribution
    graph."""

    model: str = "bundled"
    """model spec"""
    sae: list[str] | None = field(default=None, metadata={"metavar": "SPEC"})
    """SAE or transcoder (repeat for several); 'bundled/transcoders' = the bundled model's
    transcoders at every layer (the default with --model bundled), 'bundled' = the layer-9 demo
    SAE, 'bundled/layer_N' another demo layer, 'bundled/all' every demo SAE"""
    prompt: str
    """text; the prediction after its last token"""
    target: str
    """the token whose logit is explained, e.g. ' Paris'"""
    vs: str | None = None
    """a contrast token: explain logit(target) - logit(vs)"""
    mode: Literal["total", "direct"] = "total"
    """total: the effect of removing a feature from the model; direct: attention, norms and
    other features frozen (the graph's edges into the target)"""
    method: Literal["auto", "ig", "grad"] = "auto"
    """ig: integrated gradients (--steps passes per SAE); grad: activation x gradient (one pass,
    first-order; the only method with --mode direct); auto: ig for residual SAEs, grad for
    transcoders (each the one that agrees with measured removal there; docs/attribution.md)"""
    steps: POSITIVE = 16
    """integration steps of --method ig"""
    top: POSITIVE = 15
    """features to print"""
    ablation_k: NON_NEGATIVE = 5
    """zero the top K features one at a time to check the estimates (0 = skip the check)"""
    store: Path | None = None
    """feature store to read labels from, extracted with these SAEs (a store of another SAE
    under the same name is refused: its labels would name other features)"""
    graph: FILE | None = field(default=None, metadata={"metavar": "OUT.json"})
    """also build the attribution graph and write it as Neuronpedia JSON"""
    node_threshold: FRACTION = 0.8
    """graph: keep nodes carrying this share of influence"""
    edge_threshold: FRACTION = 0.98
    """graph: keep edges carrying this share of influence"""
    max_feature_nodes: NON_NEGATIVE = 1024
    """graph: compute incoming edges for at most this many features, most influential first
    (0 = all)"""
    bos: Literal["keep", "zero"] = "keep"
    """graph: keep an error node at BOS, or zero BOS features and errors as circuit-tracer
    does (scores comparable with Neuronpedia's)"""
    max_memory: str | None = None
    """graph: memory budget such as 8GB for the whole peak (the model, the clean run, the edge
    rows and the batched pass; sets the batch; default: no budget)"""
    dry_run: bool = False
    """print the plan of the attribution graph (memory, time) and exit: nothing is loaded"""


def default_saes(model: str) -> list[str]:
    """The dictionaries `--sae` defaults to: the bundled transcoders for the bundled model (every
    MLP replaced, as circuit tracing is meant to be done); another model needs `--sae`."""
    if model == "bundled":
        return ["bundled/transcoders"]
    raise UsageError(f"--sae: no default dictionaries for --model {model!r}; pass --sae with a "
                     "Gemma Scope release/id or a folder (see `scope saes`)")


def _label(store: Any, sae: str | None, feature: int | None) -> str:
    if store is None or sae is None or feature is None:
        return ""
    try:
        return str(getattr(store.feature(sae, feature), "label", "") or "")
    except Exception:  # noqa: BLE001 - an SAE the store lacks: no label
        return ""


@command("attribute", Attribute,
         example='scope attribute --model bundled --sae bundled/all --prompt "The capital of '
         'France is" --target " Paris" --vs " London" --graph paris.json')
def run_attribute(args: Attribute) -> int:
    from scope.attribution import attribute, attribution_graph
    from scope.attribution.attribute import expand_sae_specs
    from scope.attribution.inputs import check_label_store
    from scope.attribution.rows import parse_memory
    from scope.model.load import load_model
    from scope.saes.loading import load_sae
    from scope.store import open_store

    parse_memory(args.max_memory)  # a bad size fails now, not after the attribution
    specs = expand_sae_specs(args.sae or default_saes(args.model))
    if args.dry_run:
        from scope.cli.plan import dry_run_attribute

        return dry_run_attribute(args, specs)
    model = load_model(args.model)
    saes = [load_sae(s, model=model) for s in specs]
    store = open_store(args.store) if args.store else None
    if store is not None:  # another SAE's labels would name other features: refuse them now
        check_label_store(store, saes, specs)
    method = "grad" if args.mode == "direct" else args.method  # "auto": scope's default_method
    r = attribute(model, saes, args.prompt, args.target, contrast=args.vs, mode=args.mode,
                  method=method, steps=args.steps, ablation_k=args.ablation_k)
    short = {s.cfg.name: (s.cfg.hook_name if len(saes) > 1 else "") for s in saes}
    say(f"prompt:  {r.prompt!r} ({len(r.tokens)} tokens)")
    say(f"metric:  {r.metric_name} = {r.metric:.4f}" + (
        f"  (p(target) = {r.target_prob:.3f})" if r.target_prob is not None else ""))
    say(f"mode:    {r.mode}, method {r.method}" + (f" ({r.steps} steps)" if r.method == "ig"
                                                    else "")
        + f"; splice check: max |logit change| / max |logit| = {r.splice_max_rel_error:.1e}")
    say()
    say(f"{'rank':>4}  {'attribution':>11}  {'activation':>10}  {'feature':>7}  {'pos':>3}  "
          f"{'token':<12} {'site':<24} label")
    for i, n in enumerate(r.features()[:args.top], 1):
        tok = repr(n.token)[:12]
        say(f"{i:>4}  {n.attribution:>+11.4f}  {n.activation:>10.3f}  {n.feature:>7}  "
              f"{n.position:>3}  {tok:<12} {short.get(n.sae, '')[:24]:<24} "
              f"{_label(store, n.sae, n.feature)}")
    c = r.completeness
    say()
    say(f"sum of attributions: features {c['feature']:+.3f}, errors {c['error']:+.3f}, "
          f"embeddings {c['embedding']:+.3f}, total {c['total']:+.3f}; metric {c['metric']:+.3f}")
    ab = r.ablation_check
    if ab is not None and ab.nodes:
        corr = "n/a" if math.isnan(ab.correlation) else f"{ab.correlation:.3f}"
        say(f"ablation check (top {len(ab.nodes)} removed one at a time: {ab.measures}): "
            f"correlation {corr}, sign agreement {ab.sign_agreement:.0%}"
            + ("" if ab.agrees else " — the estimates disagree with the measured removal; "
               "trust the measured values" + (", or try --method ig" if r.method == "grad"
                                              else "")))
        for n, pred, meas in zip(ab.nodes, ab.predicted, ab.measured, strict=True):
            say(f"  feature {n.feature:>6} @ {n.position:>2}: predicted {pred:+.4f}, "
                  f"measured {meas:+.4f}")
    if args.graph:
        g = attribution_graph(model, saes, args.prompt, target=args.target, contrast=args.vs,
                              node_threshold=args.node_threshold,
                              edge_threshold=args.edge_threshold,
                              max_feature_nodes=args.max_feature_nodes or None, bos=args.bos,
                              max_memory=args.max_memory, store=store)
        data = g.to_json(str(args.graph))
        s = g.scores()
        say()
        say(f"graph: {g.n_features} active features, {g.stats['feature_rows']} with computed "
              f"inputs, {g.stats['backward_passes']} backward passes, {g.stats['seconds']:.1f} s; "
              f"kept {len(data['nodes'])} nodes, {len(data['links'])} links; target "
              f"{next((n['clerp'] for n in data['nodes'] if n['feature_type'] == 'logit'), '?')}; "
              f"replacement score "
              f"{s['replacement']:.3f}, completeness {s['completeness']:.3f}")
        say(f"wrote {args.graph} (open it in Neuronpedia's graph viewer or the dashboard's "
              "Attribution page)")
    return 0
