"""Exact evaluation statistics from float64 sums (the result does not depend on batching).

`ReconstructionStats`: L0, FVU, dead fraction, and the reconstruction figures SAEBench's core
eval reports (L1, MSE, cosine, L2 norms and ratio, relative reconstruction bias, per-feature
firing counts). `LossStats`: next-token cross-entropy and KL to the clean model, under both
position conventions (docs/saes.md, "Positions"): scope's (a prediction counts when its *target*
is not a special token, so BOS -> first token counts) and SAELens/SAEBench's (when its *input*
position is not special; KL over every non-special input position).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scope.base.shapes import Logits, Tokens

#: the two position conventions LossStats keeps
CONVENTIONS = ("scope", "saebench")


class ReconstructionStats:
    """L0, FVU and dead fraction over many tokens, from float64 sums (batching-independent).

    FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over every token added (a ratio of sums,
    not a mean of per-batch ratios); a feature is dead when it fired on none of the tokens.
    """

    def __init__(self, d_sae: int, d_out: int) -> None:
        self.sq_err = self.sq_norm = self.l0 = self.l1 = 0.0
        self.cossim = self.norm_in = self.norm_out = self.ratio = 0.0
        self.hat_sq = self.dot = self.ev_legacy = 0.0
        self.y_sum = torch.zeros(d_out, dtype=torch.float64)
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.n_tokens = 0

    @property
    def fired(self) -> Tensor:
        """[d_sae] bool: the feature fired on at least one token."""
        return self.fires > 0

    def add(self, y: Tensor, y_hat: Tensor, f: Tensor) -> None:
        """Add tokens: targets y [n, d_out], reconstructions y_hat [n, d_out], features f [n, d_sae]."""
        if len(y) == 0:
            return
        y64, h64 = y.double(), y_hat.double()
        err = (y64 - h64).pow(2).sum(-1)  # [n]
        self.sq_err += float(err.sum())
        self.sq_norm += float(y64.pow(2).sum())
        self.y_sum += y64.sum(0).cpu()
        nonzero = f != 0
        self.l0 += float(nonzero.sum())
        self.l1 += float(f.double().abs().sum())
        self.fires += nonzero.sum(0).cpu()
        n_in, n_out = y64.norm(dim=-1), h64.norm(dim=-1)
        self.norm_in += float(n_in.sum())
        self.norm_out += float(n_out.sum())
        self.ratio += float((n_out / torch.where(n_in.abs() < 1e-4, 1.0, n_in)).sum())
        self.cossim += float(((y64 * h64).sum(-1) / (n_in * n_out)).nan_to_num(0.0).sum())
        self.hat_sq += float(n_out.pow(2).sum())
        self.dot += float((y64 * h64).sum())
        # SAELens's "legacy" explained variance uses this batch's mean (batching-dependent)
        var = (y64 - y64.mean(0)).pow(2).sum(-1)
        self.ev_legacy += float((1 - err / var).sum())
        self.n_tokens += len(y)

    def result(self) -> dict[str, float]:
        """{"l0", "fvu", "dead_fraction", "n_tokens"} (NaN figures when no token was added)."""
        n = self.n_tokens
        if n == 0:
            return {"l0": math.nan, "fvu": math.nan, "dead_fraction": math.nan, "n_tokens": 0}
        variance = self.sq_norm - float(self.y_sum.pow(2).sum()) / n
        return {"l0": self.l0 / n, "fvu": self.sq_err / variance if variance > 0 else math.nan,
                "dead_fraction": float((~self.fired).float().mean()), "n_tokens": n}

    def saebench(self) -> dict[str, float]:
        """Means per token of the figures SAEBench's core eval adds (see its field names)."""
        n = max(self.n_tokens, 1)
        return {"l1": self.l1 / n, "mse": self.sq_err / n, "cossim": self.cossim / n,
                "l2_norm_in": self.norm_in / n, "l2_norm_out": self.norm_out / n,
                "l2_ratio": self.ratio / n,
                "relative_reconstruction_bias": self.hat_sq / self.dot if self.dot else math.nan,
                "explained_variance_legacy": self.ev_legacy / n}


class LossStats:
    """Sums of next-token CE (clean, spliced, ablated) and KL(clean || other), both conventions."""

    def __init__(self) -> None:
        self.sums = {c: {"clean": 0.0, "spliced": 0.0, "ablated": 0.0, "kl_spliced": 0.0,
                         "kl_ablated": 0.0} for c in CONVENTIONS}
        self.ce_n = dict.fromkeys(CONVENTIONS, 0)
        self.kl_n = dict.fromkeys(CONVENTIONS, 0)

    def masks(self, keep: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """{convention: (CE mask [batch, pos-1], KL mask [batch, pos])} from keep [batch, pos]."""
        last = torch.zeros_like(keep[:, :1])
        return {"scope": (keep[:, 1:], torch.cat([keep[:, 1:], last], 1)),
                "saebench": (keep[:, :-1], keep)}

    def add(self, tokens: Tokens, keep: Tensor, clean: Logits, spliced: Logits,
            ablated: Logits | None) -> None:
        """Add one batch: `keep` [batch, pos] marks non-special positions."""
        others = {"spliced": spliced, "ablated": ablated}
        others = {k: v for k, v in others.items() if v is not None}
        nll, kl = _per_position(clean, others, tokens)  # {name: [batch, pos-1]}, {name: [batch, pos]}
        for c, (ce_mask, kl_mask) in self.masks(keep).items():
            for name, values in nll.items():
                self.sums[c][name] += float(values[ce_mask.to(values.device)].sum())
            for name, values in kl.items():
                self.sums[c][f"kl_{name}"] += float(values[kl_mask.to(values.device)].sum())
            self.ce_n[c] += int(ce_mask.sum())
            self.kl_n[c] += int(kl_mask.sum())

    def result(self, convention: str, ablation: bool) -> dict[str, float]:
        """Means under one convention: clean/spliced/ablated loss, KLs, and the two scores."""
        s, n, k = self.sums[convention], max(self.ce_n[convention], 1), max(self.kl_n[convention], 1)
        clean, spliced = s["clean"] / n, s["spliced"] / n
        out = {"clean_loss": clean, "spliced_loss": spliced, "kl_div": s["kl_spliced"] / k,
               "ablated_loss": math.nan, "kl_div_ablated": math.nan, "ce_loss_score": math.nan,
               "kl_div_score": math.nan}
        if ablation:
            ablated, kl_ab = s["ablated"] / n, s["kl_ablated"] / k
            out.update(ablated_loss=ablated, kl_div_ablated=kl_ab,
                       ce_loss_score=_score(ablated - spliced, ablated - clean),
                       kl_div_score=_score(kl_ab - out["kl_div"], kl_ab))
        return out

    def n_targets(self, convention: str = "scope") -> int:
        return self.ce_n[convention]


def _score(num: float, den: float) -> float:
    return num / den if den else math.nan


def _per_position(clean: Logits, others: dict[str, Logits], tokens: Tokens
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Next-token NLL [batch, pos-1] under the clean and each other run, and KL(clean || other)
    [batch, pos], one sequence at a time (a [pos, d_vocab] log-softmax of Gemma's 262k
    vocabulary is already ~130 MB at 128 positions); float32 log-softmax, float64 results."""
    nll: dict[str, list[Tensor]] = {k: [] for k in ("clean", *others)}
    kl: dict[str, list[Tensor]] = {k: [] for k in others}
    for i, row in enumerate(tokens):
        target = row[1:, None]
        logq = torch.log_softmax(clean[i].float(), -1)  # [pos, d_vocab]
        nll["clean"].append(-logq[:-1].gather(-1, target.to(logq.device))[:, 0].double())
        q = logq.exp()
        for name, logits in others.items():
            logp = torch.log_softmax(logits[i].float(), -1)
            nll[name].append(-logp[:-1].gather(-1, target.to(logp.device))[:, 0].double())
            kl[name].append((q * (logq - logp.to(logq.device))).sum(-1).double())
        del logq, q
    return ({k: torch.stack(v) for k, v in nll.items()}, {k: torch.stack(v) for k, v in kl.items()})


@torch.inference_mode()
def reconstruction_stats(sae, acts: Tensor, batch_size: int = 4096) -> dict[str, float]:
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


def ce_sum(logits: Logits, targets: Tensor, keep: Tensor) -> float:
    """Sum of next-token cross-entropies over the kept targets (`targets`, `keep`: [batch, pos-1];
    logits [batch, pos, d_vocab]), one sequence at a time as `_per_position` does, float64."""
    total = 0.0
    for row_logits, row_targets, row_keep in zip(logits[:, :-1], targets, keep, strict=True):
        nll = torch.nn.functional.cross_entropy(row_logits.float(), row_targets, reduction="none")
        total += float(nll[row_keep].double().sum())
    return total
