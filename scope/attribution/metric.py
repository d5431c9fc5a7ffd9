"""The metric attribution explains: a next-token logit, a logit difference, or a feature."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from scope.attribution.inputs import token_id
from scope.attribution.replacement import Site
from scope.errors import AttributionError

MetricFn = Callable[[dict[int, torch.Tensor], torch.Tensor], torch.Tensor]
"""(reads {site index: [batch, pos, d_in]}, logits [batch, pos, d_vocab]) -> [batch] metric."""


@dataclass(frozen=True)
class FeatureMetric:
    """Metric = pre-activation of one feature (its activation whenever it fires)."""

    sae: int
    """Index of the SAE in the list passed to `attribute`."""
    feature: int
    """Feature index."""
    position: int = -1
    """Token position (negative counts from the end)."""


def metric_fn(model: Any, sites: Sequence[Site], target: Any, contrast: Any
              ) -> tuple[str, MetricFn, Any]:
    """(display name, metric function, info): info is the target `Site` for a `FeatureMetric`,
    else the (target id, contrast id or None) pair."""
    if isinstance(target, FeatureMetric):
        by_index = {s.index: i for i, s in enumerate(sites)}
        if target.sae not in by_index:
            raise AttributionError(f"FeatureMetric.sae={target.sae}: no such SAE "
                                   f"(0..{len(sites) - 1})")
        i = by_index[target.sae]
        site = sites[i]
        if not 0 <= target.feature < site.sae.d_sae:
            raise AttributionError(f"FeatureMetric.feature={target.feature} is outside "
                                   f"0..{site.sae.d_sae - 1}")
        w = site.sae.W_enc[:, target.feature].float()
        b = site.sae.b_enc[target.feature].float()

        def feat(reads: dict[int, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
            return reads[i][:, target.position].float() @ w + b

        return f"{site.name}[{target.feature}]@{target.position}", feat, site
    t = token_id(model, target)
    c = None if contrast is None or contrast == "" else token_id(model, contrast)
    if c is not None and c == t:
        raise AttributionError(f"the contrast token is the target {target!r}: the logit "
                               "difference would be 0; pass another --vs token or none")

    def logit(reads: dict[int, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return last[:, t] - (last[:, c] if c is not None else 0.0)

    name = f"logit({model.tokenizer.decode([t])!r})"
    if c is not None:
        name += f" - logit({model.tokenizer.decode([c])!r})"
    return name, logit, (t, c)
