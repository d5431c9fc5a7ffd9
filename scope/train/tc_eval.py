"""Held-out figures of per-layer transcoders: FVU, L0, and the CE loss score of each splice.

For every layer L, on held-out windows: FVU and L0 of the transcoder's prediction of
`hook_out` from `hook_in` (ratio of sums over tokens, `scope.pipeline.evals.ReconstructionStats`);
and three next-token cross-entropies: clean, with layer L's MLP output replaced by the
transcoder's prediction (`CE_spliced`), and with it zeroed (`CE_zero`, the ablation baseline).

    CE loss score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)

1 = the transcoder is as good as the MLP, 0 = no better than deleting it. The splice and the
ablation act on the same positions: every position but special tokens and outliers
(`scope.saes.outliers`), where the model keeps its own MLP output; CE averages over targets that
are not special tokens. One clean forward pass per batch captures every layer's input/output.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch

from scope.model.activations import capture, splice_hooks
from scope.model.hooks import attached
from scope.pipeline.corpus import special_token_ids
from scope.pipeline.eval_stats import ReconstructionStats, ce_sum
from scope.train.segments import kept_positions

log = logging.getLogger(__name__)

ABLATION = "zero"
"""The CE loss score's baseline: the MLP output set to 0 at every evaluated position."""


@torch.inference_mode()
def evaluate_transcoders(model: Any, transcoders: list[Any], windows: torch.Tensor, *,
                         ce_windows: int, batch_size: int = 4, prefix: int = 1
                         ) -> list[dict[str, float]]:
    """Per-layer held-out report of transcoders that each replace one MLP.

    Args:
        model: the model.
        transcoders: `JumpReLUSAE` transcoders (`cfg.hook_name` -> `cfg.hook_name_out`).
        windows: [n, pos] held-out token windows, BOS first; FVU/L0 use all of them.
        ce_windows: the first this many windows also get the clean, spliced and zero-ablated
            cross-entropies (1 + 2 * len(transcoders) forward passes per batch; 0 = skip).
        batch_size: windows per forward pass.
        prefix: outlier prefix (positions never spliced; `scope.saes.outliers`).

    Returns:
        One dict per transcoder, in the given order: layer sites, fvu, l0, dead_fraction,
        n_tokens, and when `ce_windows` > 0: ce_clean, ce_spliced, ce_zero_ablation,
        ce_loss_score, delta_lm_loss, ce_tokens.
    """
    stats = [ReconstructionStats(tc.cfg.d_sae, tc.cfg.d_out) for tc in transcoders]
    ce_spliced = [0.0] * len(transcoders)
    ce_zero = [0.0] * len(transcoders)
    ce_clean = 0.0
    n_targets = 0
    t0 = time.time()
    special = special_token_ids(model.tokenizer)
    sites = [name for tc in transcoders for name in (tc.cfg.hook_name, tc.cfg.hook_name_out)]
    ce_windows = min(ce_windows, len(windows))
    spans = [(a, min(a + batch_size, ce_windows)) for a in range(0, ce_windows, batch_size)]
    spans += [(a, min(a + batch_size, len(windows)))
              for a in range(ce_windows, len(windows), batch_size)]
    for start, stop in spans:
        batch = windows[start:stop]
        with_ce = start < ce_windows
        keep = kept_positions(model, batch, prefix)  # [batch, pos]
        batch = batch.to(model.cfg.device)
        if with_ce:  # the clean pass gives the logits and every site at once
            got: dict[str, torch.Tensor] = {}
            hooks = [h for name in sites for h in splice_hooks(model, name, _keeper(got, name))]
            with attached(model, hooks):
                logits = model(batch)
        else:
            got, logits = capture(model, batch, sites), None
        keep = keep.to(batch.device)
        preds = []
        for i, tc in enumerate(transcoders):
            x, y = got[tc.cfg.hook_name], got[tc.cfg.hook_name_out]
            f, y_hat = tc.run(x)
            y_hat = y_hat.to(y.dtype)
            stats[i].add(y[keep], y_hat[keep], f[keep])
            preds.append(torch.where(keep[..., None], y_hat, y))
        if logits is None:
            continue
        targets = batch[:, 1:]
        target_keep = ~torch.isin(targets, special.to(batch.device))
        ce_clean += ce_sum(logits, targets, target_keep)
        del logits
        n_targets += int(target_keep.sum())
        for i, tc in enumerate(transcoders):
            y = got[tc.cfg.hook_name_out]
            zeroed = torch.where(keep[..., None], torch.zeros_like(y), y)
            for value, sums in ((preds[i], ce_spliced), (zeroed, ce_zero)):
                with attached(model, splice_hooks(model, tc.cfg.hook_name_out, _put(value))):
                    sums[i] += ce_sum(model(batch), targets, target_keep)
        log.info("evaluated %d/%d CE windows (%.0f s)", stop, ce_windows,
                 time.time() - t0)
    out = []
    for i, tc in enumerate(transcoders):
        rec: dict[str, Any] = {"hook_name": tc.cfg.hook_name, "hook_name_out": tc.cfg.hook_name_out,
                               **stats[i].result()}
        if n_targets:
            clean, spliced, zero = (ce_clean / n_targets, ce_spliced[i] / n_targets,
                                    ce_zero[i] / n_targets)
            rec.update({"ce_clean": clean, "ce_spliced": spliced, "ce_zero_ablation": zero,
                        "ce_loss_score": (zero - spliced) / (zero - clean) if zero != clean
                        else float("nan"),
                        "delta_lm_loss": spliced - clean, "ce_tokens": n_targets})
        out.append(rec)
    return out


#: the verdict's rule: splices that beat deleting the MLP on most layers, by a clear margin
MIN_MEDIAN_CE_LOSS_SCORE = 0.5
MAX_NONPOSITIVE_LAYERS_SHARE = 0.125


def quality_verdict(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`report.json`'s "quality": whether a set of per-layer transcoders is fit to attribute with.

    Usable when the median CE loss score is at least `MIN_MEDIAN_CE_LOSS_SCORE` and at most
    `MAX_NONPOSITIVE_LAYERS_SHARE` of the layers splice no better than zeroing their MLP (score
    <= 0). Whether attributions on them agree with removal is a separate, measured check
    (`attribute`'s ablation check; docs/attribution.md).
    """
    scores = {int(k): rec.get("ce_loss_score") for k, rec in layers.items()}
    if not scores or any(v is None for v in scores.values()):
        return {"usable_for_attribution": None, "rule": "no CE loss score was measured"}
    bad = sorted(k for k, v in scores.items() if not v > 0)
    median = statistics.median(scores.values())
    usable = median >= MIN_MEDIAN_CE_LOSS_SCORE and len(bad) <= (
        MAX_NONPOSITIVE_LAYERS_SHARE * len(scores))
    return {"usable_for_attribution": bool(usable), "median_ce_loss_score": median,
            "layers_with_nonpositive_ce_loss_score": bad,
            "ce_eval_targets": int(next(iter(layers.values())).get("ce_tokens", 0)),
            "rule": f"median CE loss score >= {MIN_MEDIAN_CE_LOSS_SCORE} and at most "
                    f"{MAX_NONPOSITIVE_LAYERS_SHARE:.1%} of layers <= 0"}


def _keeper(got: dict[str, torch.Tensor], name: str):
    def fn(a: torch.Tensor) -> None:
        got[name] = a.detach().clone()

    return fn


def _put(value: torch.Tensor):
    return lambda a: value.to(a.dtype)
