"""Attribution and attribution graphs on tiny random Gemma 2 / Gemma 3 models.

The reference for every edge is an independent forward pass of the linearised replacement
model written here: clean attention patterns and norm scales substituted, every feature held at
its clean activation except the one perturbed, errors added back as constants.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from builders import tiny_hooked_model
from sae_builders import jumprelu_weights

from scope.attribution import FeatureMetric, attribute, attribution_graph
from scope.saes.sae import JumpReLUSAE, SAEConfig

# the reference below edits hook_scale on a TransformerBridge, which then warns that it leaves HF's
# fast norm path (expected here)
pytestmark = pytest.mark.filterwarnings("ignore:.*hook_scale/hook_normalized")

PROMPT = "the cat sat on"
FREEZE = re.compile(r"(^|\.)(hook_pattern|hook_scale)$")


def _sae(model, read: str, write: str | None, seed: int, d_sae: int = 48, affine=False):
    d = model.cfg.d_model
    w = {k: torch.tensor(v) for k, v in jumprelu_weights(d, d_sae, seed=seed, affine=affine).items()}
    w["threshold"] = w["threshold"] * 0.3  # more active features
    cfg = SAEConfig(d_in=d, d_sae=d_sae, hook_name=read, hook_name_out=write,
                    kind="transcoder" if write else "sae", sae_id=f"{read}-{seed}")
    return JumpReLUSAE(cfg, **w)


def transcoders(model, affine=False):
    return [_sae(model, f"blocks.{L}.ln2.hook_normalized", f"blocks.{L}.hook_mlp_out", 10 + L,
                 affine=affine) for L in range(model.cfg.n_layers)]


def resid_saes(model):
    return [_sae(model, f"blocks.{L}.hook_resid_post", None, 20 + L)
            for L in range(model.cfg.n_layers)]


# ---------------------------------------------------------------------------------------------
# the reference: an independent linearised replacement model
# ---------------------------------------------------------------------------------------------


class Linearised:
    """Clean run recorded once; `run(delta)` re-runs with frozen patterns/scales and features."""

    def __init__(self, model, saes, tokens):
        self.model, self.saes, self.tokens = model, saes, tokens
        self.frozen, self.x, self.f, self.err = {}, {}, {}, {}
        names = [n for n in model.hook_dict if FREEZE.search(n)]

        def rec(act, hook):
            self.frozen[hook.name] = act.detach().clone()

        fwd = [(n, rec) for n in names]
        for i, sae in enumerate(saes):
            fwd += [(sae.cfg.hook_name, self._clean_read(i)),
                     (sae.cfg.hook_name_out or sae.cfg.hook_name, self._clean_write(i))]
        with torch.no_grad(), model.hooks(fwd_hooks=fwd):
            model(tokens)

    def _clean_read(self, i):
        def fn(act, hook):
            sae = self.saes[i]
            self.x[i] = act.detach().clone()
            f = sae.encode(act.to(sae.dtype))
            f[:, 0] = 0
            self.f[i] = f
        return fn

    def _clean_write(self, i):
        def fn(act, hook):
            sae = self.saes[i]
            skip = 0 if sae.affine_skip is None else self.x[i].to(sae.dtype) @ sae.affine_skip
            self.err[i] = act.detach().to(sae.dtype) - sae.decode(self.f[i]) - skip
        return fn

    def run(self, scale: dict[tuple[int, int, int], float] | None = None):
        """Pre-activations of every SAE and demeaned last-position logits, features scaled."""
        scale = scale or {}
        model, saes, reads = self.model, self.saes, {}
        fwd = [(n, lambda act, hook: self.frozen[hook.name]) for n in self.frozen]

        def read(i):
            def fn(act, hook):
                reads[i] = act.detach().clone()
            return fn

        def write(i):
            def fn(act, hook):
                sae = saes[i]
                f = self.f[i].clone()
                for (si, p, k), s in scale.items():
                    if si == i:
                        f[0, p, k] *= s
                skip = 0 if sae.affine_skip is None else reads[i].to(sae.dtype) @ sae.affine_skip
                return (sae.decode(f) + skip + self.err[i]).to(act.dtype)
            return fn

        for i, sae in enumerate(saes):
            fwd += [(sae.cfg.hook_name, read(i)), (sae.cfg.hook_name_out or sae.cfg.hook_name,
                                                   write(i))]
        final = {}
        last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        fwd.append((last, lambda act, hook: final.__setitem__("x", act.detach().clone())))
        with torch.no_grad(), model.hooks(fwd_hooks=fwd):
            model(self.tokens)
            logits = model.unembed(model.ln_final(final["x"]))[0, -1]  # before any soft-cap
        pre = {i: reads[i][0].to(s.dtype) @ s.W_enc + s.b_enc for i, s in enumerate(saes)}
        return pre, logits - logits.mean()


def _targets(graph, lin_out):
    """Values of every graph target (active-feature pre-activations, logit nodes) as a vector."""
    pre, logits = lin_out
    vals = torch.zeros(graph.n_nodes, dtype=torch.float64)
    for i, (si, p, k) in enumerate(graph.features.tolist()):
        vals[i] = pre[si][p, k]
    for j, t in enumerate(graph.logit_tokens):
        vals[graph.logit_start + j] = logits[t]
    return vals


def _site_order(graph, saes):
    """graph site index -> the index in `saes` (graph sites are in forward order)."""
    names = [s.cfg.name for s in saes]
    return [names.index(s.name) for s in graph.sites]


# ---------------------------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
@pytest.mark.parametrize("affine", [False, True])
def test_doubling_a_feature_moves_every_target_by_its_edge(kind, affine):
    """circuit-tracer's exactness test: transcoders at every layer make the model linear."""
    model = tiny_hooked_model(kind)
    saes = transcoders(model, affine=affine)
    graph = attribution_graph(model, saes, PROMPT, batch_size=16)
    tokens = torch.tensor([graph.token_ids])
    lin = Linearised(model, saes, tokens)
    order = _site_order(graph, saes)
    base = _targets(graph, lin.run())
    A = graph.adjacency.double()
    assert graph.rows_done[graph.logit_start:].all()
    done = graph.rows_done.clone()
    assert int(done[:graph.n_features].sum()) >= 20
    gen = torch.Generator().manual_seed(0)
    picks = torch.randperm(graph.n_features, generator=gen)[:8].tolist()
    # always include a source feature that has downstream edges
    picks.append(int(A[:, :graph.n_features].abs().sum(0).argmax()))
    worst = 0.0
    for u in picks:
        si, p, k = graph.features[u].tolist()
        moved = _targets(graph, lin.run({(order[si], p, k): 2.0})) - base
        expected = A[:, u]
        diff = (moved - expected)[done].abs().max().item()
        worst = max(worst, diff / max(A.abs().max().item(), 1e-12))
        assert torch.allclose(moved[done], expected[done], atol=2e-5 * A.abs().max().item(),
                              rtol=1e-4), (u, diff)
    assert worst < 2e-5


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_residual_sae_edges_equal_finite_differences(kind):
    """Residual SAEs at every layer: MLPs stay nonlinear, so compare with central differences."""
    model = tiny_hooked_model(kind).double()
    model.cfg.dtype = torch.float64  # TransformerLens casts norm outputs to cfg.dtype
    saes = [s.double() for s in resid_saes(model)]
    graph = attribution_graph(model, saes, PROMPT, batch_size=16)
    lin = Linearised(model, saes, torch.tensor([graph.token_ids]))
    order = _site_order(graph, saes)
    A = graph.adjacency.double()
    done = graph.rows_done.clone()
    eps = 1e-4
    gen = torch.Generator().manual_seed(1)
    picks = torch.randperm(graph.n_features, generator=gen)[:6].tolist()
    picks.append(int(A[:, :graph.n_features].abs().sum(0).argmax()))
    for u in picks:
        si, p, k = graph.features[u].tolist()
        up = _targets(graph, lin.run({(order[si], p, k): 1 + eps}))
        down = _targets(graph, lin.run({(order[si], p, k): 1 - eps}))
        fd = (up - down) / (2 * eps)  # d target / d log a_u = a_u * d target / d a_u
        scale = max(A.abs().max().item(), 1e-12)
        assert torch.allclose(fd[done], A[done, u], atol=1e-5 * scale, rtol=1e-4), u
    # residual SAE graphs only connect neighbouring SAE layers (the splice cuts the rest)
    layers = graph.features[:, 0]
    for t in torch.nonzero(done[:graph.n_features]).flatten()[:50].tolist():
        src = torch.nonzero(A[t, :graph.n_features]).flatten()
        assert bool((layers[src] == layers[t] - 1).all())


# ---------------------------------------------------------------------------------------------
# splice, attribute, JSON, pruning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_splice_leaves_logits_unchanged_and_ablation_agrees(kind):
    model = tiny_hooked_model(kind)
    saes = [resid_saes(model)[1], transcoders(model)[2]]
    r = attribute(model, saes, PROMPT, " ", ablation_k=4, method="grad")
    assert r.splice_max_rel_error <= 1e-5
    kinds = {n.kind for n in r.nodes}
    assert kinds == {"feature", "error", "embedding"}
    assert all(abs(a.attribution) >= abs(b.attribution) for a, b in zip(r.nodes, r.nodes[1:], strict=False))
    ab = r.ablation_check
    assert len(ab.measured) == 4
    assert ab.sign_agreement >= 0.75
    for pred, meas in zip(ab.predicted, ab.measured, strict=True):  # first order: same size
        assert abs(pred - meas) <= 0.5 * abs(pred) + 1e-3
    # a logit difference is the difference of the two logits' attributions
    r2 = attribute(model, saes, PROMPT, "a", ablation_k=0, method="grad")
    rd = attribute(model, saes, PROMPT, " ", contrast="a", ablation_k=0, method="grad")
    key = lambda n: (n.kind, n.sae_index, n.position, n.feature)  # noqa: E731
    a1 = {key(n): n.attribution for n in r.nodes}
    a2 = {key(n): n.attribution for n in r2.nodes}
    for n in rd.nodes[:20]:
        assert n.attribution == pytest.approx(a1[key(n)] - a2[key(n)], abs=1e-4)
    assert rd.metric == pytest.approx(r.metric - r2.metric, abs=1e-4)


def test_direct_mode_equals_graph_edges_into_a_feature():
    """attribute(mode="direct") on a feature metric = that feature's row of the graph."""
    model = tiny_hooked_model("gemma3")
    saes = transcoders(model)
    graph = attribution_graph(model, saes, PROMPT, batch_size=16)
    last_site = len(graph.sites) - 1
    rows = torch.nonzero((graph.features[:, 0] == last_site) & graph.rows_done[:graph.n_features])
    t = int(rows[0])
    si, p, k = graph.features[t].tolist()
    r = attribute(model, saes, PROMPT, FeatureMetric(sae=_site_order(graph, saes)[si],
                                                     feature=k, position=p),
                  mode="direct", ablation_k=0)
    by_key = {(n.layer, n.position, n.feature): n.attribution for n in r.nodes
              if n.kind == "feature"}
    for u in torch.nonzero(graph.adjacency[t, :graph.n_features]).flatten().tolist():
        su, pu, ku = graph.features[u].tolist()
        got = by_key[(graph.sites[su].layer, pu, ku)]
        assert got == pytest.approx(float(graph.adjacency[t, u]), rel=1e-4, abs=1e-6)


def test_graph_json_fields_and_pruning(tmp_path):
    model = tiny_hooked_model("gemma3")
    graph = attribution_graph(model, transcoders(model), PROMPT, batch_size=32)
    path = tmp_path / "g.json"
    graph.to_json(str(path))
    data = json.loads(path.read_text())
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    for key in ("slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold"):
        assert key in data["metadata"]
    ids = set()
    types = set()
    for node in data["nodes"]:
        for key in ("node_id", "layer", "ctx_idx", "feature", "feature_type", "activation",
                    "influence", "jsNodeId", "clerp", "token_prob", "is_target_logit"):
            assert key in node, key
        assert isinstance(node["layer"], str) and isinstance(node["ctx_idx"], int)
        ids.add(node["node_id"])
        types.add(node["feature_type"])
    assert len(ids) == len(data["nodes"])
    assert {"embedding", "logit", "cross layer transcoder"} <= types
    assert data["links"] and all(set(link) == {"source", "target", "weight"}
                                 and link["source"] in ids and link["target"] in ids
                                 for link in data["links"])
    probs = [n["token_prob"] for n in data["nodes"] if n["feature_type"] == "logit"]
    assert len(probs) <= 10 and (sum(probs) >= 0.95 or len(probs) == 10)

    # pruning: the influence threshold keeps the smallest top set carrying the fraction
    infl = graph.node_influence()
    total = float(infl.sum())
    for frac in (0.5, 0.8, 0.95):
        pr = graph.prune(frac, 0.98)
        kept = pr.node_mask[:graph.token_start]
        # the kept features/errors before connectivity clean-up are a prefix by influence
        above = infl[:graph.token_start] >= pr.influence[:graph.token_start][kept].min()
        assert float(infl[:graph.token_start][above].sum()) + float(
            infl[graph.token_start:].sum()) >= frac * total - 1e-6
    pr = graph.prune(0.8, 0.5)
    A = graph.adjacency.clone()  # dense reference
    A[~pr.node_mask] = 0
    A[:, ~pr.node_mask] = 0
    An = A.abs() / A.abs().sum(1, keepdim=True).clamp_min(1e-30)
    from scope.attribution.graph import influence

    w = graph.logit_weights()
    scores = (An * (influence(An, w) + w)[:, None])[pr.rows]  # the rows edge_mask covers
    assert pr.edge_mask.shape == scores.shape
    kept = float(scores[pr.edge_mask].sum()) / float(scores.sum())
    assert kept >= 0.5 - 1e-6
    s = graph.scores()
    assert 0 <= s["replacement"] <= 1 and 0 <= s["completeness"] <= 1
    # one pass per batch of 32 rows: the logit rows, then feature rows by influence
    feature_passes = graph.stats["backward_passes"] - math.ceil(len(graph.logit_tokens) / 32)
    assert math.ceil(graph.stats["feature_rows"] / 32) <= feature_passes
    assert graph.stats["feature_rows"] == int(graph.rows_done[:graph.n_features].sum())


def test_bad_target_is_named():
    model = tiny_hooked_model("gemma3")
    with pytest.raises(ValueError, match="single token"):
        attribute(model, resid_saes(model)[:1], PROMPT, "cat sat")
    with pytest.raises(ValueError, match="mode"):
        attribute(model, resid_saes(model)[:1], PROMPT, " ", mode="sideways")
