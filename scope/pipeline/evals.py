"""SAE evaluation: L0, fraction of variance unexplained, and delta LM loss.

Definitions follow the Gemma Scope reports (docs/saes.md, "Metrics"). Statistics are sums over every
evaluated token accumulated in float64, and ratios are taken once at the end, so the result does
not depend on how the tokens were batched. BOS, EOS and padding positions are excluded
everywhere and keep their original activation when the reconstruction is spliced in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from scope.errors import ScopeError, ShapeMismatchError
from scope.model.activations import splice_hooks
from scope.model.hooks import attached
from scope.pipeline.corpus import Corpus, special_token_ids, token_windows
from scope.saes.sae import JumpReLUSAE


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate` measured.

    Attributes:
        l0: mean number of nonzero features per evaluated token.
        fvu: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over evaluated tokens (y is the SAE's
            target: its input, or a transcoder's output site).
        delta_lm_loss: spliced cross-entropy minus clean cross-entropy (nats per token).
        clean_loss: next-token cross-entropy of the unmodified model.
        spliced_loss: the same with the SAE's reconstruction replacing the site's activation.
        dead_fraction: fraction of features that never fired on the evaluated tokens.
        n_tokens: evaluated (non-special) positions.
        n_sequences: sequences evaluated.
    """

    l0: float
    fvu: float
    delta_lm_loss: float
    clean_loss: float
    spliced_loss: float
    dead_fraction: float
    n_tokens: int
    n_sequences: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(
    model: Any,
    sae: JumpReLUSAE,
    tokens: torch.Tensor | Iterable[torch.Tensor] | Corpus | str | Sequence[str] | None,
    *,
    batch_size: int = 8,
    ctx: int = 128,
    max_tokens: int | None = 32768,
    progress: bool = True,
) -> EvalReport:
    """Evaluate `sae` on `model` over token sequences.

    L0 = mean over tokens of #{i : f_i(x) > 0}.
    FVU = sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean_t(y)||^2.
    delta LM loss = CE(next token | SAE output spliced in at its site) - CE(clean), where the
    splice keeps the original activation at BOS/EOS/pad positions and CE averages over
    targets that are not special tokens.

    Args:
        model: the model the SAE reads.
        sae: the SAE (or transcoder) to evaluate.
        tokens: `[batch, pos]` token ids with BOS first, an iterable of such batches, or a
            corpus (a `Corpus`, a path, "default", "hf:NAME" or a list of texts), which is cut
            into `ctx`-token windows up to `max_tokens` tokens.
        batch_size: sequences per forward pass (tensor and corpus inputs).
        ctx: window length for corpus inputs, BOS included.
        max_tokens: token budget for corpus inputs (None: the whole corpus).
        progress: show a progress bar.

    Returns:
        An `EvalReport`.
    """
    batches = _batches(model, tokens, batch_size, ctx, max_tokens)
    device = next(model.parameters()).device
    special = special_token_ids(model.tokenizer)
    stats = ReconstructionStats(sae.cfg.d_sae, sae.cfg.d_out)
    ce_clean = ce_spliced = 0.0
    n_targets = n_seq = 0
    bar = tqdm(batches, desc="evaluate", unit="batch", disable=not progress)
    for batch in bar:
        batch = batch.to(device)
        keep = ~torch.isin(batch, special.to(device))  # [batch, pos]
        got: dict[str, torch.Tensor] = {}
        with attached(model, _record(model, sae, got)):
            clean = model(batch)  # [batch, pos, d_vocab]
        targets, target_keep = batch[:, 1:], keep[:, 1:]
        ce_clean += _ce_sum(clean, targets, target_keep)
        del clean
        x = got["in"]
        y = got.get("out", x)
        _check_width(sae, x, y)
        f, y_hat = sae.run(x)  # [batch, pos, d_sae], [batch, pos, d_out]
        y_hat = y_hat.to(y.device, y.dtype)
        stats.add(y[keep], y_hat[keep], f[keep.to(f.device)])
        replacement = torch.where(keep[..., None], y_hat, y)
        with attached(model, _replace(model, sae, replacement)):
            spliced = model(batch)
        ce_spliced += _ce_sum(spliced, targets, target_keep)
        del spliced
        n_targets += int(target_keep.sum())
        n_seq += batch.shape[0]
    if stats.n_tokens == 0 or n_targets == 0:
        raise ScopeError("evaluate: no tokens to evaluate (empty input or only special tokens)")
    clean_loss, spliced_loss = ce_clean / n_targets, ce_spliced / n_targets
    rec = stats.result()
    return EvalReport(
        l0=rec["l0"],
        fvu=rec["fvu"],
        delta_lm_loss=spliced_loss - clean_loss,
        clean_loss=clean_loss,
        spliced_loss=spliced_loss,
        dead_fraction=rec["dead_fraction"],
        n_tokens=rec["n_tokens"],
        n_sequences=n_seq,
    )


class ReconstructionStats:
    """L0, FVU and dead fraction over many tokens, from float64 sums (batching-independent).

    FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over every token added (a ratio of sums,
    not a mean of per-batch ratios); a feature is dead when it fired on none of the tokens.
    """

    def __init__(self, d_sae: int, d_out: int) -> None:
        self.sq_err = self.sq_norm = self.l0 = 0.0
        self.y_sum = torch.zeros(d_out, dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.bool)
        self.n_tokens = 0

    def add(self, y: torch.Tensor, y_hat: torch.Tensor, f: torch.Tensor) -> None:
        """Add tokens: targets y [n, d_out], reconstructions y_hat [n, d_out], features f [n, d_sae]."""
        y64 = y.double()
        self.sq_err += float((y64 - y_hat.double()).pow(2).sum())
        self.sq_norm += float(y64.pow(2).sum())
        self.y_sum += y64.sum(0).cpu()
        nonzero = f != 0
        self.l0 += float(nonzero.sum())
        self.fired |= nonzero.any(0).cpu()
        self.n_tokens += len(y)

    def result(self) -> dict[str, float]:
        """{"l0", "fvu", "dead_fraction", "n_tokens"} (NaN figures when no token was added)."""
        n = self.n_tokens
        if n == 0:
            return {"l0": math.nan, "fvu": math.nan, "dead_fraction": math.nan, "n_tokens": 0}
        variance = self.sq_norm - float(self.y_sum.pow(2).sum()) / n
        return {"l0": self.l0 / n, "fvu": self.sq_err / variance if variance > 0 else math.nan,
                "dead_fraction": float((~self.fired).float().mean()), "n_tokens": n}


@torch.inference_mode()
def reconstruction_stats(sae: JumpReLUSAE, acts: torch.Tensor,
                         batch_size: int = 4096) -> dict[str, float]:
    """L0, FVU and dead fraction of a plain SAE on activations acts [n, d_in] (no model needed).

    Args:
        sae: the SAE (its input is its target).
        acts: raw activations of its site, special-token positions already removed.
        batch_size: rows encoded at a time.

    Returns:
        {"l0", "fvu", "dead_fraction", "n_tokens"}.
    """
    stats = ReconstructionStats(sae.cfg.d_sae, sae.cfg.d_out)
    for x in acts.split(batch_size):
        x = x.to(device=sae.device, dtype=sae.dtype)
        f, x_hat = sae.run(x)
        stats.add(x, x_hat, f)
    return stats.result()


def _batches(model, data, batch_size: int, ctx: int, max_tokens: int | None):
    """Token batches `[batch, pos]` from a tensor, an iterable of tensors, or a corpus."""
    if isinstance(data, torch.Tensor):
        return data.split(batch_size)
    texts = isinstance(data, Sequence) and not isinstance(data, str) and data and all(
        isinstance(t, str) for t in data
    )
    if data is None or isinstance(data, (str, os.PathLike, Corpus)) or texts:
        return token_windows(data, model.tokenizer, ctx=ctx, max_tokens=max_tokens,
                             batch_size=batch_size)
    return data


def _out_site(sae: JumpReLUSAE) -> str:
    return sae.cfg.hook_name_out or sae.cfg.hook_name


def _record(model, sae: JumpReLUSAE, got: dict) -> list:
    """Hooks that record the SAE's input ("in") and, for transcoders, target ("out") unchanged."""

    def keeper(key):
        def fn(a):
            got[key] = a
            return a

        return fn

    hooks = splice_hooks(model, sae.cfg.hook_name, keeper("in"))
    if _out_site(sae) != sae.cfg.hook_name:
        hooks += splice_hooks(model, _out_site(sae), keeper("out"))
    return hooks


def _replace(model, sae: JumpReLUSAE, replacement: torch.Tensor) -> list:
    """Hooks that put `replacement` (already masked to special positions) at the SAE's output."""
    return splice_hooks(model, _out_site(sae), lambda a: replacement.to(a.dtype))


def _check_width(sae: JumpReLUSAE, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[-1] != sae.cfg.d_in or y.shape[-1] != sae.cfg.d_out:
        raise ShapeMismatchError(
            f"SAE {sae.cfg.name} maps width {sae.cfg.d_in} -> {sae.cfg.d_out} but the model's "
            f"{sae.cfg.hook_name} has width {x.shape[-1]}: load the SAE made for this model"
        )


def _ce_sum(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> float:
    """Sum of next-token cross-entropies over kept targets; logits [batch, pos, d_vocab].

    One sequence at a time: a [pos, d_vocab] log-softmax of Gemma's 262k vocabulary is already
    ~130 MB at 128 positions.
    """
    total = 0.0
    for row_logits, row_targets, row_keep in zip(logits[:, :-1], targets, keep, strict=True):
        nll = torch.nn.functional.cross_entropy(
            row_logits.float(), row_targets, reduction="none"
        )  # [pos-1]
        total += float(nll[row_keep].double().sum())
    return total
