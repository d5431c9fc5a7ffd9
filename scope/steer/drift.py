"""How far a steered text drifts from what the model would say: its loss under the unsteered
model, and a strength sweep that measures it for many features at once.

`continuation_losses` scores texts (nats per token, batched forward passes, no steering
active); `sweep` generates a prompt's continuation for each feature at each strength (a multiple
of the feature's max activation) and scores every text. The dashboard's drift column and
`benchmarks/bench_steer_sweep.py` (whose run chose `defaults.STRENGTH_X_MAX`) use them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from scope.steer import defaults as sd

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

    from scope.saes.sae import JumpReLUSAE


@torch.inference_mode()
def continuation_losses(model: TransformerBridge, prompt: str, continuations: Sequence[str],
                        batch_size: int = 8) -> list[float]:
    """Mean cross-entropy (nats/token) of each continuation after `prompt` under `model` as it
    is, `batch_size` texts per forward pass (call it with no steering active: this is how far a
    steered text drifts from what the model itself would say). An empty continuation scores 0.
    The batches bound memory: logits are `[batch, pos, d_vocab]`, 262k wide for Gemma 3.
    """
    n_prompt = model.to_tokens(prompt).shape[1]
    rows = [model.to_tokens(prompt + c)[0] for c in continuations]  # BOS prepended
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r) for r in chunk)
        batch = torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=int(r[-1]))
                             for r in chunk])  # right padding: causal, earlier positions unchanged
        logits = model(batch, return_type="logits")
        for b, r in enumerate(chunk):
            if len(r) <= n_prompt:
                out.append(0.0)
                continue
            lg = logits[b, n_prompt - 1: len(r) - 1].float()  # predicts r[n_prompt:]
            nll = torch.logsumexp(lg, -1) - lg.gather(1, r[n_prompt:, None].to(lg.device))[:, 0]
            out.append(float(nll.mean()))
    return out


@dataclass(frozen=True)
class SweepRow:
    """One feature at one strength: the steered text and its drift."""

    feature: int
    multiple: float
    text: str
    drift: float


@dataclass(frozen=True)
class Sweep:
    """A strength sweep: the unsteered text and its loss, and one row per (feature, multiple)."""

    prompt: str
    default: str
    base: float
    rows: list[SweepRow]

    def within(self, margin: float = sd.DRIFT_MARGIN) -> dict[float, float]:
        """Per multiple, the share of features whose drift stays within `margin` nats of the
        unsteered text's loss."""
        out: dict[float, list[bool]] = {}
        for r in self.rows:
            out.setdefault(r.multiple, []).append(r.drift <= self.base + margin)
        return {m: sum(v) / len(v) for m, v in out.items()}

    def fluent(self, margin: float = sd.DRIFT_MARGIN,
               min_distinct: float = sd.MIN_DISTINCT) -> dict[float, float]:
        """Per multiple, the share of features whose text is fluent: within `margin` nats of
        the unsteered loss and not a loop (at least `min_distinct` of its words distinct; a
        repeated phrase scores a low loss, so drift alone misses it)."""
        out: dict[float, list[bool]] = {}
        for r in self.rows:
            ok = r.drift <= self.base + margin and distinct_share(r.text) >= min_distinct
            out.setdefault(r.multiple, []).append(ok)
        return {m: sum(v) / len(v) for m, v in out.items()}

    def changed(self) -> dict[float, float]:
        """Per multiple, the share of features whose steered text differs from the default."""
        out: dict[float, list[bool]] = {}
        for r in self.rows:
            out.setdefault(r.multiple, []).append(r.text != self.default)
        return {m: sum(v) / len(v) for m, v in out.items()}


def distinct_share(text: str) -> float:
    """Distinct words over words (1 for an empty text): low for a loop like 'I was not. I was
    not.'"""
    words = text.split()
    return len(set(words)) / len(words) if words else 1.0


def sweep(model: TransformerBridge, sae: JumpReLUSAE, max_activations: Sequence[float],
          features: Sequence[int], multiples: Sequence[float], prompt: str = sd.PROMPT, *,
          max_new_tokens: int = sd.MAX_NEW_TOKENS, batch_size: int = 48) -> Sweep:
    """Steer each feature alone at each multiple of its max activation; score every text.

    The texts are generated greedily in batches (one row per feature and multiple, each row
    with its own added direction), which is what makes ~20 features x 8 multiples affordable
    on a CPU; a row equals `generate` under `steering(model, sae, {f: m * max[f]})` up to
    float rounding of the batched matmuls.

    Args:
        model, sae: the model and the SAE whose features are steered ("add" mode).
        max_activations: `[d_sae]` each feature's max activation (a store's `max_activations`).
        features: the features to steer, one at a time.
        multiples: strengths as multiples of each feature's max activation.
        prompt: the text to continue.
        max_new_tokens: tokens generated per text.
        batch_size: rows per batched generation.

    Returns:
        A `Sweep`.
    """
    from scope.steer.intervene import _site, generate

    default = generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.0)
    pairs = [(int(f), float(m)) for f in features for m in multiples]
    W_dec = sae.W_dec.detach().float()
    texts: list[str] = []
    log.info("sweep: %d texts of %d tokens in batches of %d", len(pairs), max_new_tokens,
             batch_size)
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        deltas = torch.stack([sd.scale_by_max({f: m}, max_activations)[f] * W_dec[f]
                              for f, m in chunk])  # [rows, d_out]
        texts += greedy_rows(model, prompt, _site(sae), deltas, max_new_tokens)
        log.info("sweep: %d/%d texts generated", len(texts), len(pairs))
    losses = continuation_losses(model, prompt, [default, *texts])
    rows = [SweepRow(f, m, t, d) for (f, m), t, d in zip(pairs, texts, losses[1:], strict=True)]
    return Sweep(prompt, default, losses[0], rows)


@torch.inference_mode()
def greedy_rows(model: TransformerBridge, prompt: str, site: str,
                deltas: Float[Tensor, "rows d_out"],  # noqa: F722
                max_new_tokens: int) -> list[str]:
    """Greedy continuations of `prompt`, row r with `deltas[r]` added at `site` at every
    position (the batched twin of `generate` under one-feature "add" steering)."""
    from scope.model.activations import splice_hooks
    from scope.model.hooks import attached
    from scope.model.load import hf_fast_path
    from scope.steer.intervene import _cache_keyword, _new_cache

    rows = deltas.shape[0]
    tokens = model.to_tokens(prompt, prepend_bos=True).repeat(rows, 1)  # [rows, pos]
    ref = next(p for p in model.parameters() if p.is_floating_point())
    delta = deltas.to(ref.device, ref.dtype)[:, None, :]  # [rows, 1, d]
    hf = model.original_model
    kw = {_cache_keyword(hf): _new_cache(hf)}
    eos = model.tokenizer.eos_token_id
    new, feed = [], tokens
    with attached(model, splice_hooks(model, site, lambda a: a + delta)):
        for _ in range(max_new_tokens):
            with hf_fast_path(model):
                out = hf(input_ids=feed, use_cache=True, logits_to_keep=1, **kw)
            feed = out.logits[:, -1].float().argmax(-1, keepdim=True)  # [rows, 1]
            new.append(feed)
    ids = torch.cat(new, dim=1).tolist() if new else [[] for _ in range(rows)]
    texts = []
    for row in ids:
        if eos is not None and eos in row:
            row = row[:row.index(eos)]
        texts.append(model.tokenizer.decode(row))
    return texts
