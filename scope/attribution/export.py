"""Attribution graph -> the JSON that circuit-tracer writes and Neuronpedia's graph viewer reads.

Top level: `metadata` (slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
`schema_version: 1`, `feature_details.neuronpedia_source_set` where every SAE has a Neuronpedia
id of one source set, `info`, `generation_settings`, `pruning_settings`, plus scope's own
`scope` block: sites, graph scores, backward passes), `qParams` (the viewer's initial state),
`nodes` and `links`. `scan` is the Neuronpedia model id (`gemma-3-4b`, `gemma-2-2b`: from the
SAEs' Neuronpedia ids, else the model name without `google/` and a `-pt` suffix).

Neuronpedia's viewer reads a graph with `schema_version: 1` (or a source set) as cantor-paired:
a feature node's `feature` is `cantor(layer, index) = (layer + index)(layer + index + 1)/2 +
index`, from which it recovers the layer and the index whose dashboard it fetches (as
`{layer}-{source set}`). Without it, `feature` would be read in an older per-model encoding.

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
import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from scope.base.atomic import atomic_write_text

log = logging.getLogger(__name__)

FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"


SCHEMA_VERSION = 1
METADATA_FILE = "graph-metadata.json"


def _token_text(s: str) -> str:
    return s.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def cantor(layer: int, index: int) -> int:
    """Cantor pairing of (layer, feature index): Neuronpedia's schema-1 feature id."""
    return (layer + index) * (layer + index + 1) // 2 + index


def uncantor(value: int) -> tuple[int, int]:
    """(layer, index) from a cantor-paired id (exact in integers)."""
    w = (math.isqrt(8 * value + 1) - 1) // 2
    index = value - w * (w + 1) // 2
    return w - index, index


def neuronpedia_model_id(model_name: str, sites: list[Any]) -> str:
    """The Neuronpedia model id: from the SAEs' Neuronpedia ids, else the model name."""
    ids = {s.neuronpedia_id.split("/", 1)[0] for s in sites if getattr(s, "neuronpedia_id", None)}
    if len(ids) == 1:
        return ids.pop()
    name = (model_name or "").rsplit("/", 1)[-1]
    return name.removesuffix("-pt") or "scope"


def neuronpedia_source_set(sites: list[Any]) -> str | None:
    """The one source set (`gemmascope-res-16k`) of every SAE's Neuronpedia id, or None."""
    sets = set()
    for s in sites:
        np_id = getattr(s, "neuronpedia_id", None)
        if not np_id or "/" not in np_id:
            return None
        layer_set = np_id.split("/", 1)[1]
        prefix = f"{s.layer}-"
        if not layer_set.startswith(prefix):
            return None
        sets.add(layer_set[len(prefix):])
    return sets.pop() if len(sets) == 1 else None


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
            add(i, {**base, "node_id": f"{site.layer}_{k}_{pos}",
                    "feature": cantor(site.layer, int(k)),
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
            out = f'"{_token_text(graph.logit_strings[j])}"'
            if graph.contrast_string is not None:
                out += f' - "{_token_text(graph.contrast_string)}"'
            add(i, {**base, "node_id": f"{layer}_{tok}_{pos}", "feature": tok, "layer": layer,
                    "ctx_idx": pos, "feature_type": "logit", "token_prob": p,
                    "is_target_logit": j == 0, "jsNodeId": f"L_{tok}-{pos}",
                    "clerp": f"Output {out} (p={p:.3f})",
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
    from scope.base.version import __version__

    meta: dict[str, Any] = {
        "slug": slug or default_slug(graph.prompt),
        "scan": neuronpedia_model_id(graph.model_name, graph.sites),
        "transcoder_list": [s.name for s in graph.sites],
        "prompt_tokens": [_token_text(t) for t in graph.tokens],
        "prompt": graph.prompt,
        "node_threshold": nt,
        "schema_version": SCHEMA_VERSION,
        "info": {"generator": {"name": "scope", "version": __version__},
                 "create_time_ms": int(time.time() * 1000)},
        "generation_settings": {"max_n_logits": len(graph.logit_tokens),
                                "max_feature_nodes": graph.stats.get("max_feature_nodes"),
                                "batch_size": graph.stats.get("batch_size")},
        "pruning_settings": {"node_threshold": nt, "edge_threshold": et},
        "scope": {"edge_threshold": et, "sites": [s.__dict__ for s in graph.sites],
                  "scores": scores, "stats": graph.stats, "n_layers": graph.n_layers,
                  "bos": graph.bos, "model_name": graph.model_name,
                  "contrast": graph.contrast_string},
    }
    source_set = neuronpedia_source_set(graph.sites)
    if source_set:
        meta["feature_details"] = {"neuronpedia_source_set": source_set}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
               "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}


def check_out_path(path: str | Path) -> Path:
    """The graph's output file; refuses a folder, or a parent that is not a folder."""
    from scope.errors import AttributionError

    path = Path(path)
    if path.is_dir():
        raise AttributionError(f"--graph {path} is a folder: give a file name such as "
                               f"{path / 'graph.json'}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AttributionError(f"--graph {path}: {parent} is a file, not a folder; "
                                       "choose a path in an existing or new folder")
            break
    return path


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write the graph JSON atomically, and its entry in `graph-metadata.json` beside it.

    `graph-metadata.json` (`{"graphs": [metadata, ...]}`) is the index circuit-tracer's local
    viewer lists graphs from; an entry of the same slug is replaced, others are kept.
    """
    path = check_out_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False))
    index = path.parent / METADATA_FILE
    graphs: list[Any] = []
    if index.is_file():
        try:
            old = json.loads(index.read_text(encoding="utf-8"))
            graphs = [g for g in old.get("graphs", []) if isinstance(g, dict)]
        except (OSError, ValueError, AttributeError):
            log.warning("%s is not a graph index; writing a new one", index)
    slug = data["metadata"]["slug"]
    entry = {k: v for k, v in data["metadata"].items() if k != "scope"}
    graphs = [g for g in graphs if g.get("slug") != slug] + [entry]
    atomic_write_text(index, json.dumps({"graphs": graphs}, indent=1, allow_nan=False))
    return path
