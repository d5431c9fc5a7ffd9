"""The effect attribution estimates in `mode="total"`: removing features from the unmodified model.

Removing feature `k` at position `p` means subtracting its decoder contribution `a_k W_dec[k]`
from the site the SAE writes (the residual stream for an SAE, `hook_mlp_out` for a transcoder)
in the *unmodified* model: nothing is spliced, no other feature is recomputed, every later
layer (and every other dictionary's site) computes what it computes. Both estimators, and the
ablation check that measures them, are written in one parametrisation: at each site's write hook

    y  ->  y + ((c - 1) * a) @ W_dec          c: [batch, pos, d_sae], 1 = clean, 0 = removed

so `d metric / d c_k = a_k W_dec[k] . d metric / d y`:

* `grad` (activation x gradient): that derivative at `c = 1`, the first-order estimate;
* `ig` (integrated gradients, as in sparse feature circuits): its mean over `steps` midpoints
  `alpha` of the path `c = alpha` for every active feature of one site at once (the other sites
  clean), so a site's attributions sum to the exact effect of removing all its features
  (completeness; reported in `AttributionResult.extra["ig_completeness"]`);
* the ablation check: `c_k = 0` for one feature per copy of the prompt, measured exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from scope.attribution.replacement import Site, embed_hook, hooks, last_logits, site_hooks

Metric = Callable[[dict[int, torch.Tensor], torch.Tensor], torch.Tensor]
"""(reads {site index: [batch, pos, d_in]}, logits [batch, pos, d_vocab]) -> [batch] metric."""


@dataclass
class Pass:
    """One batched forward pass of the unmodified model with scaled feature contributions."""

    metric: Float[torch.Tensor, " batch"]  # noqa: F722
    coeff_grads: dict[int, torch.Tensor]
    """{site: [batch, pos, d_sae] d metric / d c} for the sites given coefficients with grad."""
    write_grads: dict[int, torch.Tensor]
    """{site: [batch, pos, d_out] d metric / d y} (only with `grad_writes`)."""
    embed_grad: torch.Tensor | None
    """[batch, pos, d_model] d metric / d embedding (only with `grad_writes`)."""


def run(model, sites: Sequence[Site], tokens: torch.Tensor, metric_of: Metric,
        coeffs: dict[int, torch.Tensor], *, grad: bool = False, grad_writes: bool = False) -> Pass:
    """Run `batch` copies of the prompt with site `i`'s contributions scaled by `coeffs[i]`.

    Args:
        model: the model.
        sites: the sites (clean values filled by `clean_run`).
        tokens: [1, pos] token ids.
        metric_of: the metric.
        coeffs: {site index: [batch, pos, d_sae]} coefficients (missing sites stay clean).
        grad: return d metric / d c for every site in `coeffs`.
        grad_writes: also return d metric / d y at every site and at the embedding.

    Returns:
        A `Pass`.
    """
    batch = max((c.shape[0] for c in coeffs.values()), default=1)
    leaves = {i: c.detach().clone().requires_grad_(grad) for i, c in coeffs.items()}
    zeros: dict[int, torch.Tensor] = {}
    reads: dict[int, torch.Tensor] = {}
    fwd = []
    for i, s in enumerate(sites):
        fwd += site_hooks(model, s.read, _reader(reads, i))
        if i in leaves or grad_writes:
            fwd += site_hooks(model, s.write, _writer(s, leaves.get(i), zeros, i, grad_writes))
    emb: dict[str, torch.Tensor] = {}
    if grad_writes:
        def at_embed(a):
            emb["z"] = torch.zeros_like(a, dtype=torch.float32).requires_grad_(True)
            return a + emb["z"].to(a.dtype)

        fwd += site_hooks(model, embed_hook(), at_embed)
    need = grad or grad_writes
    with torch.set_grad_enabled(need), hooks(model, fwd):
        logits = last_logits(model, tokens.expand(batch, -1))  # [batch, 1, d_vocab]
        metric = metric_of(reads, logits)
    coeff_grads: dict[int, torch.Tensor] = {}
    write_grads: dict[int, torch.Tensor] = {}
    embed_grad = None
    if need:
        keys = ([("c", i) for i in leaves] if grad else []) + (
            [("y", i) for i in zeros] + [("e", 0)] if grad_writes else [])
        inputs = [leaves[i] if k == "c" else zeros[i] if k == "y" else emb["z"] for k, i in keys]
        grads = torch.autograd.grad(metric.sum(), inputs, allow_unused=True)
        for (k, i), g, x in zip(keys, grads, inputs, strict=True):
            g = torch.zeros_like(x) if g is None else g.float()
            if k == "c":
                coeff_grads[i] = g
            elif k == "y":
                write_grads[i] = g
            else:
                embed_grad = g
    return Pass(metric.detach().float(), coeff_grads, write_grads, embed_grad)


def _reader(reads: dict[int, torch.Tensor], i: int) -> Callable:
    def read(x):
        reads[i] = x
        return None
    return read


def _writer(s: Site, c: torch.Tensor | None, zeros: dict[int, torch.Tensor], i: int,
            grad_writes: bool) -> Callable:
    def write(y):
        out = y
        if c is not None:
            scale = (c - 1.0) * s.acts.unsqueeze(0)  # [batch, pos, d_sae]
            out = out + (scale @ s.sae.W_dec.float()).to(y.dtype)
        if grad_writes:
            zeros[i] = torch.zeros_like(y, dtype=torch.float32).requires_grad_(True)
            out = out + zeros[i].to(y.dtype)
        return out
    return write


def ones(site: Site, batch: int) -> torch.Tensor:
    """[batch, pos, d_sae] coefficients of the clean model."""
    return torch.ones(batch, *site.acts.shape)


def integrated_gradients(model, sites: Sequence[Site], tokens: torch.Tensor, metric_of: Metric,
                         site: int, steps: int, batch_size: int, clean_metric: float
                         ) -> tuple[torch.Tensor, float]:
    """IG of every active feature of one site on the path `c = alpha` (midpoint rule).

    Returns:
        ([pos, d_sae] attributions, the exact effect metric(clean) - metric(site removed)).
    """
    s = sites[site]
    active = (s.acts != 0).float()
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(s.acts)
    for start in range(0, steps, batch_size):
        a = alphas[start:start + batch_size].view(-1, 1, 1)
        c = 1.0 - active.unsqueeze(0) * (1.0 - a)
        out = run(model, sites, tokens, metric_of, {site: c}, grad=True)
        total += out.coeff_grads[site].sum(0)
    removed = run(model, sites, tokens, metric_of, {site: 1.0 - active.unsqueeze(0)})
    return total / steps * active, clean_metric - float(removed.metric[0])


def measure_removals(model, sites: Sequence[Site], tokens: torch.Tensor, metric_of: Metric,
                     picks: Sequence[tuple[int, int, int]], clean_metric: float,
                     factor: float = 0.0, batch_size: int = 16) -> list[float]:
    """metric(feature scaled by `factor`) - metric(clean) for each (site, pos, feature) pick."""
    clean = clean_metric
    out: list[float] = []
    for start in range(0, len(picks), batch_size):
        chunk = picks[start:start + batch_size]
        coeffs: dict[int, torch.Tensor] = {}
        for b, (si, p, k) in enumerate(chunk):
            if si not in coeffs:
                coeffs[si] = ones(sites[si], len(chunk))
            coeffs[si][b, p, k] = factor
        res = run(model, sites, tokens, metric_of, coeffs)
        out += [float(m) - clean for m in res.metric]
    return out
