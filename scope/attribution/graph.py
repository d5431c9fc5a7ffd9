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
from dataclasses import dataclass, field
from typing import Any

import torch

from scope.attribution.replacement import AttributionError

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
    neuronpedia_id: str | None = None
    """The SAE's Neuronpedia id (`gemma-2-2b/20-gemmascope-res-16k`), when it has one."""
    model_name: str = ""
    """The model the SAE's config names."""


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
    bos: str = "keep"
    """"keep" or "zero" (see `attribution_graph`)."""
    contrast_token: int | None = None
    """With a contrast, the single logit row is `logit(target) - logit(contrast)`."""
    contrast_string: str | None = None

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
        n = int(used.sum())
        if bool(used[:n].all()):  # rows are filled in order: a view, not a copy
            return E[:n], self.row_nodes[:n]
        return E[used], self.row_nodes[used]

    def influence_so_far(self, normalized: torch.Tensor, done: int) -> tuple[torch.Tensor, int]:
        """`node_influence` while rows are filled in order (the build's rounds), reusing the
        caller's buffer `normalized` [n_rows, n_nodes] whose first `done` rows are already
        normalised (a row is final once filled): only new rows are normalised.

        Returns:
            (influence of every node, rows normalised now: pass it as `done` next time).
        """
        n = int((self.row_nodes >= 0).sum())
        if n > done:
            normalize_rows(self.edges[done:n], out=normalized[done:n])
        return row_influence(normalized[:n], self.row_nodes[:n], self.logit_weights()), n

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


def normalize_rows(A: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """|A| with each row scaled to sum to 1 (rows of zeros stay zero), into `out` if given
    (a buffer of A's shape: no temporary, so no fresh pages beyond the buffer's own)."""
    B = A.abs() if out is None else torch.abs(A, out=out)
    return B.div_(B.sum(1, keepdim=True).clamp_min(1e-30))  # in place: one copy of A, not two


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
