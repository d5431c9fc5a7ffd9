"""Attribution graph -> the JSON that circuit-tracer writes and Neuronpedia's graph viewer reads.

Top level: `metadata` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold, plus
scope's own `scope` block: SAE names, graph scores, backward passes), `qParams` (the viewer's
initial state), `nodes` and `links`.

Each node has `node_id`, `feature`, `layer` (a string), `ctx_idx`, `feature_type`,
`token_prob`, `is_target_logit`, `run_idx`, `reverse_ctx_idx`, `jsNodeId`, `clerp` (label),
`influence` (cumulative share of influence of the nodes ranked at or above it, as
circuit-tracer writes it) and `activation`. Node ids follow circuit-tracer: a feature is
`{layer}_{feature}_{pos}`, an error `0_{layer}_{pos}`, a token `E_{token_id}_{pos}`, a logit
`{n_layers + 1}_{token_id}_{pos}`. Feature types are the viewer's: "cross layer transcoder"
for every feature (the viewer knows no other), "mlp reconstruction error" for every error node,
"embedding", "logit"; scope adds `sae` (the SAE's name) to feature and error nodes. A link is
`{source, target, weight}` with the node ids.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from scope.base.atomic import atomic_write_text

FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"


def _token_text(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "→")


def default_slug(prompt: str) -> str:
    """A viewer slug from the prompt: lowercase words joined by dashes (max 60 chars)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].strip("-")
    return slug or "graph"


def graph_json(graph: Any, *, slug: str | None = None, node_threshold: float | None = None,
               edge_threshold: float | None = None) -> dict[str, Any]:
    """The pruned graph as a JSON-ready dict (see the module docstring)."""
    nt = graph.node_threshold if node_threshold is None else node_threshold
    et = graph.edge_threshold if edge_threshold is None else edge_threshold
    pr = graph.prune(nt, et)
    ids: dict[int, str] = {}
    nodes: list[dict[str, Any]] = []
    used: set[str] = set()

    def add(i: int, node: dict[str, Any]) -> None:
        nid = node["node_id"]
        while nid in used:  # two SAEs on one layer: keep ids unique
            nid += "'"
        node["node_id"] = nid
        node.setdefault("jsNodeId", nid)
        used.add(nid)
        ids[i] = nid
        nodes.append(node)

    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
            "clerp": ""}
    keep = pr.node_mask.nonzero().flatten().tolist()
    for i in keep:
        kind = graph.node_kind(i)
        infl = float(pr.cumulative[i])
        if kind == "feature":
            si, pos, k = graph.features[i].tolist()
            site = graph.sites[si]
            add(i, {**base, "node_id": f"{site.layer}_{k}_{pos}", "feature": int(k),
                    "layer": str(site.layer), "ctx_idx": pos, "feature_type": FEATURE_TYPE,
                    "jsNodeId": f"{site.layer}_{k}-0", "clerp": graph.labels.get(i, ""),
                    "influence": infl, "activation": float(graph.activations[i]),
                    "sae": site.name})
        elif kind == "error":
            si, pos = divmod(i - graph.error_start, graph.n_pos)
            site = graph.sites[si]
            add(i, {**base, "node_id": f"0_{site.layer}_{pos}", "feature": -1,
                    "layer": str(site.layer), "ctx_idx": pos, "feature_type": ERROR_TYPE,
                    "jsNodeId": f"{site.layer}_{pos}-0", "influence": infl, "activation": None,
                    "sae": site.name})
        elif kind == "embedding":
            pos = i - graph.token_start
            tok = graph.token_ids[pos]
            add(i, {**base, "node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E",
                    "ctx_idx": pos, "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}",
                    "influence": infl, "activation": None})
        else:
            j = i - graph.logit_start
            tok, p = graph.logit_tokens[j], float(graph.logit_probs[j])
            layer = str(graph.n_layers + 1)
            pos = graph.n_pos - 1
            add(i, {**base, "node_id": f"{layer}_{tok}_{pos}", "feature": tok, "layer": layer,
                    "ctx_idx": pos, "feature_type": "logit", "token_prob": p,
                    "is_target_logit": j == 0, "jsNodeId": f"L_{tok}-{pos}",
                    "clerp": f'Output "{_token_text(graph.logit_strings[j])}" (p={p:.3f})',
                    "influence": infl, "activation": None})
    links = []
    r, src = pr.edge_mask.nonzero(as_tuple=True)
    E, _ = graph._rows()
    weights = E[r, src].tolist()
    for t, s, w in zip(pr.rows[r].tolist(), src.tolist(), weights, strict=True):
        if s in ids and t in ids and math.isfinite(w):
            links.append({"source": ids[s], "target": ids[t], "weight": float(w)})
    linked = {x for link in links for x in (link["source"], link["target"])}
    nodes = [n for n in nodes if n["node_id"] in linked or n["feature_type"] in (
        "embedding", "logit")]
    scores = {k: (v if math.isfinite(v) else None) for k, v in graph.scores().items()}
    meta = {
        "slug": slug or default_slug(graph.prompt),
        "scan": graph.model_name or "scope",
        "transcoder_list": [s.name for s in graph.sites],
        "prompt_tokens": [_token_text(t) for t in graph.tokens],
        "prompt": graph.prompt,
        "node_threshold": nt,
        "scope": {"edge_threshold": et, "sites": [s.__dict__ for s in graph.sites],
                  "scores": scores, "stats": graph.stats, "n_layers": graph.n_layers},
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
               "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the graph JSON atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))
    return path
