"""SAE evaluation: L0, FVU, delta LM loss, CE loss score and KL to the clean model.

Definitions follow the Gemma Scope reports (docs/saes.md, "Metrics"). Statistics are sums over
every evaluated token accumulated in float64 (`scope.pipeline.eval_stats`), and ratios are taken
once at the end, so the result does not depend on how the tokens were batched. BOS, EOS and
padding positions are excluded everywhere and keep their original activation when the
reconstruction is spliced in. The report also carries the same losses under SAELens/SAEBench's
position convention, which `scope.pipeline.saebench` writes as SAEBench's core eval JSON.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from scope.base.shapes import Tokens
from scope.errors import ScopeError, ShapeMismatchError
from scope.model.activations import splice_hooks
from scope.model.hooks import attached
from scope.pipeline.corpus import Corpus, special_token_ids, token_windows
from scope.pipeline.eval_stats import LossStats, ReconstructionStats, reconstruction_stats
from scope.saes.sae import JumpReLUSAE

__all__ = ["EvalReport", "ReconstructionStats", "evaluate", "reconstruction_stats"]


@dataclass(frozen=True)
class EvalReport:
    """What `evaluate` measured (scope's position convention; see docs/saes.md, "Positions").

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
        ablated_loss: cross-entropy with the site's activation zeroed at every position.
        ce_loss_score: (ablated - spliced) / (ablated - clean): 1 is perfect, 0 no better than
            zero-ablation.
        kl_div: mean KL(clean || spliced) of the next-token distributions.
        kl_div_ablated: the same for zero-ablation.
        kl_div_score: (kl_div_ablated - kl_div) / kl_div_ablated.
        saebench: the same losses under SAELens/SAEBench's convention, the reconstruction
            figures SAEBench adds and per-feature firing counts (`scope.pipeline.saebench`
            writes them); left out of `as_dict()` and comparisons.
    """

    l0: float
    fvu: float
    delta_lm_loss: float
    clean_loss: float
    spliced_loss: float
    dead_fraction: float
    n_tokens: int
    n_sequences: int
    ablated_loss: float = math.nan
    ce_loss_score: float = math.nan
    kl_div: float = math.nan
    kl_div_ablated: float = math.nan
    kl_div_score: float = math.nan
    saebench: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def as_dict(self) -> dict:
        """Every scalar figure by name (not `saebench`)."""
        out = asdict(self)
        out.pop("saebench")
        return out


@torch.inference_mode()
def evaluate(
    model: Any,
    sae: JumpReLUSAE,
    tokens: Tokens | Iterable[Tokens] | Corpus | str | Sequence[str] | None,
    *,
    batch_size: int = 8,
    ctx: int = 128,
    max_tokens: int | None = 32768,
    progress: bool = True,
    ablation: bool = True,
) -> EvalReport:
    """Evaluate `sae` on `model` over token sequences.

    L0 = mean over tokens of #{i : f_i(x) > 0}.
    FVU = sum_t ||y_t - y_hat_t||^2 / sum_t ||y_t - mean_t(y)||^2.
    delta LM loss = CE(next token | SAE output spliced in at its site) - CE(clean), where the
    splice keeps the original activation at BOS/EOS/pad positions and CE averages over
    targets that are not special tokens. CE loss score and KL compare with zero-ablating the
    site (SAELens's definition).

    Args:
        model: the model the SAE reads (on one device or spread with `device_map`).
        sae: the SAE (or transcoder) to evaluate.
        tokens: `[batch, pos]` token ids with BOS first, an iterable of such batches, or a
            corpus (a `Corpus`, a path, "default", "hf:NAME" or a list of texts), which is cut
            into `ctx`-token windows up to `max_tokens` tokens.
        batch_size: sequences per forward pass (tensor and corpus inputs).
        ctx: window length for corpus inputs, BOS included.
        max_tokens: token budget for corpus inputs (None: the whole corpus).
        progress: show a progress bar (batches, with the total when it is known).
        ablation: also run the zero-ablated model (for the CE loss and KL scores; one more
            forward pass per batch).

    Returns:
        An `EvalReport`.
    """
    batches, total = _batches(model, tokens, batch_size, ctx, max_tokens)
    device = torch.device(model.cfg.device)  # where the embedding is (also under a device_map)
    special = special_token_ids(model.tokenizer).to(device)
    stats = ReconstructionStats(sae.cfg.d_sae, sae.cfg.d_out)
    losses = LossStats()
    prompts = torch.zeros(sae.cfg.d_sae, dtype=torch.int64)  # sequences each feature fired in
    n_seq = n_positions = 0
    for batch in tqdm(batches, desc="evaluate", unit="batch", total=total, disable=not progress):
        batch = batch.to(device)
        keep = ~torch.isin(batch, special)  # [batch, pos]
        got: dict[str, torch.Tensor] = {}
        with attached(model, _record(model, sae, got)):
            clean = model(batch)  # [batch, pos, d_vocab]
        x = got["in"]
        y = got.get("out", x)
        _check_width(sae, x, y)
        f, y_hat = sae.run(x)  # [batch, pos, d_sae], [batch, pos, d_out]
        y_hat = y_hat.to(y.device, y.dtype)
        kept = keep.to(f.device)
        stats.add(y[keep.to(y.device)], y_hat[keep.to(y.device)], f[kept])
        prompts += ((f != 0) & kept[..., None]).any(1).sum(0).cpu()
        replacement = torch.where(keep.to(y.device)[..., None], y_hat, y)
        with attached(model, _replace(model, sae, replacement)):
            spliced = model(batch)
        ablated = None
        if ablation:
            with attached(model, _replace(model, sae, torch.zeros_like(y))):
                ablated = model(batch)
        losses.add(batch, keep, clean, spliced, ablated)
        del clean, spliced, ablated
        n_seq += batch.shape[0]
        n_positions += batch.numel()
    if stats.n_tokens == 0 or losses.n_targets() == 0:
        raise ScopeError("evaluate: no tokens to evaluate (empty input or only special tokens)")
    rec, ours = stats.result(), losses.result("scope", ablation)
    bench = {**losses.result("saebench", ablation), **stats.saebench(),
             "n_ce_positions": losses.n_targets("saebench"), "n_positions": n_positions, "fires": stats.fires.clone(),
             "prompts": prompts, "batch_size": batch_size, "ctx": ctx}
    return EvalReport(
        l0=rec["l0"], fvu=rec["fvu"], delta_lm_loss=ours["spliced_loss"] - ours["clean_loss"],
        clean_loss=ours["clean_loss"], spliced_loss=ours["spliced_loss"],
        dead_fraction=rec["dead_fraction"], n_tokens=rec["n_tokens"], n_sequences=n_seq,
        ablated_loss=ours["ablated_loss"], ce_loss_score=ours["ce_loss_score"],
        kl_div=ours["kl_div"], kl_div_ablated=ours["kl_div_ablated"],
        kl_div_score=ours["kl_div_score"], saebench=bench,
    )


def _batches(model, data, batch_size: int, ctx: int, max_tokens: int | None):
    """(token batches `[batch, pos]`, how many when known) from a tensor, batches, or a corpus."""
    if isinstance(data, torch.Tensor):
        return data.split(batch_size), math.ceil(len(data) / batch_size)
    texts = isinstance(data, Sequence) and not isinstance(data, str) and data and all(
        isinstance(t, str) for t in data
    )
    if data is None or isinstance(data, (str, os.PathLike, Corpus)) or texts:
        total = math.ceil(math.ceil(max_tokens / ctx) / batch_size) if max_tokens else None
        return token_windows(data, model.tokenizer, ctx=ctx, max_tokens=max_tokens,
                             batch_size=batch_size), total
    return data, len(data) if hasattr(data, "__len__") else None


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
    return splice_hooks(model, _out_site(sae),
                        lambda a: replacement.to(device=a.device, dtype=a.dtype))


def _check_width(sae: JumpReLUSAE, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[-1] != sae.cfg.d_in or y.shape[-1] != sae.cfg.d_out:
        raise ShapeMismatchError(
            f"SAE {sae.cfg.name} maps width {sae.cfg.d_in} -> {sae.cfg.d_out} but the model's "
            f"{sae.cfg.hook_name} has width {x.shape[-1]}: load the SAE made for this model"
        )
