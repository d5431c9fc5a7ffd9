"""Approximate decoder neighbours for wide SAEs on a CPU, and their recall against exact.

The exact pass (`decoder_tables.decoder_neighbours`, each pair once) costs `d_sae**2 * d_in`
FLOP: 2.5e15 at 1,048,576 x 2304, a minute or so on a GPU, days on two loaded CPU cores. The
approximate mode here is an inverted-file search: unit decoder rows (optionally projected to
`dim` random directions) are clustered (spherical k-means on a sample, `sqrt(probe * d_sae)`
cells), each feature is compared with the features of the `probe` cells nearest it, and its
best `candidates` are re-ranked with exact full-dimension cosines. Its cost is about
`2 * d_sae * d_in * (cells + probe * d_sae / cells)` FLOP plus the clustering's (~3e13 at 1M
x 2304 against 2.5e15 exact); what it misses is measured by `recall` (exact neighbours of a sample of features).
Memory: a float32 unit copy of the decoder (`d_sae * d_in * 4` bytes, 9.7 GB at 1M x 2304, or
`d_sae * dim * 4` with a projection) beside the decoder itself, plus `d_sae * candidates * 12`.
Output, rounding and tie rules are those of the exact mode.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from scope.store import schema as S

log = logging.getLogger(__name__)

PROBE = 8  # cells each feature is searched for in
CANDIDATES = 32  # candidates per feature re-ranked with exact cosines
KMEANS_ITERS = 6
SAMPLE_PER_CELL = 20  # rows of the k-means sample per cell
ROW_CHUNK = 16384  # decoder rows converted to float32 at a time
RERANK_CHUNK = 512  # features re-ranked at a time ([chunk, candidates, d_in] float32)
#: cosines are rounded to multiples of 2**-20 before ranking, so that equal directions tie
#: exactly whatever order a matrix product summed in (ties then go to the lower index)
COSINE_GRID = 2.0**20


def approximate_cost(d_sae: int, d_in: int, probe: int = PROBE, candidates: int = CANDIDATES
                     ) -> tuple[float, float]:
    """`(FLOP, scanned elements)` of `approximate_neighbours` on full rows: the k-means on a
    sample, finding each feature's cells, scanning them (`probe * d_sae**2 / cells` cosines,
    each also masked and ranked) and re-ranking the candidates (the planner's cost model)."""
    cells = max(1, min(d_sae, round(math.sqrt(probe * d_sae))))
    scanned = probe * d_sae * d_sae / cells
    flop = 2.0 * d_in * (SAMPLE_PER_CELL * cells * cells * KMEANS_ITERS + d_sae * cells
                         + scanned + d_sae * candidates)
    return flop, scanned


def _order(idx: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row's picks by (value desc, index asc)."""
    idx, perm = idx.sort(dim=1)
    vals = vals.gather(1, perm)
    order = vals.sort(dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)


def _rank_row(row: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top k of one row of rounded cosines, ties by lower index (the slow path)."""
    row = torch.round(row * COSINE_GRID) / COSINE_GRID
    thr = row.topk(k).values[-1]
    pick = torch.cat([(row > thr).nonzero().squeeze(1), (row == thr).nonzero().squeeze(1)])[:k]
    i, v = _order(pick[None], row[pick][None])
    return i[0], v[0]


class _Scratch:
    """Buffers reused between chunks: a fresh large tensor is page-faulted in on every
    allocation, which made gathers ~10x slower than the copy itself on this machine."""

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype=torch.float32) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype)
        return buf[:n].view(shape)

    def take(self, name: str, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """`src[idx]` (rows) into a reused buffer."""
        out = self.get(name, (len(idx), src.shape[1]), src.dtype)
        return torch.index_select(src, 0, idx, out=out)


def _unit_rows(W: torch.Tensor, rows: slice, scratch: _Scratch | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of `W` in float32 scaled to unit norm (zero rows stay zero), and their norms."""
    src = W[rows]
    x = (scratch or _Scratch()).get("rows", tuple(src.shape))
    x.copy_(src)
    norm = x.norm(dim=1, keepdim=True)
    x /= norm.clamp_min(1e-30)
    return x, norm[:, 0]


def _kmeans(Y: torch.Tensor, cells: int, gen: torch.Generator) -> torch.Tensor:
    """`[cells, dim]` unit centroids of a sample of the rows of `Y` (spherical k-means)."""
    F = Y.shape[0]
    sample = Y[torch.randperm(F, generator=gen)[: min(F, SAMPLE_PER_CELL * cells)]]
    sample = sample / sample.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cent = sample[torch.randperm(len(sample), generator=gen)[:cells]].clone()
    for _ in range(KMEANS_ITERS):
        owner = (sample @ cent.T).argmax(dim=1)
        new = torch.zeros_like(cent).index_add_(0, owner, sample)
        size = torch.bincount(owner, minlength=cells)
        empty = (size == 0).nonzero().squeeze(1)
        if len(empty):  # re-seed empty cells with random sample rows
            new[empty] = sample[torch.randint(len(sample), (len(empty),), generator=gen)]
        cent = new / new.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return cent


def _groups(key: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """Positions of `key` grouped by value (`order[at[c]:at[c + 1]]` hold value c)."""
    order = torch.argsort(key, stable=True)
    return order, torch.searchsorted(key[order], torch.arange(n + 1)).tolist()


@torch.no_grad()
def approximate_neighbours(W_dec: torch.Tensor, k: int = 10, *, dim: int | None = None,
                           cells: int | None = None, probe: int = PROBE,
                           candidates: int = CANDIDATES, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None
                           ) -> dict[str, np.ndarray]:
    """The k features of (probably) most similar decoder direction, for every feature.

    Args:
        W_dec: `[d_sae, d_in]` decoder (any float dtype; rows go to float32 a chunk at a time).
        k: neighbours per feature.
        dim: search in `dim` random projections (cheaper, lower recall: on 32,768 x 2304,
            0.87 with 512 directions and 16 cells probed against 0.95 on full rows with 8);
            default (None) and `dim >= d_in`: the full rows.
        cells: inverted-file cells (default `round(sqrt(probe * d_sae))`, which balances
            finding each feature's cells against scanning them).
        probe: cells each feature is searched for in, its nearest (all of them with
            `dim >= d_in`: the exact answer, at the exact cost).
        candidates: per feature, the best projected matches re-ranked exactly.
        seed: the projection's and the clustering's seed (same seed, same tables).
        progress: called with `(cells done, cells)`.

    Returns:
        `neighbour_index [d_sae, k]` int32 and `neighbour_cosine [d_sae, k]` float32, as
        `decoder_neighbours` returns them: exact cosines of the neighbours found, rounded to
        multiples of 2**-20, best first, ties by lower index.
    """
    for name, value in (("k", k), ("dim", 1 if dim is None else dim), ("probe", probe),
                        ("candidates", candidates), ("cells", 1 if cells is None else cells)):
        if int(value) < 1:
            raise ValueError(f"approximate_neighbours: {name}={value!r} must be at least 1")
    W = W_dec.detach()
    F, d = W.shape
    index = np.full((F, k), -1, np.int32)
    cosine = np.zeros((F, k), np.float32)
    kk = min(k, F - 1)
    if kk <= 0:
        return {S.NEIGHBOUR_INDEX: index, S.NEIGHBOUR_COSINE: cosine}
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    project = dim is not None and dim < d
    P = torch.randn(d, dim, generator=gen) / math.sqrt(dim) if project else None
    Y = torch.empty(F, dim if project else d)
    norms = torch.empty(F)
    scratch = _Scratch()
    for a in range(0, F, ROW_CHUNK):
        rows = slice(a, min(a + ROW_CHUNK, F))
        x, norms[rows] = _unit_rows(W, rows, scratch)
        Y[rows] = x @ P if project else x
    cells = max(1, min(F, cells or round(math.sqrt(probe * F))))
    cent = _kmeans(Y, cells, gen)
    probe = min(probe, cells)
    visit = torch.cat([(Y[a:a + ROW_CHUNK] @ cent.T).topk(probe, dim=1).indices
                       for a in range(0, F, ROW_CHUNK)])  # [F, probe] each feature's cells
    log.info("approximate neighbours of %d features: projected to %d and clustered into %d "
             "cells in %.0f s", F, Y.shape[1], cells, time.perf_counter() - start)
    members, m_at = _groups(visit[:, 0], cells)  # each feature sits in its nearest cell
    visitors, v_at = _groups(visit.reshape(-1), cells)  # ... and is searched for in `probe`
    visitors = visitors // probe
    R = min(max(candidates, kk), F - 1)
    best_v = torch.full((F, R), -torch.inf)
    best_i = torch.full((F, R), -1, dtype=torch.long)
    t0 = time.perf_counter()
    for c in range(cells):
        db, q = members[m_at[c]:m_at[c + 1]], visitors[v_at[c]:v_at[c + 1]]
        if len(db) and len(q):
            sims = scratch.get("sims", (len(q), len(db)))
            torch.matmul(scratch.take("q", Y, q), scratch.take("db", Y, db).T, out=sims)
            sims[q[:, None] == db[None, :]] = -torch.inf  # never the feature itself
            top = sims.topk(min(R, len(db)), dim=1)
            both_v = torch.cat([best_v[q], top.values], dim=1)
            both_i = torch.cat([best_i[q], db[top.indices]], dim=1)
            keep = both_v.topk(R, dim=1)
            best_v[q], best_i[q] = keep.values, both_i.gather(1, keep.indices)
        if progress is not None:
            progress(c + 1, cells)
        if c == 0 or (c + 1) % max(1, cells // 10) == 0:
            done = time.perf_counter() - t0
            log.info("approximate neighbours: cell %d/%d, %.0f s, ~%.0f s to go", c + 1,
                     cells, done, done / (c + 1) * (cells - c - 1))
    best_i[best_v == -torch.inf] = -1  # fewer candidates than R (tiny cells)
    t0 = time.perf_counter()
    for a in range(0, F, RERANK_CHUNK):
        rows = slice(a, min(a + RERANK_CHUNK, F))
        x, _ = _unit_rows(W, rows, scratch)
        cand = best_i[rows]
        found = cand >= 0
        cand = cand.clamp_min(0)
        y = scratch.take("cand", W, cand.reshape(-1))
        if y.dtype != torch.float32:
            y = scratch.get("cand32", tuple(y.shape)).copy_(y)
        y = y.view(len(x), R, d)
        y /= norms[cand][..., None].clamp_min(1e-30)  # unit rows, as the exact pass has them
        sims = torch.einsum("fd,frd->fr", x, y)
        vals = torch.round(sims * COSINE_GRID) / COSINE_GRID
        vals[~found] = -torch.inf
        cand = torch.where(found, cand, F + torch.arange(R).expand_as(cand))  # sort last
        idx, vals = _order(cand, vals)
        ok = vals[:, :kk] > -torch.inf
        index[rows, :kk] = torch.where(ok, idx[:, :kk], -1).numpy()
        cosine[rows, :kk] = torch.where(ok, vals[:, :kk], 0.0).numpy()
    log.info("approximate neighbours: %d candidates per feature re-ranked in %.0f s", R,
             time.perf_counter() - t0)
    dead = (norms == 0).nonzero().squeeze(1).tolist()
    for r in dead:  # cosine 0 with every feature: the lowest indices, as the exact mode has it
        others = [j for j in range(kk + 1) if j != r][:kk]
        index[r, :kk], cosine[r, :kk] = others, 0.0
    return {S.NEIGHBOUR_INDEX: index, S.NEIGHBOUR_COSINE: cosine}


class Recall(NamedTuple):
    """recall@k of approximate neighbours against exact ones, over `sample` features."""

    recall: float  # mean share of each sampled feature's exact k neighbours that were found
    worst: float  # the lowest share of one sampled feature
    sample: int
    seconds_exact: float  # time of the exact neighbours of the sample


@torch.no_grad()
def exact_rows(W_dec: torch.Tensor, rows: torch.Tensor, k: int = 10) -> np.ndarray:
    """`[len(rows), k]` exact neighbours (index) of some features against all of them, with
    the tables' rounding and ties by lower index."""
    W = W_dec.detach()
    F = W.shape[0]
    q, _ = _unit_rows(W, rows)
    sims = torch.empty(len(rows), F)
    scratch = _Scratch()
    for a in range(0, F, ROW_CHUNK):
        x, _ = _unit_rows(W, slice(a, min(a + ROW_CHUNK, F)), scratch)
        sims[:, a:a + len(x)] = q @ x.T
    sims[torch.arange(len(rows)), rows] = -torch.inf
    kk = min(k, F - 1)
    return np.stack([_rank_row(sims[i], kk)[0].numpy() for i in range(len(rows))])


def recall(W_dec: torch.Tensor, index: np.ndarray, sample: int = 500, seed: int = 0) -> Recall:
    """Recall@k of the neighbour table `index [d_sae, k]` against exact neighbours of `sample`
    random features (the exact pass over a sample costs `2 * sample * d_sae * d_in` FLOP)."""
    F, k = index.shape
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(F, generator=g)[: min(sample, F)].sort().values
    t0 = time.perf_counter()
    exact = exact_rows(W_dec, rows, k)
    seconds = time.perf_counter() - t0
    got = index[rows.numpy()]
    share = np.array([len(set(a.tolist()) & set(b.tolist())) / exact.shape[1]
                      for a, b in zip(got, exact, strict=True)])
    return Recall(float(share.mean()), float(share.min()), len(rows), seconds)
