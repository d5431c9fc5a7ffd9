"""Hook sites and activation capture on a TransformerLens model (a `TransformerBridge`).

Owns the site vocabulary (TransformerLens hook names, plus `blocks.L.attn.hook_z` returned
flattened to `[batch, pos, n_heads*d_head]` and the virtual `blocks.L.ln2.hook_normalized_with_gain`
= `ln2.hook_normalized * norm_gain(model, "blocks.L.ln2")`, the Gemma Scope 2 transcoder input),
`capture` (which stops the forward pass after the deepest hooked layer, through `run_to_layer`,
the one place that knows how to stop after the last block), `splice_hooks` (replace a site's
activation) and `norm_gain` (the gain a norm multiplies by: Gemma stores `w` with gain
`1 + w`). Every hook is temporary: none is left on the model after a call, also on error.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from scope.base.shapes import Gain, SiteActs, Tokens
from scope.errors import HookNameError, suggest
from scope.model.hooks import attached

log = logging.getLogger(__name__)

GAIN_SUFFIX = "ln2.hook_normalized_with_gain"
_GAIN = re.compile(r"^blocks\.(\d+)\.ln2\.hook_normalized_with_gain$")
_LAYER = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "hook_tokens", "hook_pos_embed")

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def hook_layer(hook_name: str) -> int | None:
    """The block index a site lives in (`blocks.12.hook_resid_post` -> 12); None outside blocks."""
    m = _LAYER.match(hook_name)
    return int(m.group(1)) if m else None


def _is_z(name: str) -> bool:
    return name.endswith(".attn.hook_z")


def _gain_layer(name: str) -> int | None:
    m = _GAIN.match(name)
    return int(m.group(1)) if m else None


def _all_names(model) -> list[str]:
    names = list(model.hook_dict)
    names += [f"blocks.{L}.{GAIN_SUFFIX}" for L in range(model.cfg.n_layers)]
    return names


def validate_hook_names(model, hook_names: str | Iterable[str]) -> list[str]:
    """Check site names against the model; return them as a de-duplicated list (order kept).

    Args:
        model: a model from `scope.load_model`.
        hook_names: one name or several (TransformerLens names plus the virtual gain site).

    Returns:
        The names as a list.

    Raises:
        HookNameError: a name the model does not have, with the closest valid names.
    """
    if isinstance(hook_names, str):
        hook_names = [hook_names]
    names = list(dict.fromkeys(hook_names))
    if not names:
        raise HookNameError("hook_names is empty; name at least one site, e.g. "
                            "blocks.0.hook_resid_post")
    for name in names:
        if name in model.hook_dict:
            continue
        L = _gain_layer(name)
        if L is not None and f"blocks.{L}.ln2.hook_normalized" in model.hook_dict:
            continue
        n = model.cfg.n_layers
        layer = hook_layer(name)
        where = f" (this model has layers 0..{n - 1})" if layer is not None and layer >= n else ""
        raise HookNameError(
            f"hook name {name!r} does not exist in {model.cfg.model_name}{where}."
            f"{suggest(name, _all_names(model))} Sites are TransformerLens hook names such as "
            f"blocks.{n - 1}.hook_resid_post, blocks.0.hook_mlp_out, blocks.0.attn.hook_z."
        )
    return names


def _stop_layer(names: Sequence[str]) -> int | None:
    """`stop_at_layer` for TransformerLens: one past the deepest block read; None = full pass."""
    deepest = -1
    for name in names:
        layer = hook_layer(name)
        if layer is None:
            if not name.startswith(_BEFORE_BLOCKS):
                return None  # ln_final / unembed sites need the whole model
            continue
        deepest = max(deepest, layer)
    return deepest + 1


def norm_gain(model, norm: str) -> Gain:
    """The gain an RMSNorm multiplies the normalised activation by, as a [d_model] tensor.

    The bridge keeps Hugging Face's raw norm weights: Gemma's RMSNorm multiplies by `1 + w`, so
    `model.ln_final.w` is *not* the gain (HookedTransformer stored `1 + w` there). Use this
    wherever a gain is needed (logit tables, the virtual gain site).

    Args:
        model: a model from `scope.load_model`.
        norm: the norm's module path: "ln_final", "blocks.L.ln1", "blocks.L.ln2", ...

    Returns:
        The gain, in float32 (the precision transformers applies it in), detached.
    """
    module = model
    for part in norm.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    w = module.w.detach().float()
    return 1.0 + w if getattr(model.cfg, "rmsnorm_uses_offset", False) else w


def _recorder(model, name: str, out: dict[str, list[torch.Tensor]]) -> tuple[str, HookFn]:
    """A hook that appends the site's activation, in capture's shape, to out[name]."""
    L = _gain_layer(name)
    if L is not None:

        def record_gain(act, hook):  # the norm module's own output, exactly what the MLP reads
            out[name].append(act.detach())

        return f"blocks.{L}.ln2.hook_out", record_gain

    if _is_z(name):

        def record_z(act, hook):  # [batch, pos, n_heads, d_head] -> [batch, pos, n_heads*d_head]
            out[name].append(act.detach().reshape(*act.shape[:-2], -1))

        return name, record_z

    def record(act, hook):
        out[name].append(act.detach())

    return name, record


def _as_tokens(model, tokens) -> Tokens:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(
            f"tokens: expected an integer tensor [batch, pos], got {tuple(tokens.shape)} "
            f"{tokens.dtype}; use scope.model.activations.to_tokens(model, texts) for text"
        )
    return tokens.to(model.cfg.device)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once every requested site has been seen."""


def _raise_stop(act, hook):
    raise _Stop


def run_to_layer(model, tokens: Tokens, stop_at_layer: int | None = None) -> None:
    """One forward pass that ends after block `stop_at_layer - 1` (None: the whole model).

    `stop_at_layer = n_layers` ends right after the last block's `hook_resid_post`: the final
    norm and the `[batch, pos, d_vocab]` unembedding are skipped. The bridge's own
    `stop_at_layer` stops only *before* a block, so it cannot do that; this function can.
    Hooks attached before the call run first (use it inside `attached(...)`); gradients flow
    as in a plain forward pass (no `no_grad` here).

    Args:
        model: a model from `scope.load_model`.
        tokens: [batch, pos] token ids on the model's device.
        stop_at_layer: one past the deepest block to run, or None.
    """
    if stop_at_layer is None:
        model(tokens, return_type=None)
        return
    n = model.cfg.n_layers
    if stop_at_layer < n:
        model(tokens, return_type=None, stop_at_layer=stop_at_layer)
        return
    try:
        with attached(model, [(f"blocks.{n - 1}.hook_resid_post", _raise_stop)]):
            model(tokens, return_type=None)
    except _Stop:
        pass


@torch.no_grad()
def capture(
    model,
    tokens: Tokens,
    hook_names: str | Iterable[str],
    batch_size: int | None = None,
) -> dict[str, SiteActs]:
    """Run the model on `tokens` and return the activations at the named sites.

    The forward pass stops after the deepest block any site lives in (`run_to_layer`), so no
    layer nobody reads is computed. Hooks are temporary: none is left on the model, also on error.

    Args:
        model: a model from `scope.load_model`.
        tokens: [batch, pos] integer token ids (BOS at position 0, as `to_tokens` makes them).
        hook_names: TransformerLens hook names, plus the virtual
            `blocks.L.ln2.hook_normalized_with_gain`.
        batch_size: run this many sequences per forward pass (None: all at once).

    Returns:
        {hook_name: activation}; [batch, pos, d_model] for residual/MLP/norm sites,
        [batch, pos, n_heads*d_head] for `attn.hook_z` (heads concatenated, head-major, the same
        order as the o_proj input), TransformerLens's own shape for other head sites.
    """
    names = validate_hook_names(model, hook_names)
    tokens = _as_tokens(model, tokens)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = _stop_layer(names)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [_recorder(model, name, out) for name in names]
    step = batch_size or max(len(tokens), 1)
    with attached(model, hooks):
        for start in range(0, len(tokens), step):
            run_to_layer(model, tokens[start : start + step], stop)
    return {name: torch.cat(acts) if len(acts) > 1 else acts[0] for name, acts in out.items()}


def site_width(model, hook_name: str) -> int:
    """The last-axis width `capture` returns for a site (e.g. d_model, n_heads*d_head, d_mlp).

    Args:
        model: a model from `scope.load_model`.
        hook_name: a site name (validated).

    Returns:
        The width as an int.
    """
    (name,) = validate_hook_names(model, [hook_name])
    cfg = model.cfg
    tail = name.rsplit(".", 1)[-1] if _gain_layer(name) is None else "gain"
    if _is_z(name):
        return cfg.n_heads * cfg.d_head
    if tail in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                "hook_mlp_out", "hook_embed", "gain") or name.endswith(
                ("ln1.hook_normalized", "ln2.hook_normalized", "ln1_post.hook_normalized",
                 "ln2_post.hook_normalized", "ln_final.hook_normalized")):
        return cfg.d_model
    if name.endswith(("mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear")):
        return cfg.d_mlp
    # anything else (head-shaped or scale sites): measure it on a one-token forward pass
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else 0
    acts = capture(model, torch.tensor([[bos]]), [name])
    return int(acts[name].shape[-1])


def splice_hooks(model, hook_name: str, fn: Callable[[SiteActs], SiteActs | None]
                 ) -> list[tuple[str, HookFn]]:
    """Forward hooks that replace a site's activation `a` by `fn(a)`.

    `a` has the shape `capture` returns ([batch, pos, width]; `attn.hook_z` flattened); the
    result is reshaped back for TransformerLens. Use inside `with model.hooks(fwd_hooks=...)` or
    `scope.model.hooks.attached(model, ...)`. `fn` returning None (or `a` itself, unchanged) keeps the
    activation. For the virtual gain site the norm module's output is replaced, so the MLP reads
    `fn(a)` exactly.

    Args:
        model: a model from `scope.load_model`.
        hook_name: a site name (validated).
        fn: maps [batch, pos, width] to the same shape.

    Returns:
        A list of `(transformer_lens_hook_name, hook_fn)` pairs.
    """
    (name,) = validate_hook_names(model, [hook_name])
    L = _gain_layer(name)
    if L is not None:

        def splice_gain(act, hook):  # the norm module's output, which the MLP reads
            return fn(act)

        return [(f"blocks.{L}.ln2.hook_out", splice_gain)]

    if _is_z(name):

        def splice_z(act, hook):  # [batch, pos, n_heads, d_head]
            new = fn(act.reshape(*act.shape[:-2], -1))
            return None if new is None else new.reshape(act.shape)

        return [(name, splice_z)]

    def splice(act, hook):
        return fn(act)

    return [(name, splice)]


def to_tokens(model, texts: str | Sequence[str], max_len: int | None = None) -> Tokens:
    """Tokenize text with BOS prepended; several texts are right-padded with the pad token.

    Args:
        model: a model from `scope.load_model` (it has a tokenizer).
        texts: one string or a list.
        max_len: truncate every sequence to this many tokens (BOS included).

    Returns:
        [batch, pos] token ids on the model's device.
    """
    tokens = model.to_tokens(texts, prepend_bos=True, padding_side="right")
    return tokens[:, :max_len] if max_len else tokens
