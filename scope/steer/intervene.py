"""Steering with SAE features, and text generation.

`steering` adds a feature's decoder direction at its SAE's hook ("add"), or re-writes chosen
feature activations there while keeping the SAE's error term ("clamp"), for the duration of a
`with` block; `generate` samples text with transformers' own KV cache and honours any steering
that is active. Hooks are attached for the block only and removed on exit, also on error.
"""

from __future__ import annotations

import contextvars
import inspect
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from scope.errors import HookNameError, SteeringError
from scope.model.activations import site_width, splice_hooks, validate_hook_names
from scope.model.hooks import attached
from scope.model.load import hf_fast_path
from scope.saes.sae import JumpReLUSAE
from scope.steer.defaults import scale_by_max
from scope.steer.relative import check_relative_store

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

MODES = ("add", "clamp")

# Absolute position of the first token in the current forward pass. `generate` sets it while it
# feeds tokens one at a time through the KV cache, so `from_pos` counts prompt positions.
_POSITION_OFFSET: contextvars.ContextVar[int] = contextvars.ContextVar("scope_pos", default=0)


@dataclass(frozen=True)
class Intervention:
    """One SAE's part of a steering request.

    Attributes:
        sae: the SAE whose features are steered; it must read a site of the steered model.
        features: feature index -> strength ("add": multiple of the unit decoder direction, or of
            the feature's max activation with `relative_to`) or value ("clamp": the activation the
            feature is set to; 0 ablates).
        mode: "add" or "clamp".
    """

    sae: JumpReLUSAE
    features: Mapping[int, float]
    mode: str = "add"


@contextmanager
def steering(
    model: TransformerBridge,
    sae: JumpReLUSAE | Sequence[Intervention | tuple],
    features: Mapping[int, float] | None = None,
    mode: str = "add",
    *,
    from_pos: int = 0,
    relative_to=None,
) -> Iterator[list[Intervention]]:
    """Steer `model` with SAE features while the block runs.

    "add" adds `strength * W_dec[f]` to the activation at the SAE's site (the output site for a
    transcoder). "clamp" encodes the activation, sets each chosen feature to its value and adds
    the change through the decoder: `a + (value - f(a)) @ W_dec[chosen]`, which is the decoded
    clamped features plus the SAE's error term. Clamping a feature to its own value, or adding
    strength 0, leaves every activation bit-identical.

    Args:
        model: the model to steer (from `scope.load_model`).
        sae: one SAE (then give `features` and `mode`), or a list of `Intervention`s or
            `(sae, features[, mode])` tuples to steer several SAEs, sites and layers at once.
        features: {feature index: strength or value}.
        mode: "add" or "clamp".
        from_pos: steer only positions >= this absolute position (0 = every position, BOS too).
        relative_to: an open feature store; "add" strengths are then multiples of each feature's
            max activation recorded there.

    Yields:
        The resolved interventions.

    Raises:
        SteeringError: unknown feature index, non-finite strength, unknown mode, or an SAE that
            does not fit a site of this model.
    """
    if isinstance(sae, JumpReLUSAE):
        requests = [Intervention(sae, dict(features or {}), mode)]
    else:
        if features is not None:
            raise SteeringError("pass `features` only with a single SAE; lists carry their own")
        requests = [r if isinstance(r, Intervention) else Intervention(*r) for r in sae]
    if not requests:
        raise SteeringError("nothing to steer: give at least one SAE and feature")
    if from_pos < 0:
        raise SteeringError(f"from_pos={from_pos} must be >= 0")
    hooks = []
    for request in requests:
        _validate(model, request)
        strengths = dict(request.features)
        if relative_to is not None and request.mode == "add":
            strengths = _relative(relative_to, request.sae, strengths)
        hooks += _hooks(model, request.sae, strengths, request.mode, from_pos)
    with attached(model, hooks):
        yield requests


def _validate(model: TransformerBridge, request: Intervention) -> None:
    sae, cfg = request.sae, request.sae.cfg
    if request.mode not in MODES:
        raise SteeringError(f"mode={request.mode!r}: choose one of {', '.join(MODES)}")
    if not request.features:
        raise SteeringError(f"no features given for SAE {cfg.name}")
    for index, strength in request.features.items():
        if isinstance(index, bool) or not isinstance(index, int):
            raise SteeringError(f"feature {index!r} of SAE {cfg.name} is not an integer index")
        if not 0 <= index < cfg.d_sae:
            raise SteeringError(
                f"feature {index} does not exist in SAE {cfg.name}: indices run 0..{cfg.d_sae - 1}"
            )
        if not math.isfinite(float(strength)):
            raise SteeringError(f"strength {strength} for feature {index} must be a finite number")
    if request.mode == "clamp" and cfg.kind != "sae":
        raise SteeringError(
            f"clamping needs an SAE that reads and writes one site; {cfg.name} is a {cfg.kind}: "
            "use mode='add'"
        )
    site = _site(sae)
    try:
        validate_hook_names(model, [site])
    except HookNameError as exc:
        raise SteeringError(
            f"SAE {cfg.name} is not attached to this model ({model.cfg.model_name}): {exc}"
        ) from exc
    width = site_width(model, site)
    d = cfg.d_out if cfg.kind != "sae" else cfg.d_in
    if width != d:
        raise SteeringError(
            f"SAE {cfg.name} writes width {d} but {model.cfg.model_name}'s {site} has width "
            f"{width}: this SAE was made for another model"
        )


def _site(sae: JumpReLUSAE) -> str:
    """Where the SAE's decoder writes: its own site, or a transcoder's output site."""
    if sae.cfg.kind == "sae":
        return sae.cfg.hook_name
    return sae.cfg.hook_name_out or sae.cfg.hook_name


def _relative(store, sae: JumpReLUSAE, strengths: dict[int, float]) -> dict[int, float]:
    check_relative_store(store, sae)  # a name is not an identity: same width and hook too
    return scale_by_max(strengths, store.max_activations(sae.cfg.name))


def _hooks(model, sae: JumpReLUSAE, strengths: dict[int, float], mode: str, from_pos: int):
    ref = next(
        (p for p in model.parameters() if p.is_floating_point()), torch.empty(0)
    )  # activations share the model's dtype and device
    dtype, device = ref.dtype, ref.device
    index = torch.tensor(sorted(strengths), device=device)
    values = torch.tensor([strengths[i] for i in sorted(strengths)], dtype=dtype, device=device)
    W_dec = sae.W_dec.detach()[index.to(sae.W_dec.device)].to(device, dtype)  # [k, d_out]

    def start() -> int:
        return max(0, from_pos - _POSITION_OFFSET.get())

    if mode == "add":
        delta = values @ W_dec  # [d_out]

        def edit(a: torch.Tensor) -> torch.Tensor:  # a: [batch, pos, d]
            s = start()
            if s == 0:
                return a + delta
            out = a.clone()
            out[:, s:] += delta
            return out

    else:
        index_sae = index.to(sae.device)
        values_sae = values.to(sae.device, sae.dtype)
        W_dec_sae = sae.W_dec.detach()[index_sae]  # [k, d_out]

        def edit(a: torch.Tensor) -> torch.Tensor:
            s = start()
            tail = a[:, s:]
            # the full encode, so "clamp to the value sae.encode reports" changes nothing at all
            current = sae.encode(tail)[..., index_sae]  # [batch, pos, k]
            change = ((values_sae - current) @ W_dec_sae).to(a.device, a.dtype)
            if s == 0:
                return a + change
            out = a.clone()
            out[:, s:] += change
            return out

    return splice_hooks(model, _site(sae), edit)


@torch.inference_mode()
def generate(
    model: TransformerBridge,
    prompt: str,
    max_new_tokens: int = 40,
    temperature: float = 1.0,
    seed: int | None = None,
    *,
    top_k: int | None = None,
    stop_at_eos: bool = True,
) -> str:
    """Continue `prompt` with the model (and any active `steering`), using a KV cache.

    Args:
        model: a model from `scope.load_model` (it has a tokenizer).
        prompt: the text to continue; BOS is prepended.
        max_new_tokens: how many tokens to sample at most.
        temperature: softmax temperature; 0 picks the most likely token (greedy).
        seed: seeds the sampler, so the same seed gives the same text.
        top_k: sample only among the k most likely tokens.
        stop_at_eos: stop early at the tokenizer's end-of-sequence token.

    Returns:
        The continuation only (the prompt is not repeated).
    """
    if max_new_tokens < 0:
        raise SteeringError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not math.isfinite(temperature) or temperature < 0:
        raise SteeringError(f"temperature={temperature} must be a finite number >= 0")
    tokens = model.to_tokens(prompt, prepend_bos=True)  # [1, pos]
    device = tokens.device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    eos = model.tokenizer.eos_token_id if stop_at_eos else None
    # The Hugging Face model under the bridge, called as transformers' generate calls it (its
    # own KV cache, logits of the last position only, SDPA attention where it has it); the
    # bridge's hook points sit inside it, so active steering hooks fire on every step.
    hf = model.original_model
    cache_kw = _cache_keyword(hf)
    cache = _new_cache(hf)
    new: list[int] = []
    feed, offset = tokens, 0
    for _ in range(max_new_tokens):
        token = _POSITION_OFFSET.set(offset)
        try:
            with hf_fast_path(model):
                out = hf(input_ids=feed, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
        finally:
            _POSITION_OFFSET.reset(token)
        logits = out.logits[0, -1].float()  # [d_vocab]
        offset += feed.shape[1]
        next_id = _sample(logits, temperature, top_k, generator)
        if eos is not None and next_id == eos:
            break
        new.append(next_id)
        feed = torch.tensor([[next_id]], device=device)
    return model.tokenizer.decode(new)


def _cache_keyword(hf_model) -> str:
    """transformers >= 5.2x names the KV cache argument `cache`; earlier 5.x `past_key_values`."""
    params = inspect.signature(hf_model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(hf_model):
    from transformers import DynamicCache

    return DynamicCache(config=hf_model.config)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
