"""Attribution graphs: direct effects between features, errors, tokens and logits on one prompt.

The graph lives in the *linearised* replacement model: SAEs/transcoders spliced in with their
errors as constants, attention patterns and normalisation scales frozen at their clean values
(`replacement.Freezer`), every feature activation held fixed. An edge `u -> t` is the change of
target `t` (a feature's pre-activation, or a logit) per unit of source `u`'s contribution, times
that contribution: `a_u * (d t / d write_u) . W_dec[u]` for a feature, `(d t / d write) . error`
for an error node, `(d t / d embed) . embed` for a token. With transcoders at every layer the
linearised model is exactly linear, so doubling one feature's activation moves every target by
exactly its edge weight; with residual SAEs the MLPs in between stay nonlinear and edges are
their first-order effects.

Rows (targets) are computed in batches: the prompt is run once as `batch_size` copies with
every write site a leaf tensor, and one `torch.autograd.grad` call per batch injects a different
target's gradient in each copy. Logit rows come first, then the sites from the last to the
first; within a site, features are taken by decreasing influence on the logits, and features
with no influence (or past `max_feature_nodes`) get no row. Memory is the
`[n_rows, n_nodes]` matrix of computed rows (logits + at most `max_feature_nodes` features) by
all nodes: bounded by the number of active features, not SAE width.

Nodes are numbered `[features..., errors (site-major, then position)..., tokens..., logits...]`;
`edges[r, source]` holds the weight of the edge into node `row_nodes[r]`; `adjacency` expands
it to the dense `[target, source]` matrix (for small graphs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scope.attribution.attribute import prompt_tokens, token_strings
from scope.attribution.replacement import (
    AttributionError,
    Freezer,
    Site,
    clean_run,
    embed_hook,
    final_hook,
    forward,
    hooks,
    make_sites,
    site_hooks,
)

log = logging.getLogger(__name__)


@dataclass
class SiteInfo:
    """What a graph keeps of each spliced SAE."""

    name: str
    layer: int
    read: str
    write: str
    kind: str
    d_sae: int


@dataclass
class AttributionGraph:
    """A computed graph (before pruning); `prune` and `to_json` select what to show."""

    prompt: str
    token_ids: list[int]
    tokens: list[str]
    sites: list[SiteInfo]
    features: torch.Tensor
    """[n_features, 3] int64 (site, position, feature index)."""
    activations: torch.Tensor
    """[n_features] feature activations."""
    logit_tokens: list[int]
    logit_strings: list[str]
    logit_probs: torch.Tensor
    """[n_logits] probabilities of the logit nodes."""
    edges: torch.Tensor
    """[n_rows, n_nodes] float32: incoming edge weights of the nodes `row_nodes`."""
    row_nodes: torch.Tensor
    """[n_rows] int64: the target node of each row of `edges` (-1: unused row)."""
    n_layers: int
    model_name: str = ""
    labels: dict[int, str] = field(default_factory=dict)
    """Feature node index -> label (from a feature store)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """backward_passes, seconds, batch_size, ..."""
    node_threshold: float = 0.8
    edge_threshold: float = 0.98

    # -- node layout ---------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return len(self.token_ids)

    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + len(self.sites) * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + len(self.logit_tokens)

    def error_index(self, site: int, pos: int) -> int:
        return self.error_start + site * self.n_pos + pos

    def node_kind(self, i: int) -> str:
        if i < self.error_start:
            return "feature"
        if i < self.token_start:
            return "error"
        return "embedding" if i < self.logit_start else "logit"

    @property
    def rows_done(self) -> torch.Tensor:
        """[n_nodes] bool: whether that node's incoming edges were computed."""
        done = torch.zeros(self.n_nodes, dtype=torch.bool)
        done[self.row_nodes[self.row_nodes >= 0]] = True
        return done

    @property
    def adjacency(self) -> torch.Tensor:
        """Dense [n_nodes, n_nodes] edge weights, rows = targets (n_nodes^2 floats: small graphs)."""
        A = torch.zeros(self.n_nodes, self.n_nodes)
        used = self.row_nodes >= 0
        A[self.row_nodes[used]] = self.edges[used]
        return A

    def _rows(self, edges: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        used = self.row_nodes >= 0
        E = self.edges if edges is None else edges
        return E[used], self.row_nodes[used]

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes, dtype=torch.float32)
        w[self.logit_start:] = self.logit_probs.float()
        return w

    # -- influence, pruning, scores -----------------------------------------------------------
    def node_influence(self, edges: torch.Tensor | None = None) -> torch.Tensor:
        """Influence of every node on the logits (probability-weighted, through all paths)."""
        E, rows = self._rows(edges)
        return row_influence(normalize_rows(E), rows, self.logit_weights())

    def prune(self, node_threshold: float | None = None, edge_threshold: float | None = None
              ) -> Pruned:
        """Keep the nodes carrying `node_threshold` of the influence, edges `edge_threshold`.

        Args:
            node_threshold: fraction of total node influence to keep (default: the graph's).
            edge_threshold: fraction of total edge influence to keep (default: the graph's).

        Returns:
            A `Pruned` with node and edge masks and each node's cumulative influence rank.
        """
        nt = self.node_threshold if node_threshold is None else node_threshold
        et = self.edge_threshold if edge_threshold is None else edge_threshold
        return prune(self, nt, et)

    def scores(self) -> dict[str, float]:
        """Replacement score (token vs error share of influence) and completeness score."""
        E, rows = self._rows()
        R = normalize_rows(E)
        w = self.logit_weights()
        infl = row_influence(R, rows, w)
        tok = float(infl[self.token_start:self.logit_start].sum())
        err = float(infl[self.error_start:self.token_start].sum())
        non_error = torch.ones(self.n_nodes)
        has_row = R.sum(1) > 0
        non_error[rows[has_row]] = 1.0 - R[has_row, self.error_start:self.token_start].sum(1)
        out = infl + w
        return {"replacement": tok / (tok + err) if tok + err > 0 else float("nan"),
                "completeness": float((non_error * out).sum() / out.sum())}

    def to_json(self, path: str | None = None, *, slug: str | None = None,
                node_threshold: float | None = None, edge_threshold: float | None = None
                ) -> dict[str, Any]:
        """Export the pruned graph as circuit-tracer / Neuronpedia graph JSON.

        Args:
            path: file to write (atomically); None = only return the dict.
            slug: the graph's name in the viewer (default: derived from the prompt).
            node_threshold, edge_threshold: pruning (default: the graph's own).

        Returns:
            The JSON object (metadata, qParams, nodes, links).
        """
        from scope.attribution.export import graph_json, write_json

        data = graph_json(self, slug=slug, node_threshold=node_threshold,
                          edge_threshold=edge_threshold)
        if path is not None:
            write_json(path, data)
        return data


@dataclass
class Pruned:
    node_mask: torch.Tensor
    edge_mask: torch.Tensor
    cumulative: torch.Tensor
    """Per node: cumulative share of influence of the nodes ranked at or above it."""
    influence: torch.Tensor
    rows: torch.Tensor
    """[n_rows] the target node of each row of `edge_mask` ([n_rows, n_nodes])."""


def normalize_rows(A: torch.Tensor) -> torch.Tensor:
    """|A| with each row scaled to sum to 1 (rows of zeros stay zero)."""
    B = A.abs()
    return B / B.sum(1, keepdim=True).clamp_min(1e-30)


def influence(A: torch.Tensor, w: torch.Tensor, max_iter: int = 10_000) -> torch.Tensor:
    """`w @ (A + A^2 + ...)` for the acyclic normalised adjacency A (rows = targets)."""
    cur = w @ A
    total = cur.clone()
    for _ in range(max_iter):
        cur = cur @ A
        if not bool(cur.any()):
            return total
        total += cur
    raise RuntimeError("influence did not converge: the adjacency has a cycle")


def row_influence(R: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, max_iter: int = 10_000
                  ) -> torch.Tensor:
    """`influence` for a matrix stored as rows R [n_rows, n] of the targets `rows`."""
    cur = w[rows] @ R
    total = cur.clone()
    for _ in range(max_iter):
        cur = cur[rows] @ R
        if not bool(cur.any()):
            return total
        total += cur
    raise RuntimeError("influence did not converge: the graph has a cycle")


def threshold_for(scores: torch.Tensor, fraction: float) -> float:
    """Smallest score among the top-ranked entries that together carry `fraction` of the sum."""
    s = torch.sort(scores.flatten(), descending=True).values
    total = s.sum()
    if total <= 0:
        return float("inf")
    cum = torch.cumsum(s, 0) / total
    i = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype)))
    return float(s[min(i, len(s) - 1)])


def prune(graph: AttributionGraph, node_threshold: float, edge_threshold: float) -> Pruned:
    """Influence pruning (see `AttributionGraph.prune`)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise AttributionError(f"{name} must lie in [0, 1], got {v}")
    n = graph.n_nodes
    w = graph.logit_weights()
    infl = graph.node_influence()
    node_mask = infl >= threshold_for(infl, node_threshold)
    node_mask[graph.token_start:] = True  # tokens and logits always stay
    E, rows = graph._rows()
    E = E.clone()
    E[~node_mask[rows]] = 0
    E[:, ~node_mask] = 0
    Rn = normalize_rows(E)
    edge_scores = Rn * (row_influence(Rn, rows, w) + w)[rows][:, None]
    edge_mask = edge_scores >= threshold_for(edge_scores, edge_threshold)
    edge_mask &= E != 0
    nf, ts = graph.n_features, graph.token_start
    feat_rows = rows < nf
    while True:  # drop features/errors left without outgoing (or features without incoming) edges
        old = node_mask.clone()
        edge_mask[~node_mask[rows]] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:ts] &= edge_mask[:, :ts].any(0)
        node_mask[rows[feat_rows]] &= edge_mask[feat_rows].any(1)
        if torch.equal(old, node_mask):
            break
    order = torch.argsort(infl, descending=True)
    cum = torch.zeros(n)
    total = infl.sum().clamp_min(1e-30)
    cum[order] = torch.cumsum(infl[order], 0) / total
    return Pruned(node_mask, edge_mask, cum, infl, rows)


# ----------------------------------------------------------------------------------------------
# building the graph
# ----------------------------------------------------------------------------------------------


def top_logits(logits: torch.Tensor, max_logits: int, cumulative: float
               ) -> tuple[list[int], torch.Tensor]:
    """Most probable next tokens until their probabilities sum to `cumulative` (<= max_logits)."""
    probs = torch.softmax(logits.float(), -1)
    p, idx = torch.sort(probs, descending=True)
    k = int(torch.searchsorted(torch.cumsum(p, 0), torch.tensor(cumulative))) + 1
    k = max(1, min(k, max_logits, len(p)))
    return idx[:k].tolist(), p[:k]


def logit_directions(model: Any, freezer: Freezer, final: torch.Tensor, ids: Sequence[int]
                     ) -> torch.Tensor:
    """[n, d_model]: gradient of each demeaned logit w.r.t. the last residual, norm frozen.

    The final norm's scale is the clean run's at the last position, so `v . x_final[-1]` moves
    exactly as the demeaned logit does in the linearised model.
    """
    dtype = next(model.unembed.parameters(), final).dtype
    x = final[-1:].reshape(1, 1, -1).to(dtype).clone().requires_grad_(True)

    def last_scale(act, hook):
        value = freezer.values.get(hook.name)
        if value is None:
            return act.detach()
        return value[:, -1:].to(act.dtype).expand_as(act)

    fwd = [(n, last_scale) for n in freezer.names if n.startswith("ln_final")]
    with hooks(model, fwd):
        logits = model.unembed(model.ln_final(x))[0, 0].float()  # [d_vocab]
    rows = []
    for i in ids:
        (g,) = torch.autograd.grad(logits[i] - logits.mean(), x, retain_graph=True)
        rows.append(g[0, 0].float())
    return torch.stack(rows)


class _GraphPass:
    """The batched forward pass whose graph every row's backward reuses."""

    def __init__(self, model: Any, sites: list[Site], clean: dict[str, torch.Tensor],
                 freezer: Freezer, tokens: torch.Tensor, batch: int) -> None:
        self.reads: dict[int, torch.Tensor] = {}
        self.final: torch.Tensor | None = None
        self.embed = clean["embed"].unsqueeze(0).expand(batch, -1, -1).clone().requires_grad_(True)
        self.writes = []
        fwd: list[tuple[str, Callable]] = []
        fwd += site_hooks(model, embed_hook(), lambda a: self.embed.to(a.dtype))
        for i, s in enumerate(sites):
            base = (s.sae.decode(s.acts).float() + s.error)  # write value minus the live skip
            leaf = base.unsqueeze(0).expand(batch, -1, -1).clone().requires_grad_(True)
            self.writes.append(leaf)
            fwd += site_hooks(model, s.read, self._reader(i))
            fwd += site_hooks(model, s.write, self._writer(i, s))

        def fin(a):
            self.final = a
            return None

        fwd += site_hooks(model, final_hook(model), fin)
        fwd += freezer.frozen()
        with hooks(model, fwd):
            forward(model, tokens.expand(batch, -1), stop_at_final=True)

    def _reader(self, i: int) -> Callable:
        def read(x):
            self.reads[i] = x
            return None
        return read

    def _writer(self, i: int, s: Site) -> Callable:
        def write(y):
            out = self.writes[i] + s.skip(self.reads[i].float())
            return out.to(y.dtype)
        return write


def attribution_graph(model: Any, saes: Any, prompt: str | torch.Tensor, *,
                      max_logits: int = 10, logit_probability: float = 0.95,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      batch_size: int = 32, max_feature_nodes: int | None = 1024,
                      store: Any = None) -> AttributionGraph:
    """Build the attribution graph of one prompt's next-token prediction.

    Args:
        model: a TransformerLens model from `load_model`.
        saes: JumpReLUSAEs: per-layer transcoders and/or residual SAEs at several layers.
        prompt: text (BOS prepended) or token ids.
        max_logits: at most this many logit nodes ...
        logit_probability: ... the most probable tokens up to this cumulative probability.
        node_threshold: default share of influence kept by `prune` / `to_json` (0.8).
        edge_threshold: default share of edge influence kept (0.98).
        batch_size: target rows per backward pass (the prompt runs as this many copies).
        max_feature_nodes: compute incoming edges for at most this many features (most
            influential first; the rest stay in the graph as sources); None = every feature
            with any influence. Each row costs a backward pass through the layers between the
            feature and the SAE before it, so this bounds the time.
        store: an open feature store; feature labels are read from it when it has them.

    Returns:
        The `AttributionGraph` (unpruned; `.prune()`, `.scores()`, `.to_json(path)`).
    """
    t0 = time.time()
    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    if not saes:
        raise AttributionError("attribution_graph needs at least one SAE or transcoder")
    if batch_size < 1:
        raise AttributionError(f"batch_size must be >= 1, got {batch_size}")
    sites = make_sites(model, saes)
    tokens = prompt_tokens(model, prompt)
    strings = token_strings(model, tokens)
    n_pos = tokens.shape[1]
    freezer = Freezer(model)
    clean = clean_run(model, sites, tokens, freezer)
    logit_ids, probs = top_logits(clean["logits"][-1], max_logits, logit_probability)
    v_logit = logit_directions(model, freezer, clean["final"], logit_ids)

    feats, acts = [], []
    for si, s in enumerate(sites):
        nz = torch.nonzero(s.acts)
        feats.append(torch.cat([torch.full((len(nz), 1), si), nz], 1))
        acts.append(s.acts[nz[:, 0], nz[:, 1]])
    features = torch.cat(feats).long() if feats else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(acts).float() if acts else torch.zeros(0)
    infos = [SiteInfo(s.name, s.layer, s.read, s.write,
                      "transcoder" if s.is_transcoder else "sae", s.sae.d_sae) for s in sites]
    n_f = len(features)
    n_nodes = n_f + len(sites) * n_pos + n_pos + len(logit_ids)
    graph = AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else "".join(strings),
        token_ids=tokens[0].tolist(), tokens=strings, sites=infos, features=features,
        activations=activations, logit_tokens=logit_ids,
        logit_strings=[model.tokenizer.decode([i]) for i in logit_ids], logit_probs=probs,
        edges=torch.zeros(len(logit_ids) + min(n_f, max_feature_nodes or n_f), n_nodes),
        row_nodes=torch.full((len(logit_ids) + min(n_f, max_feature_nodes or n_f),), -1),
        n_layers=model.cfg.n_layers, model_name=str(getattr(model.cfg, "model_name", "")),
        node_threshold=node_threshold, edge_threshold=edge_threshold)
    log.info("attribution graph: %d tokens, %d active features in %d SAEs, %d logits", n_pos,
             n_f, len(sites), len(logit_ids))

    B = max(1, min(batch_size, max(n_f, len(logit_ids))))
    gp = _GraphPass(model, sites, clean, freezer, tokens, B)
    sources = _Sources(graph, sites, clean, features, activations)
    passes = 0

    # logit rows
    rows = [("logit", k) for k in range(len(logit_ids))]
    passes += _run_rows(graph, gp, sites, sources, rows, v_logit, B)
    # feature rows, last site first, most influential first
    budget = n_f if max_feature_nodes is None else max_feature_nodes
    for si in reversed(range(len(sites))):
        idx = torch.nonzero(features[:, 0] == si).flatten()
        if len(idx) == 0 or budget <= 0:
            continue
        infl = graph.node_influence()[idx]
        keep = idx[torch.argsort(infl, descending=True)][: budget]
        keep = keep[graph.node_influence()[keep] > 0]
        budget -= len(keep)
        passes += _run_rows(graph, gp, sites, sources, [("feature", int(i)) for i in keep],
                            v_logit, B)
    graph.stats = {"backward_passes": passes, "batch_size": B, "seconds": time.time() - t0,
                   "feature_rows": int(graph.rows_done[:n_f].sum()), "active_features": n_f,
                   "splice_max_rel_error": float(
                       (clean["logits"][-1] - _plain_logits(model, tokens)).abs().max()
                       / clean["logits"][-1].abs().max().clamp_min(1e-30))}
    if store is not None:
        graph.labels = feature_labels(store, graph)
    log.info("attribution graph: %d backward passes, %.1f s", passes, graph.stats["seconds"])
    return graph


def _plain_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)[0, -1].float()


class _Sources:
    """Per-site source values: active decoder rows, activations, error vectors, embeddings."""

    def __init__(self, graph: AttributionGraph, sites: list[Site], clean: dict[str, torch.Tensor],
                 features: torch.Tensor, activations: torch.Tensor) -> None:
        self.per_site = []
        for si, s in enumerate(sites):
            idx = torch.nonzero(features[:, 0] == si).flatten()
            dec = s.sae.W_dec[features[idx, 2]].float()  # [n_active, d_out]
            self.per_site.append((idx, features[idx, 1], dec * activations[idx, None]))
        self.errors = [s.error for s in sites]
        self.embed = clean["embed"]


def _run_rows(graph: AttributionGraph, gp: _GraphPass, sites: list[Site], src: _Sources,
              rows: list[tuple[str, int]], v_logit: torch.Tensor, B: int) -> int:
    """Fill adjacency rows for `rows` in batches of B; returns the number of backward passes."""
    passes = 0
    for start in range(0, len(rows), B):
        chunk = rows[start:start + B]
        grads_out: dict[Any, torch.Tensor] = {}
        targets = []
        for b, (kind, i) in enumerate(chunk):
            if kind == "logit":
                key, pos, vec = "final", graph.n_pos - 1, v_logit[i]
                targets.append(graph.logit_start + i)
            else:
                si, pos, k = graph.features[i].tolist()
                key, vec = si, sites[si].sae.W_enc[:, k].float()
                targets.append(i)
            ref = gp.final if key == "final" else gp.reads[key]
            if key not in grads_out:
                grads_out[key] = torch.zeros_like(ref)
            grads_out[key][b, pos] = vec.to(ref.dtype)
        outs = [gp.final if k == "final" else gp.reads[k] for k in grads_out]
        inputs = [gp.embed] + gp.writes
        grads = torch.autograd.grad(outs, inputs, grad_outputs=list(grads_out.values()),
                                    retain_graph=True, allow_unused=True)
        passes += 1
        n = len(chunk)
        rows_t = torch.tensor(targets)
        free = int((graph.row_nodes >= 0).sum())
        slots = torch.arange(free, free + n)
        graph.row_nodes[slots] = rows_t
        A = graph.edges
        g_emb = grads[0]
        if g_emb is not None:
            A[slots, graph.token_start:graph.logit_start] = (
                g_emb[:n].float() * src.embed).sum(-1)
        for si, g in enumerate(grads[1:]):
            if g is None:
                continue
            g = g[:n].float()  # [n, pos, d_out]
            err_cols = graph.error_start + si * graph.n_pos
            A[slots, err_cols:err_cols + graph.n_pos] = (g * src.errors[si]).sum(-1)
            idx, pos, dec = src.per_site[si]
            if len(idx):
                # [n, n_active]: g[b, pos_u] . (a_u W_dec[u])
                A[slots[:, None], idx[None, :]] = torch.einsum("bnd,nd->bn", g[:, pos], dec)
    return passes


def feature_labels(store: Any, graph: AttributionGraph) -> dict[int, str]:
    """Labels of the graph's features from a feature store (empty where it has none)."""
    out: dict[int, str] = {}
    try:
        names = set(store.sae_names)
    except Exception:  # noqa: BLE001 - any store without the listing: no labels
        return out
    for i, (si, _, k) in enumerate(graph.features.tolist()):
        name = graph.sites[si].name
        if name not in names:
            continue
        try:
            label = getattr(store.feature(name, int(k)), "label", None)
        except Exception:  # noqa: BLE001 - a label is decoration; never fail the graph for it
            label = None
        if label:
            out[i] = str(label)
    return out
