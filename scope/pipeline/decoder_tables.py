"""Per-feature tables that depend on the weights only: decoder logits and nearest neighbours.

Both are computed once per extraction run, blockwise with bounded memory, and written once into
the store's `tables/` folder (not into every checkpoint). `decoder_logits` needs the model (its
unembedding and final-norm gain); `decoder_neighbours` needs only the SAE's decoder. Neighbours
are exact on a GPU and on a CPU up to `EXACT_CPU_FLOP`; wider decoders on a CPU get the
approximate mode of `scope.pipeline.neighbours` (`neighbour_mode`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from scope.model.activations import norm_gain
from scope.pipeline.neighbours import COSINE_GRID, _order, _rank_row, approximate_neighbours
from scope.store import schema as S

log = logging.getLogger(__name__)

N_LOGITS = 10
N_NEIGHBOURS = 10
LOGIT_CHUNK = 4096  # features per block of the logit tables
VOCAB_CHUNK = 8192  # vocabulary columns per block
NEIGHBOUR_BLOCK = 2048  # tile side of the cosine matrix ([block, block] float32)
_SPARE = 6
#: above this many FLOP of exact pass on a CPU, "auto" neighbours are approximate (131,072 x
#: 2304 is 4e13 and stays exact; 262,144 x 2304 is 1.6e14; 1,048,576 x 2304 is 2.5e15)
EXACT_CPU_FLOP = 5e13  # candidates kept beyond the k best before ties are settled


def final_norm_gain(model: Any) -> torch.Tensor | None:
    """The multiplicative gain of the model's final norm (`[d_model]`), or None if it has none.

    Gemma's RMSNorm multiplies by `1 + w` and the bridged model keeps the raw `w`, so the gain
    comes from `scope.model.activations.norm_gain`, which knows each model's convention.
    """
    ln = getattr(model, "ln_final", None)
    if ln is None or not hasattr(ln, "w"):
        return None
    return norm_gain(model, "ln_final")


def _empty_logits(F: int, k: int) -> dict[str, np.ndarray]:
    return {S.LOGIT_POS_IDS: np.full((F, k), -1, np.int32),
            S.LOGIT_POS_VALS: np.zeros((F, k), np.float32),
            S.LOGIT_NEG_IDS: np.full((F, k), -1, np.int32),
            S.LOGIT_NEG_VALS: np.zeros((F, k), np.float32)}


@torch.no_grad()
def decoder_logits(model: Any, sae: Any, k: int = N_LOGITS, enabled: bool = True
                   ) -> dict[str, np.ndarray]:
    """The k most positive and most negative logit effects of each feature's decoder direction.

    `W_dec[f] @ (diag(gain) @ W_U)`, with `gain` the final norm's multiplicative gain and
    unprocessed weights (docs/store.md); attention SAEs (`attn.hook_z`) are first mapped to the
    residual stream through that layer's `W_O`. Sites whose output is not in the residual stream
    (or `enabled=False`) get empty tables (ids -1).

    Returns:
        `logit_pos_ids / logit_neg_ids [d_sae, k]` int32, `logit_pos_vals / _neg_vals` float32.
    """
    F = sae.cfg.d_sae
    out = _empty_logits(F, k)
    cfg = model.cfg
    W_dec = sae.W_dec.detach()
    hook = sae.cfg.hook_name_out or sae.cfg.hook_name
    if not enabled:
        return out
    if W_dec.shape[1] == cfg.d_model:
        to_resid = None
    elif hook.endswith("attn.hook_z") and W_dec.shape[1] == cfg.n_heads * cfg.d_head:
        to_resid = model.blocks[int(hook.split(".")[1])].attn.W_O  # [n_heads, d_head, d_model]
    else:
        log.info("%s: decoder is not in the residual stream; no logit tables", sae.cfg.name)
        return out
    W_U = model.W_U.detach()  # [d_model, d_vocab]
    n_vocab = min(W_U.shape[1], len(model.tokenizer))
    W_U = W_U[:, :n_vocab]
    gain = final_norm_gain(model)
    # Blocks of features x blocks of vocabulary keep each product compute-bound and ~100 MB.
    for start in range(0, F, LOGIT_CHUNK):
        d = W_dec[start : start + LOGIT_CHUNK].to(W_U.device, W_U.dtype)
        if to_resid is not None:
            d = torch.einsum("fhd,hdm->fm", d.view(len(d), cfg.n_heads, cfg.d_head), to_resid)
        if gain is not None:
            d = d * gain.to(d.device, d.dtype)
        cands = []
        for v0 in range(0, n_vocab, VOCAB_CHUNK):
            logits = (d @ W_U[:, v0 : v0 + VOCAB_CHUNK]).float()  # [chunk, vocab chunk]
            kk = min(k, logits.shape[1])
            for largest in (True, False):
                t = logits.topk(kk, dim=1, largest=largest)
                cands.append((largest, t.values, t.indices + v0))
        sl = slice(start, start + len(d))
        for largest, (ids_key, vals_key) in ((True, (S.LOGIT_POS_IDS, S.LOGIT_POS_VALS)),
                                             (False, (S.LOGIT_NEG_IDS, S.LOGIT_NEG_VALS))):
            vals = torch.cat([v for lg, v, _ in cands if lg == largest], dim=1)
            ids = torch.cat([i for lg, _, i in cands if lg == largest], dim=1)
            t = vals.topk(min(k, vals.shape[1]), dim=1, largest=largest)
            out[vals_key][sl, : t.values.shape[1]] = t.values.cpu().numpy()
            out[ids_key][sl, : t.values.shape[1]] = ids.gather(1, t.indices).cpu().numpy()
    return out


def neighbour_device(W_dec: torch.Tensor, device: str | torch.device | None = None
                     ) -> torch.device:
    """Where the exact pass runs: `device` if given, else a CUDA device when one is present
    with room for the unit decoder twice over (float32), else the decoder's own device."""
    if device is not None:
        return torch.device(device)
    if W_dec.device.type == "cpu" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if free > 2 * W_dec.numel() * 4 + 3 * NEIGHBOUR_BLOCK**2 * 4:
            return torch.device("cuda")
    return W_dec.device


def exact_flop(d_sae: int, d_in: int) -> float:
    """FLOP of the exact pass (each tile of the symmetric cosine matrix once)."""
    return float(d_sae) * (d_sae + 1) * d_in


@torch.no_grad()
def decoder_neighbours(W_dec: torch.Tensor, k: int = N_NEIGHBOURS, block: int = NEIGHBOUR_BLOCK,
                       *, device: str | torch.device | None = None,
                       progress: Callable[[int, int], None] | None = None
                       ) -> dict[str, np.ndarray]:
    """The k features with the most similar decoder directions, for every feature (exact).

    Cosine similarity of decoder rows (zero rows have cosine 0 with everything), rounded to
    multiples of 2**-20; best first, ties by lower index, the feature itself excluded. Computed
    one `block x block` tile of the (symmetric) cosine matrix at a time, each tile once, keeping
    a few candidates per row: memory is `d_sae * d_in + block**2 + d_sae * (k + 6)` floats.
    The time left is logged as tiles finish (`progress` gets `(tiles done, tiles)`).

    Args:
        W_dec: `[d_sae, d_in]` decoder.
        device: where to compute (default `neighbour_device`: a GPU when one is present).

    Returns:
        `neighbour_index [d_sae, k]` int32 (-1 where d_sae <= k) and `neighbour_cosine
        [d_sae, k]` float32.
    """
    dev = neighbour_device(W_dec, device)
    Wn = W_dec.detach().to(dev, torch.float32, copy=True)  # one float32 copy, normalised in place
    F = Wn.shape[0]
    Wn /= Wn.norm(dim=1, keepdim=True).clamp_min(1e-30)
    W = Wn
    index = np.full((F, k), -1, np.int32)
    cosine = np.zeros((F, k), np.float32)
    kk = min(k, F - 1)
    if kk <= 0:
        return {S.NEIGHBOUR_INDEX: index, S.NEIGHBOUR_COSINE: cosine}
    extra = min(F - 1, kk + _SPARE)  # candidates per row: the top kk plus a margin for ties
    cand_val = torch.full((F, extra), -torch.inf, device=W.device)
    cand_idx = torch.zeros((F, extra), dtype=torch.long, device=W.device)

    def offer(rows: slice, vals: torch.Tensor, cols: torch.Tensor) -> None:
        """Keep each row's `extra` largest raw cosines among its candidates and `vals`."""
        n = min(extra, vals.shape[1])
        top = vals.topk(n, dim=1)
        both_v = torch.cat([cand_val[rows], top.values], dim=1)
        both_i = torch.cat([cand_idx[rows], cols[top.indices]], dim=1)
        best = both_v.topk(extra, dim=1)
        cand_val[rows], cand_idx[rows] = best.values, both_i.gather(1, best.indices)

    # The cosine matrix is symmetric: each block pair is computed once and offered both ways.
    starts = list(range(0, F, block))
    tiles, done, t0 = len(starts) * (len(starts) + 1) // 2, 0, time.perf_counter()
    log.info("exact neighbours of %d features on %s: %d tiles, %.2g FLOP", F, dev, tiles,
             exact_flop(F, Wn.shape[1]))
    for a in starts:
        ra = slice(a, min(a + block, F))
        for b in starts[starts.index(a):]:
            rb = slice(b, min(b + block, F))
            sims = Wn[ra] @ Wn[rb].T  # [block, block]
            if a == b:
                sims.fill_diagonal_(-torch.inf)
            offer(ra, sims, torch.arange(rb.start, rb.stop, device=W.device))
            if a != b:
                offer(rb, sims.T, torch.arange(ra.start, ra.stop, device=W.device))
            done += 1
            if progress is not None:
                progress(done, tiles)
        if tiles > 1:
            spent = time.perf_counter() - t0
            log.info("exact neighbours: %d/%d tiles, %.0f s, ~%.0f s to go", done, tiles,
                     spent, spent / done * (tiles - done))
    vals = torch.round(cand_val * COSINE_GRID) / COSINE_GRID
    idx, vals = _order(cand_idx, vals)
    idx, vals = idx[:, :kk].clone(), vals[:, :kk].clone()
    # The candidates hold every entry that can round to the kk-th value unless the last
    # candidate is within one grid step of it (many equal directions): redo those rows exactly.
    if extra < F - 1:
        unsure = cand_val.min(dim=1).values >= vals[:, -1] - 1.0 / COSINE_GRID
        for r in unsure.nonzero().squeeze(1).tolist():
            row = Wn[r] @ Wn.T
            row[r] = -torch.inf
            idx[r], vals[r] = _rank_row(row, kk)
    index[:, :kk] = idx.cpu().numpy()
    cosine[:, :kk] = vals.cpu().numpy()
    return {S.NEIGHBOUR_INDEX: index, S.NEIGHBOUR_COSINE: cosine}


def neighbour_mode(W_dec: torch.Tensor, mode: str = "auto") -> str:
    """"exact" or "approximate": `mode`, or for "auto" exact on a GPU and wherever the exact
    pass is at most `EXACT_CPU_FLOP` (65,536 x 2304 is 9.9e12), approximate beyond."""
    if mode not in ("auto", "exact", "approximate"):
        raise ValueError(f"neighbours={mode!r}: use 'auto', 'exact' or 'approximate'")
    if mode != "auto":
        return mode
    F, d = W_dec.shape
    return auto_mode(F, d, neighbour_device(W_dec).type == "cuda")


def auto_mode(d_sae: int, d_in: int, on_gpu: bool) -> str:
    """`neighbour_mode`'s "auto" rule from the shapes (what the planner asks)."""
    return "exact" if on_gpu or exact_flop(d_sae, d_in) <= EXACT_CPU_FLOP else "approximate"


def decoder_tables(model: Any, sae: Any, logits: bool = True, *, neighbours: str = "auto"
                   ) -> dict[str, np.ndarray]:
    """All once-per-run tables of one SAE: logits (unless `logits=False`) and neighbours
    (`neighbours`: "exact", "approximate" or "auto", see `neighbour_mode`)."""
    mode = neighbour_mode(sae.W_dec, neighbours)
    if mode == "approximate":
        F, d = sae.W_dec.shape
        log.warning("decoder neighbours of %d features on the CPU: approximate (an exact pass "
                    "is %.1e FLOP); see docs/store.md for the recall measured", F,
                    exact_flop(F, d))
        table = approximate_neighbours(sae.W_dec, N_NEIGHBOURS)
    else:
        table = decoder_neighbours(sae.W_dec)
    return {**decoder_logits(model, sae, enabled=logits), **table}
