"""Outlier positions: the token positions no dictionary is trained, evaluated or attributed on.

One rule for the whole package (training, attribution, graphs, extraction statistics):

- position 0, and any position holding the BOS token, always: Gemma's residual stream and MLP
  output there are ~10-100x the norm of any other token, and no Gemma Scope dictionary saw them;
- the first `GEMMA_SCOPE_2_IT_PREFIX` (4) positions for Gemma Scope 2 IT dictionaries, which were
  not trained on them (circuit-tracer issue #76);
- a dictionary that records its own prefix in `cfg.extra["outlier_prefix"]` (scope's trained ones
  do) gets exactly that.

Callers keep the original activation at outlier positions (no reconstruction, no feature nodes):
the dictionary's error term there is the whole activation. EOS and padding positions are left out
by their own rule (`scope.pipeline.corpus.special_token_ids`); this module owns only outliers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # shapes for readers and type checkers; no runtime dependency
    from jaxtyping import Bool, Int
    from torch import Tensor

#: positions Gemma Scope 2 IT dictionaries were not trained on (circuit-tracer #76)
GEMMA_SCOPE_2_IT_PREFIX = 4
#: `cfg.extra` key where a dictionary records how many leading positions it never saw
OUTLIER_PREFIX_KEY = "outlier_prefix"
_GS2_IT = re.compile(r"^gemma-scope-2-[\w.]+-it(-|$)")


def outlier_prefix(cfg: Any = None) -> int:
    """How many leading positions a dictionary excludes (>= 1: BOS is always an outlier).

    Args:
        cfg: an `SAEConfig` (or None for the default, BOS only).

    Returns:
        `cfg.extra["outlier_prefix"]` when the dictionary records one, 4 for a Gemma Scope 2 IT
        release, else 1.
    """
    if cfg is None:
        return 1
    recorded = (getattr(cfg, "extra", None) or {}).get(OUTLIER_PREFIX_KEY)
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return recorded
    if _GS2_IT.match(str(getattr(cfg, "release", "") or "")):
        return GEMMA_SCOPE_2_IT_PREFIX
    return 1


def outlier_positions(tokens: Int[Tensor, "batch pos"], cfgs: Any = None, *,  # noqa: F722
                      bos_token_id: int | None = None,
                      prefix: int | None = None) -> Bool[Tensor, "batch pos"]:  # noqa: F722
    """Boolean mask of the outlier positions of a token batch (True = leave out).

    Args:
        tokens: [batch, pos] token ids, BOS first as scope makes them.
        cfgs: one `SAEConfig` or several (the largest prefix wins, so one mask serves a whole
            replacement model); None for BOS only.
        bos_token_id: also mark every position holding this token (a BOS inside a packed window).
        prefix: override the leading-position count (>= 1).

    Returns:
        [batch, pos] bool, on `tokens`' device.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens: expected [batch, pos], got shape {tuple(tokens.shape)}")
    if prefix is None:
        many = cfgs if isinstance(cfgs, Iterable) and not isinstance(cfgs, (str, bytes)) else [cfgs]
        prefix = max([outlier_prefix(c) for c in many] or [1])
    if prefix < 1:
        raise ValueError(f"prefix must be >= 1 (BOS is always an outlier), got {prefix}")
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    mask = (pos < prefix).expand(tokens.shape[0], -1).clone()
    if bos_token_id is not None:
        mask |= tokens == int(bos_token_id)
    return mask
