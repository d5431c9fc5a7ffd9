"""Building an attribution graph: the batched backward passes that fill its edge rows.

See `scope.attribution.graph` for what the graph holds and how it is pruned. Here: the clean
run, the logit nodes, one forward pass of `batch_size` copies of the prompt with every write
site a leaf tensor, and one `torch.autograd.grad` call per batch of target rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from scope.attribution.graph import AttributionGraph, SiteInfo
from scope.attribution.inputs import prompt_tokens, token_id, token_strings
from scope.attribution.replacement import (
    AttributionError,
    Freezer,
    Site,
    clean_run,
    hooks,
    make_sites,
)
from scope.attribution.rows import (
    GraphPass,
    Sources,
    memory_plan,
    parse_memory,
    run_rows,
    saved_bytes_per_copy,
)
from scope.base.resident import resident_bytes

log = logging.getLogger(__name__)

def top_logits(logits: torch.Tensor, max_logits: int, cumulative: float
               ) -> tuple[list[int], torch.Tensor]:
    """Most probable next tokens until their probabilities sum to `cumulative` (<= max_logits)."""
    probs = torch.softmax(logits.float(), -1)
    p, idx = torch.sort(probs, descending=True)
    k = int(torch.searchsorted(torch.cumsum(p, 0), torch.tensor(cumulative))) + 1
    k = max(1, min(k, max_logits, len(p)))
    return idx[:k].tolist(), p[:k]


def logit_directions(model: Any, freezer: Freezer, final: torch.Tensor, ids: Sequence[int],
                     contrast: int | None = None) -> torch.Tensor:
    """[n, d_model]: gradient of each logit row w.r.t. the last residual, norm frozen.

    A row is the logit minus the mean logit over the vocabulary (demeaned, as circuit-tracer's
    logit nodes), or with `contrast` the logit difference `logit(id) - logit(contrast)`. The
    final norm's scale is the clean run's at the last position, so `v . x_final[-1]` moves
    exactly as the row does in the linearised model.
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
        ref = logits.mean() if contrast is None else logits[contrast]
        (g,) = torch.autograd.grad(logits[i] - ref, x, retain_graph=True)
        rows.append(g[0, 0].float())
    return torch.stack(rows)


BOS_MODES = ("keep", "zero")


def _check_args(max_logits, logit_probability, batch_size, max_feature_nodes, bos) -> None:
    def posint(name, v, allow_none=False):
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise AttributionError(f"{name} must be a positive integer"
                                   + (" or None (no cap)" if allow_none else "") + f", got {v!r}")

    posint("max_logits", max_logits)
    posint("batch_size", batch_size)
    posint("max_feature_nodes", max_feature_nodes, allow_none=True)
    if not 0.0 < float(logit_probability) <= 1.0:
        raise AttributionError(f"logit_probability must lie in (0, 1], got {logit_probability}")
    if bos not in BOS_MODES:
        raise AttributionError(f"bos must be one of {BOS_MODES}, got {bos!r}")


def _check_transcoders(model: Any, sites: list[Site], require_all_layers: bool) -> None:
    """Transcoders only: one per layer, every layer (else the graph is not a replacement model)."""
    if not require_all_layers or not sites or not all(s.is_transcoder for s in sites):
        return
    have = {s.layer for s in sites}
    missing = [L for L in range(model.cfg.n_layers) if L not in have]
    if missing:
        raise AttributionError(
            f"transcoders are missing for layers {missing} (have {sorted(have)}): a circuit-"
            "tracing graph replaces every MLP; pass one transcoder per layer (e.g. --sae "
            "bundled/transcoders) or require_all_layers=False to keep those MLPs nonlinear")


def attribution_graph(model: Any, saes: Any, prompt: str | torch.Tensor, *,
                      target: str | int | None = None, contrast: str | int | None = None,
                      max_logits: int = 10, logit_probability: float = 0.95,
                      node_threshold: float = 0.8, edge_threshold: float = 0.98,
                      batch_size: int = 32, max_feature_nodes: int | None = 1024,
                      bos: str = "keep", require_all_layers: bool = True,
                      max_memory: int | str | None = None, store: Any = None
                      ) -> AttributionGraph:
    """Build the attribution graph of one prompt's next-token prediction.

    Args:
        model: a TransformerLens model from `load_model`.
        saes: JumpReLUSAEs: per-layer transcoders and/or residual SAEs at several layers.
        prompt: text (BOS prepended) or token ids.
        target: one token (or id) whose logit is the graph's only target row; None = the
            most probable tokens (`max_logits`, `logit_probability`), as circuit-tracer does.
        contrast: with `target`, the row is `logit(target) - logit(contrast)`.
        max_logits: at most this many logit nodes ...
        logit_probability: ... the most probable tokens up to this cumulative probability.
        node_threshold: default share of influence kept by `prune` / `to_json` (0.8).
        edge_threshold: default share of edge influence kept (0.98).
        batch_size: target rows per backward pass (the prompt runs as this many copies).
        max_feature_nodes: compute incoming edges for at most this many features, chosen by
            their influence on the logits as rows are added (circuit-tracer's order); the rest
            stay in the graph as sources. None = every feature with any influence.
        bos: "keep" (default: an error node per site at the outlier positions holds their whole
            reconstruction) or "zero" (circuit-tracer's convention: features and errors there
            are zero, only the token embedding remains; scores comparable with Neuronpedia's).
        require_all_layers: with transcoders only, refuse a set that misses a layer.
        max_memory: a budget (bytes, or "8GB") for the whole peak: what is resident when the
            passes start (on a CPU the process's memory: model, SAEs, the clean run), the edge
            rows and their normalised copy, and the batched forward pass (its measured size
            per copy sets the batch, with 25% headroom); None = `batch_size` copies. A budget
            below what one copy needs is refused by name.
        store: an open feature store; feature labels are read from it when it has them.

    Returns:
        The `AttributionGraph` (unpruned; `.prune()`, `.scores()`, `.to_json(path)`).
    """
    t0 = time.time()
    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    if not saes:
        raise AttributionError("attribution_graph needs at least one SAE or transcoder")
    _check_args(max_logits, logit_probability, batch_size, max_feature_nodes, bos)
    if contrast not in (None, "") and target is None:
        raise AttributionError("a contrast (--vs) needs a target (--target) to compare with")
    sites = make_sites(model, saes)
    _check_transcoders(model, sites, require_all_layers)
    tokens = prompt_tokens(model, prompt)
    t_id = None if target is None else token_id(model, target)
    c_id = None if contrast in (None, "") else token_id(model, contrast)
    if c_id is not None and c_id == t_id:
        raise AttributionError("the contrast token is the target: pass another --vs or none")
    strings = token_strings(model, tokens)
    n_pos = tokens.shape[1]
    freezer = Freezer(model)
    clean = clean_run(model, sites, tokens, freezer)
    if t_id is None:
        logit_ids, probs = top_logits(clean["logits"][-1], max_logits, logit_probability)
    else:
        logit_ids = [t_id]
        probs = torch.softmax(clean["logits"][-1].float(), -1)[[t_id]]
    v_logit = logit_directions(model, freezer, clean["final"], logit_ids, c_id)

    feats, acts = [], []
    for si, s in enumerate(sites):
        nz = torch.nonzero(s.acts)
        feats.append(torch.cat([torch.full((len(nz), 1), si), nz], 1))
        acts.append(s.acts[nz[:, 0], nz[:, 1]])
    features = torch.cat(feats).long() if feats else torch.zeros(0, 3, dtype=torch.long)
    activations = torch.cat(acts).float() if acts else torch.zeros(0)
    infos = [SiteInfo(s.name, s.layer, s.read, s.write,
                      "transcoder" if s.is_transcoder else "sae", s.sae.d_sae,
                      getattr(s.sae.cfg, "neuronpedia_id", None),
                      str(getattr(s.sae.cfg, "model_name", "") or "")) for s in sites]
    n_f = len(features)
    n_rows = len(logit_ids) + min(n_f, max_feature_nodes or n_f)
    n_nodes = n_f + len(sites) * n_pos + n_pos + len(logit_ids)
    names = [model.tokenizer.decode([i]) for i in logit_ids]
    graph = AttributionGraph(
        prompt=prompt if isinstance(prompt, str) else "".join(strings),
        token_ids=tokens[0].tolist(), tokens=strings, sites=infos, features=features,
        activations=activations, logit_tokens=logit_ids, logit_strings=names,
        logit_probs=probs, edges=torch.zeros(n_rows, n_nodes),
        row_nodes=torch.full((n_rows,), -1),
        n_layers=model.cfg.n_layers, model_name=str(getattr(model.cfg, "model_name", "")),
        node_threshold=node_threshold, edge_threshold=edge_threshold, bos=bos,
        contrast_token=c_id,
        contrast_string=None if c_id is None else model.tokenizer.decode([c_id]))
    log.info("attribution graph: %d tokens, %d active features in %d SAEs, %d logit rows",
             n_pos, n_f, len(sites), len(logit_ids))

    B = max(1, min(batch_size, max(n_f, len(logit_ids))))
    budget = parse_memory(max_memory)
    per_copy = held = 0
    if budget is not None:
        per_copy = saved_bytes_per_copy(model, sites, clean, freezer, tokens)
        held = resident_bytes(tokens.device)
    # the edge rows and their normalised copy; the splice check's [pos, vocab] logits (the
    # model's and a float32 copy)
    B = memory_plan(budget, B, per_copy, 2 * graph.edges.numel() * 4, held,
                    2 * clean["logits"].numel() * 4)
    gp = GraphPass(model, sites, clean, freezer, tokens, B)
    sources = Sources(graph, sites, clean, features, activations, bos)
    passes = run_rows(graph, gp, sites, sources, [("logit", k) for k in range(len(logit_ids))],
                       v_logit, B)
    # feature rows by influence on the logits, recomputed after every round; a round takes the
    # top B per SAE and runs them SAE by SAE (a batch of one SAE's rows runs backward only to
    # the splice before it, a mixed batch through every layer)
    n_rows_f = n_f if max_feature_nodes is None else min(max_feature_nodes, n_f)
    done = torch.zeros(n_f, dtype=torch.bool)
    normalized = torch.empty_like(graph.edges) if n_rows_f else None  # rows, as they are filled
    n_normalized = 0
    while int(done.sum()) < n_rows_f:
        infl, n_normalized = graph.influence_so_far(normalized, n_normalized)
        infl = infl[:n_f].clone()
        infl[done] = -1.0
        take = min(B * len(sites), n_rows_f - int(done.sum()))
        order = torch.argsort(infl, descending=True)[:take]
        order = order[infl[order] > 0]
        if len(order) == 0:
            break
        done[order] = True
        for si in reversed(range(len(sites))):
            group = order[features[order, 0] == si]
            if len(group):
                passes += run_rows(graph, gp, sites, sources,
                                   [("feature", int(i)) for i in group], v_logit, B)
    del normalized
    graph.stats = {"backward_passes": passes, "batch_size": B, "seconds": time.time() - t0,
                   "feature_rows": int(graph.rows_done[:n_f].sum()), "active_features": n_f,
                   "max_feature_nodes": max_feature_nodes, "bos": bos,
                   "forward_bytes_per_copy": per_copy, "resident_bytes": held,
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
