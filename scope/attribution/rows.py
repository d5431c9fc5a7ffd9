"""The rows of an attribution graph: one batched forward pass, then a backward pass per batch.

The prompt runs once as `batch` copies with every write site a leaf tensor (`GraphPass`); one
`torch.autograd.grad` call per batch of target rows injects a different target's read
direction in each copy (`run_rows`). Memory: the pass keeps `batch` copies of the prompt's
activations for the backward passes (`memory_plan` sizes the batch); the edges into a batch of
rows from one SAE's active features are one `[batch, d] @ [d, n_p]` product per position (the
features are kept sorted by position), so no temporary is larger than a row block.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scope.attribution.graph import AttributionGraph
from scope.attribution.replacement import (
    Freezer,
    Site,
    embed_hook,
    final_hook,
    forward,
    hooks,
    site_hooks,
)
from scope.errors import AttributionError
from scope.saes.outliers import outlier_prefix


class GraphPass:
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


class Sources:
    """Per-site source values: active decoder rows, activations, error vectors, embeddings."""

    def __init__(self, graph: AttributionGraph, sites: list[Site], clean: dict[str, torch.Tensor],
                 features: torch.Tensor, activations: torch.Tensor, bos: str) -> None:
        self.per_site = []  # (node index, a_u W_dec[u] [n_active, d_out], offsets [pos + 1])
        for si, s in enumerate(sites):
            idx = torch.nonzero(features[:, 0] == si).flatten()
            pos = features[idx, 1]
            order = torch.argsort(pos, stable=True)  # by position: one product per position
            idx, pos = idx[order], pos[order]
            dec = s.sae.W_dec[features[idx, 2]].float() * activations[idx, None]
            counts = torch.bincount(pos, minlength=graph.n_pos)
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
            self.per_site.append((idx, dec, offsets.tolist()))
        self.errors = [s.error for s in sites]
        if bos == "zero":  # circuit-tracer: no error node at the outlier positions
            self.errors = [_zero_rows(e, outlier_prefix(s.sae.cfg)) for e, s in zip(
                self.errors, sites, strict=True)]
        self.embed = clean["embed"]


def _zero_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    x = x.clone()
    x[:n] = 0.0
    return x


def run_rows(graph: AttributionGraph, gp: GraphPass, sites: list[Site], src: Sources,
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
        free = int((graph.row_nodes >= 0).sum())  # rows are filled in order
        graph.row_nodes[free:free + n] = rows_t
        A = graph.edges[free:free + n]  # a view: [n, n_nodes]
        g_emb = grads[0]
        if g_emb is not None:
            A[:, graph.token_start:graph.logit_start] = (g_emb[:n].float() * src.embed).sum(-1)
        for si, g in enumerate(grads[1:]):
            if g is None:
                continue
            g = g[:n].float()  # [n, pos, d_out]
            err_cols = graph.error_start + si * graph.n_pos
            A[:, err_cols:err_cols + graph.n_pos] = (g * src.errors[si]).sum(-1)
            idx, dec, offsets = src.per_site[si]
            for p in range(graph.n_pos):  # [n, n_p] = g[:, p] @ (a_u W_dec[u])^T
                lo, hi = offsets[p], offsets[p + 1]
                if hi > lo:
                    A.index_copy_(1, idx[lo:hi], g[:, p] @ dec[lo:hi].T)
    return passes


def parse_memory(value: int | str | None) -> int | None:
    """Bytes from an int or a string like "8GB", "512MB" (None: no budget)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise AttributionError(f"max_memory must be bytes or a size like '8GB', got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        text = str(value).strip().upper().removesuffix("B")
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
        mult = units.get(text[-1:], 1)
        try:
            n = int(float(text[:-1] if text[-1:] in units else text) * mult)
        except ValueError:
            raise AttributionError(f"max_memory {value!r}: give bytes or a size like '8GB'"
                                   ) from None
    if n <= 0:
        raise AttributionError(f"max_memory must be positive, got {value!r}")
    return n


def saved_bytes_per_copy(model: Any, sites: list[Site], clean: dict[str, torch.Tensor],
                         freezer: Freezer, tokens: torch.Tensor) -> int:
    """Bytes autograd keeps for one copy of the prompt in the graph's forward pass (measured).

    The pack hook keeps a detached view: the storage stays alive until the pass is dropped (no
    address is reused and counted twice), but no saved tensor holds its own `grad_fn`. Returning
    the tensor itself makes a C++ reference cycle for outputs saved by their own node (tanh,
    softmax), which Python's collector cannot free: 1.6 GiB stayed live per call at 1,024
    tokens."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        GraphPass(model, sites, clean, freezer, tokens, 1)
    return sum(seen.values())


def memory_plan(budget: int | None, batch: int, per_copy: int, edge_bytes: int,
                held: int = 0, final: int = 0) -> int:
    """The batch (copies of the prompt) so that the whole peak fits `budget`: what is `held`
    already (model, SAEs, the clean run), the edge rows and their normalised copy
    (`edge_bytes`), and either the batched pass (its measured `per_copy` bytes with 25%
    headroom) or the `final` splice check (the plain model's logits), whichever is larger."""
    if budget is None:
        return batch
    gib = 2**30
    left = budget - held - edge_bytes
    if left <= final:
        raise AttributionError(
            f"max_memory {budget / gib:.2f} GiB is below what the graph holds without its "
            f"passes: {held / gib:.2f} GiB already resident (model, SAEs, clean run), the edge "
            f"rows alone {edge_bytes / gib:.2f} GiB and {final / gib:.2f} GiB for the splice "
            "check's logits: raise max_memory, lower max_feature_nodes or shorten the prompt")
    fit = int(left * 0.75 // max(per_copy, 1))
    if fit < 1:
        raise AttributionError(
            f"max_memory {budget / gib:.2f} GiB leaves {left / gib:.2f} GiB after what is "
            f"resident and the edge rows, less than one copy of the prompt's forward pass "
            f"({per_copy / gib:.2f} GiB) and 25% headroom: raise max_memory or shorten the "
            "prompt")
    return max(1, min(batch, fit))
