"""`hf_fast_path`: transformers' own forward pass wherever no hook needs the bridge.

The bridge routes every module through TransformerLens code (hook points, re-implemented eager
attention, norms computed twice so that `hook_normalized` exists); token-by-token generation pays
for that. `install_fast_path` gives each bridge component a forward that, inside
`hf_fast_path(model)` and with none of its own hook points hooked, calls the Hugging Face module
directly (attention through transformers' kernel). The plain bridge path stays the reference:
the tests compare generated text with transformers' `generate` and with full re-runs.
"""

from __future__ import annotations

import contextvars
import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge


# Set by `hf_fast_path`: run Hugging Face modules directly in this context only (a context
# variable, so a capture running in another thread keeps the exact bridge path).
_HF_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("scope_hf_fast", default=False)


@contextmanager
def hf_fast_path(model: TransformerBridge) -> Iterator[None]:
    """Run the wrapped Hugging Face modules directly wherever no hook needs the bridge, in the block.

    The bridge routes every module through TransformerLens code (hook points, re-implemented
    attention, norms computed twice so that `hook_normalized` exists), which costs time in
    token-by-token generation. Inside this block a bridge component with no hook on any of its
    own hook points calls its Hugging Face module directly, and attention runs transformers' own
    kernel: SDPA where transformers supports it (Gemma 3; Gemma 2's soft-capping is eager-only).
    Components with hooks attached (steering sites, a hooked `hook_pattern`, ...) keep the bridge
    path, so every hook fires as outside the block. The result is transformers' own forward pass
    plus the attached hooks: `generate` uses it; `capture` never does, because SDPA agrees with the
    eager attention the sites are checked against only to float rounding.
    """
    token = _HF_FAST.set(True)
    try:
        yield
    finally:
        _HF_FAST.reset(token)


class _AttentionView:
    """The HF attention module seen through another config (for its attention implementation)."""

    def __init__(self, module: torch.nn.Module, config: Any) -> None:
        self.__dict__.update(_module=module, config=config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _hooked(points: list) -> bool:
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks for p in points)


def install_fast_path(model: TransformerBridge) -> None:
    """Give every bridge component a forward that honours `hf_fast_path` (see there)."""
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    hf = model.original_model
    implementation = "sdpa" if getattr(hf, "_supports_sdpa", False) else "eager"
    attentions = {id(block.attn) for block in model.blocks}
    for module in list(model.modules()):
        if not isinstance(module, GeneralizedComponent) or module.original_component is None:
            continue
        own = [m for _, m in module.named_children() if isinstance(m, HookPoint)]
        forward = (_attention_forward(module, own, implementation) if id(module) in attentions
                   else _component_forward(module, own))
        # into __dict__ directly: a bridge component forwards attribute writes it does not know
        # to the wrapped Hugging Face module
        module.__dict__["forward"] = forward


def _component_forward(component: Any, own: list) -> Any:
    bridge_forward, original = component.forward, component.original_component

    def forward(*args, **kwargs):
        if _HF_FAST.get() and not _hooked(own):
            return original(*args, **kwargs)
        return bridge_forward(*args, **kwargs)

    return forward


def _sdpa_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """The eager additive mask the model built, in the form transformers' SDPA path builds.

    The model builds masks for its configured (eager) attention: float, 0 where a key is visible.
    SDPA given a float mask falls back to a slow kernel on CPU (measured: decoding 1.8x slower
    than transformers' generate), and transformers passes no mask at all when nothing is hidden
    (decoding; plain causal prefill, then `is_causal`), else a boolean one. Same here, so the
    kernel, and the numbers, are the ones transformers' own generate gets.
    """
    visible = mask == 0  # [batch, 1, q, kv]
    if bool(visible.all()):
        return None
    q, kv = visible.shape[-2:]
    if q == kv and q > 1 and torch.equal(visible, torch.ones_like(visible).tril()):
        return None  # plain causal: transformers' sdpa_attention_forward sets is_causal
    return visible


def _attention_forward(attn: Any, own: list, implementation: str) -> Any:
    """Attention through the HF module with `implementation`, unless an internal is hooked."""
    bridge_forward, hf_attn = attn.forward, attn.original_component
    config = copy.copy(hf_attn.config)
    config._attn_implementation = implementation
    view = _AttentionView(hf_attn, config)
    hf_forward = type(hf_attn).forward
    internal = [p for p in own if p is not attn.hook_in and p is not attn.hook_out]
    edges = [attn.hook_in, attn.hook_out]

    def forward(*args, **kwargs):
        if not _HF_FAST.get() or _hooked(internal):
            return bridge_forward(*args, **kwargs)
        if implementation == "sdpa" and kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = _sdpa_mask(kwargs["attention_mask"])
        if not _hooked(edges):
            return hf_forward(view, *args, **kwargs)
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        out, weights = hf_forward(view, attn.hook_in(hidden), *args, **kwargs)
        return attn.hook_out(out), weights

    return forward
