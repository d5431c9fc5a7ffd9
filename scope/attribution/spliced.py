"""`mode="direct"`: gradients and ablations in the linearised spliced model.

The SAEs are spliced in with their errors as constants, attention patterns and norm scales
frozen at their clean values (`replacement.Freezer`) and every other feature held at its clean
activation: only the effect that does not pass through another feature remains. These are
exactly the graph's edge weights into the metric, and zeroing a feature in this model is what
the direct-mode ablation check measures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from scope.attribution.replacement import Freezer, Site, embed_hook, hooks, site_hooks


class Spliced:
    """Hooks of the linearised spliced model (one prompt, batch 1)."""

    def __init__(self, model: Any, sites: list[Site], clean: dict[str, torch.Tensor],
                 freezer: Freezer) -> None:
        self.model, self.sites, self.clean, self.freezer = model, sites, clean, freezer
        self.f: dict[int, torch.Tensor] = {}
        self.x: dict[int, torch.Tensor] = {}
        self.err: dict[int, torch.Tensor] = {}
        self.embed: torch.Tensor | None = None
        self.ablate: tuple[int, int, int] | None = None  # (site, pos, feature) zeroed

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        fwd: list[tuple[str, Callable]] = []
        for i, site in enumerate(self.sites):
            fwd += site_hooks(self.model, site.read, self._reader(i, site))
            fwd += site_hooks(self.model, site.write, self._writer(i, site))

        def emb(a):
            self.embed = self.clean["embed"].to(a.dtype).unsqueeze(0).clone().requires_grad_(True)
            return self.embed

        fwd += site_hooks(self.model, embed_hook(), emb)
        return fwd + self.freezer.frozen()

    def _reader(self, i: int, site: Site) -> Callable:
        def read(x):
            self.x[i] = x.float()
            f = site.acts.unsqueeze(0).clone()
            if self.ablate is not None and self.ablate[0] == i:
                f[0, self.ablate[1], self.ablate[2]] = 0.0
            self.f[i] = f.requires_grad_(True)
            return None
        return read

    def _writer(self, i: int, site: Site) -> Callable:
        def write(y):
            err = site.error.unsqueeze(0).clone().requires_grad_(True)
            self.err[i] = err
            out = site.sae.decode(self.f[i]).float() + site.skip(self.x[i]) + err
            return out.to(y.dtype)
        return write

    def gradients(self, tokens: torch.Tensor, metric_of: Callable, used: list[int]
                  ) -> tuple[float, torch.Tensor | None, list, list]:
        """metric, d/d embed, d/d features and d/d errors of the sites `used`."""
        with hooks(self.model, self.fwd_hooks()):
            logits = self.model(tokens)
        metric = metric_of(self.x, logits)[0]
        inputs = [self.embed] + [self.f[i] for i in used] + [self.err[i] for i in used]
        grads = torch.autograd.grad(metric, inputs, allow_unused=True)
        return float(metric.detach()), grads[0], list(grads[1:1 + len(used)]), list(
            grads[1 + len(used):])

    def ablations(self, tokens: torch.Tensor, metric_of: Callable, clean_metric: float,
                  picks: list[tuple[int, int, int]]) -> list[float]:
        """metric(feature zeroed) - metric(clean) in this model for each (site, pos, feature)."""
        out = []
        for pick in picks:
            self.ablate = pick
            try:
                with torch.no_grad(), hooks(self.model, self.fwd_hooks()):
                    logits = self.model(tokens)
                out.append(float(metric_of(self.x, logits)[0]) - clean_metric)
            finally:
                self.ablate = None
        return out
