"""Per-feature statistics over a stream of sparse feature activations, as tensor operations.

`FeatureAccumulator` keeps, for every feature of one SAE: the firing count, the sum of nonzero
activations (in int64 fixed point, so sums are exact and associative), the max, a histogram on
fixed log-spaced edges, the top-k contexts by the context's max activation, a few contexts per
activation band, and a count-min sketch of the tokens it fires on. Every statistic is
order-independent: the state after a stream is the same however the stream is batched, resumed
or sharded, and `merge` of two states equals the state of the concatenated stream, bit for bit.
`stats()` returns a typed numpy snapshot (`FeatureStats`); this module knows no file names.

Ties are broken deterministically: top-k ranks by (activation desc, global window index asc);
band samples keep the smallest hash of (window, feature). Shapes: `f [batch, pos, d_sae]`,
`mask [batch, pos]`, `windows [batch]`; state `[d_sae, k]`, `[d_sae, n_bands, s]`, `..., pos]`.
No per-feature Python loop; works on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from scope.errors import NonFiniteActivationError
from scope.store.schema import token_sketch_buckets

#: histogram edges of nonzero activations: 10 bins per decade from 1e-3 to 1e6, wide enough for
#: Gemma Scope 1 (tens to hundreds) and Gemma 3 residual SAEs (tens of thousands); values outside
#: land in the first/last bin. Fixed, so histograms from any run or shard add up exactly.
HIST_EDGES = np.logspace(-3, 6, 91)
#: activation bands for sampled contexts: 2 per decade from 1e-2 to 1e6 (the same clamping)
BAND_EDGES = np.logspace(-2, 6, 17)
BAND_SAMPLES = 2
#: count-min sketch of the tokens each feature fires on: depth rows of width buckets
SKETCH_DEPTH, SKETCH_WIDTH = 4, 256
#: activations are summed as round(a * 2**SUM_BITS) in int64: exact, associative
SUM_BITS = 20
_WINDOW_MASK = 0xFFFFFFFF
_MAX_KEY = (1 << 63) - 1


@dataclass
class FeatureStats:
    """A numpy snapshot of one SAE's statistics (`F = d_sae`, `k` top contexts, `B` bands,
    `s` samples per band, `P = ctx`). Every array is in mergeable form."""

    tokens: int
    """Tokens counted (BOS/EOS/pad excluded)."""
    firing_count: np.ndarray  # [F] int64
    act_sum_fixed: np.ndarray  # [F] int64: sum of round(a * 2**SUM_BITS)
    max_activation: np.ndarray  # [F] float32
    histogram: np.ndarray  # [F, n_bins] int64
    top_window: np.ndarray  # [F, k] int64, best first, -1 empty
    top_value: np.ndarray  # [F, k] float32
    top_pos: np.ndarray  # [F, k] int32
    top_acts: np.ndarray  # [F, k, P] float16, activation / top_value (relative to the peak)
    band_window: np.ndarray  # [F, B, s] int64
    band_value: np.ndarray  # [F, B, s] float32
    band_pos: np.ndarray  # [F, B, s] int32
    band_acts: np.ndarray  # [F, B, s, P] float16, activation / band_value
    token_sketch: np.ndarray  # [F, depth, width] int64

    @property
    def mean_activation(self) -> np.ndarray:
        """`[F]` float32 mean over nonzero activations (0 for features that never fired)."""
        c = self.firing_count
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(c > 0, self.act_sum_fixed.astype(np.float64) / 2.0**SUM_BITS / c, 0.0)
        return mean.astype(np.float32)

    @property
    def density(self) -> np.ndarray:
        """`[F]` float64 firing fraction over counted tokens."""
        if not self.tokens:
            return np.zeros(len(self.firing_count), np.float64)
        return (self.firing_count / self.tokens).astype(np.float64)


def _float_bits(v: torch.Tensor) -> torch.Tensor:
    """Monotone int64 image of nonnegative float32 values."""
    return v.float().contiguous().view(torch.int32).long()


def top_keys(values: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Sort keys for top-k (larger is better): activation desc, then window index asc.

    Empty slots (window < 0 or value <= 0) get distinct negative keys, below every real one.
    """
    key = (_float_bits(values) << 32) | (_WINDOW_MASK - (windows & _WINDOW_MASK))
    return torch.where((windows >= 0) & (values > 0), key, _empty_keys(values.shape, values.device))


def band_keys(windows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Sort keys for band samples (larger is better): a hash of (window, feature), then window.

    Uniform pseudo-random, the same on every device, unique per feature row.
    """
    m = _WINDOW_MASK
    x = (windows & m) ^ ((features * 0x9E3779B1) & m)
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & m
    x = x ^ (x >> 16)
    return _MAX_KEY - (((x >> 1) << 32) | (windows & m))


def _empty_keys(shape: torch.Size, device: torch.device, offset: int = 0) -> torch.Tensor:
    cols = torch.arange(shape[-1], device=device) + offset
    return (-1 - cols).expand(shape).clone()


class Slots:
    """A `[d_sae, s]` table of kept contexts: key, window, value, peak position, acts `[.., pos]`."""

    def __init__(self, d_sae: int, s: int, ctx: int, device: torch.device) -> None:
        self.key = _empty_keys(torch.Size((d_sae, s)), device)
        self.window = torch.full((d_sae, s), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((d_sae, s), dtype=torch.float32, device=device)
        self.pos = torch.zeros((d_sae, s), dtype=torch.int32, device=device)
        self.acts = torch.zeros((d_sae, s, ctx), dtype=torch.float16, device=device)

    def offer(self, cand_key: torch.Tensor,
              fetch: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]) -> None:
        """Keep the `s` largest keys among the current slots and the candidates.

        Slots are unordered in memory (`sorted_arrays` orders them by key): a winning candidate
        overwrites the slot of an evicted entry in place, so a batch touches only what changes.

        Args:
            cand_key: `[d_sae, C]` candidate keys; negative means no candidate.
            fetch: `(features [n], cols [n]) -> (window [n], value [n], pos [n], acts [n, pos])`
                for the candidates that won a slot.
        """
        s = self.key.shape[1]
        cand_key = torch.where(cand_key >= 0, cand_key,
                               _empty_keys(cand_key.shape, cand_key.device, offset=s))
        # Only rows where some candidate beats the row's current minimum can change.
        rows = (cand_key.amax(dim=1) > self.key.amin(dim=1)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        both = torch.cat([self.key[rows], cand_key[rows]], dim=1)
        idx = both.topk(s, dim=1).indices
        chosen = torch.zeros_like(both, dtype=torch.bool).scatter_(1, idx, True)
        evicted = (~chosen[:, :s]).nonzero(as_tuple=True)  # (row, slot), row-major
        won = chosen[:, s:].nonzero(as_tuple=True)  # (row, col): the same count per row
        if won[0].numel() == 0:
            return
        r, slot, col = rows[evicted[0]], evicted[1], won[1]
        w, v, p, a = fetch(r, col)
        self.key[r, slot] = cand_key[r, col]
        self.window[r, slot], self.value[r, slot] = w, v
        self.pos[r, slot], self.acts[r, slot] = p.to(torch.int32), a.to(self.acts.dtype)

    def sorted_arrays(self) -> dict[str, torch.Tensor]:
        """The slots of every row ordered by key, best first (empty slots last)."""
        order = self.key.argsort(dim=1, descending=True, stable=True)
        out = {name: getattr(self, name).gather(1, order)
               for name in ("key", "window", "value", "pos")}
        # the [rows, slots, ctx] contexts as whole rows of ctx: an index_select of rows is ~5x
        # faster than a gather with the index expanded over ctx (measured on CPU)
        n, s, ctx = self.acts.shape
        flat = (order + torch.arange(n, device=order.device)[:, None] * s).reshape(-1)
        out["acts"] = self.acts.reshape(n * s, ctx).index_select(0, flat).reshape(n, s, ctx)
        return out


class FeatureAccumulator:
    """Running statistics of one SAE's features (see the module docstring)."""

    def __init__(self, d_sae: int, ctx: int, top_k: int = 20, band_samples: int = BAND_SAMPLES,
                 device: str | torch.device = "cpu", *, hist_edges: np.ndarray = HIST_EDGES,
                 band_edges: np.ndarray = BAND_EDGES, sketch: tuple[int, int] = (
                     SKETCH_DEPTH, SKETCH_WIDTH), offset: int = 0) -> None:
        """`offset`: the SAE's index of this accumulator's first feature, when it holds one
        block of a wider SAE (`scope.pipeline.feature_blocks`); hashes use the SAE's index."""
        self.d_sae, self.ctx, self.top_k, self.offset = d_sae, ctx, top_k, offset
        self.device = torch.device(device)
        dev = self.device
        self.hist_edges = np.asarray(hist_edges, dtype=np.float64)
        self.band_edges = np.asarray(band_edges, dtype=np.float64)
        self.n_bands = len(self.band_edges) - 1
        self.tokens = 0  # non-special tokens seen
        self.count = torch.zeros(d_sae, dtype=torch.long, device=dev)
        self.act_sum = torch.zeros(d_sae, dtype=torch.long, device=dev)  # fixed point
        self.max = torch.zeros(d_sae, dtype=torch.float32, device=dev)
        self.hist = torch.zeros((d_sae, len(self.hist_edges) - 1), dtype=torch.long, device=dev)
        self.sketch = torch.zeros((d_sae, *sketch), dtype=torch.long, device=dev)
        self.top = Slots(d_sae, top_k, ctx, dev)
        self.bands = [Slots(d_sae, band_samples, ctx, dev) for _ in range(self.n_bands)]
        self._hist_inner = torch.tensor(self.hist_edges[1:-1], dtype=torch.float32, device=dev)
        self._band_inner = torch.tensor(self.band_edges[1:-1], dtype=torch.float32, device=dev)
        self._feat = torch.arange(offset, offset + d_sae, device=dev)

    @torch.no_grad()
    def update(self, f: torch.Tensor, mask: torch.Tensor, windows: torch.Tensor,
               tokens: torch.Tensor | None = None) -> None:
        """Add one batch.

        Args:
            f: `[batch, pos, d_sae]` feature activations (>= 0); modified in place (masked).
            mask: `[batch, pos]` bool, False at BOS/EOS/pad (excluded from every statistic).
            windows: `[batch]` int64 global window indices.
            tokens: `[batch, pos]` token ids, for the sketch of firing tokens (None: not kept).

        Raises:
            NonFiniteActivationError: an activation is NaN or infinite (`.feature` names the
                first such feature); the state is left as it was before the call.
        """
        f = f.float() if f.dtype != torch.float32 else f
        windows = windows.to(self.device)
        excluded = (~mask).nonzero(as_tuple=True)
        f[excluded[0], excluded[1]] = 0.0
        flat = f.view(-1, self.d_sae)
        rows, cols = flat.nonzero(as_tuple=True)
        vals = flat[rows, cols]
        finite = torch.isfinite(vals)
        if not bool(finite.all()):
            feature = int(cols[~finite].min()) + self.offset
            err = NonFiniteActivationError(
                f"feature {feature} has a non-finite activation "
                f"({float(vals[~finite][0])}); check the SAE's weights and the model's dtype")
            err.feature = feature
            raise err
        self.tokens += int(mask.sum())
        self.count += torch.bincount(cols, minlength=self.d_sae)
        self.act_sum.index_add_(0, cols, torch.round(vals.double() * 2.0**SUM_BITS).long())
        bins = torch.bucketize(vals, self._hist_inner, right=True)
        self.hist.view(-1).index_add_(0, cols * self.hist.shape[1] + bins,
                                      torch.ones_like(bins))
        if tokens is not None:
            depth, width = self.sketch.shape[1:]
            tok = tokens.to(self.device).reshape(-1).long()[rows]
            ones = torch.ones_like(cols)
            for r in range(depth):
                bucket = token_sketch_buckets(tok, cols + self.offset, r, width)
                cell = (cols * depth + r) * width + bucket
                self.sketch.view(-1).index_add_(0, cell, ones)
        ctx_max = f.amax(dim=1)  # [batch, d_sae]
        self.max = torch.maximum(self.max, ctx_max.amax(dim=0))

        def fetch(feats: torch.Tensor, b: torch.Tensor):
            acts = f[b, :, feats]  # [n, pos]
            peak = ctx_max[b, feats]
            # relative to the context's peak: float16 keeps 3 digits at any scale (no overflow)
            return windows[b], peak, acts.argmax(dim=1), (acts / peak[:, None]).half()

        cand_windows = windows[None, :].expand(self.d_sae, -1)
        cand_vals = ctx_max.T
        self.top.offer(top_keys(cand_vals, cand_windows), fetch)
        band = torch.bucketize(ctx_max, self._band_inner, right=True).T  # [d_sae, batch]
        hkey = band_keys(cand_windows, self._feat[:, None])
        fired = cand_vals > 0
        present = torch.bincount(band[fired], minlength=self.n_bands).nonzero().squeeze(1)
        for b in present.tolist():
            self.bands[b].offer(torch.where(fired & (band == b), hkey, -1), fetch)

    @torch.no_grad()
    def merge(self, other: FeatureAccumulator) -> None:
        """Fold another accumulator (same SAE, disjoint windows) into this one."""
        if ((other.d_sae, other.ctx, other.top_k, other.sketch.shape, other.offset)
                != (self.d_sae, self.ctx, self.top_k, self.sketch.shape, self.offset)
                or not np.array_equal(other.hist_edges, self.hist_edges)
                or not np.array_equal(other.band_edges, self.band_edges)):
            raise ValueError("cannot merge statistics of differently shaped accumulators")
        self.tokens += other.tokens
        self.count += other.count.to(self.device)
        self.act_sum += other.act_sum.to(self.device)
        self.max = torch.maximum(self.max, other.max.to(self.device))
        self.hist += other.hist.to(self.device)
        self.sketch += other.sketch.to(self.device)
        for mine, theirs in zip([self.top, *self.bands], [other.top, *other.bands], strict=True):

            def fetch(feats, cols, t=theirs):
                return (t.window[feats, cols], t.value[feats, cols], t.pos[feats, cols],
                        t.acts[feats, cols])

            mine.offer(theirs.key.to(self.device), fetch)

    # -- typed numpy snapshots ---------------------------------------------------------------------

    def stats(self) -> FeatureStats:
        """A numpy snapshot of the state (copies; the accumulator keeps running)."""
        cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
        top = {k: cpu(v) for k, v in self.top.sorted_arrays().items()}
        bands = [{k: cpu(v) for k, v in b.sorted_arrays().items()} for b in self.bands]
        stack = lambda attr: np.stack([b[attr] for b in bands], 1)  # noqa: E731
        return FeatureStats(
            tokens=int(self.tokens), firing_count=cpu(self.count), act_sum_fixed=cpu(self.act_sum),
            max_activation=cpu(self.max), histogram=cpu(self.hist), top_window=top["window"],
            top_value=top["value"], top_pos=top["pos"], top_acts=top["acts"],
            band_window=stack("window"), band_value=stack("value"), band_pos=stack("pos"),
            band_acts=stack("acts"), token_sketch=cpu(self.sketch))

    @classmethod
    def from_stats(cls, st: FeatureStats, ctx: int, device: str | torch.device = "cpu", *,
                   hist_edges: np.ndarray = HIST_EDGES, band_edges: np.ndarray = BAND_EDGES,
                   offset: int = 0) -> FeatureAccumulator:
        """Rebuild the accumulator a `stats()` snapshot came from (resume, merge)."""
        d_sae, k = st.top_window.shape
        s = st.band_window.shape[2]
        acc = cls(d_sae, ctx, top_k=k, band_samples=s, device=device, hist_edges=hist_edges,
                  band_edges=band_edges, sketch=tuple(st.token_sketch.shape[1:]), offset=offset)
        t = lambda a: torch.from_numpy(np.array(a)).to(acc.device)  # noqa: E731
        acc.tokens = int(st.tokens)
        acc.count, acc.act_sum = t(st.firing_count), t(st.act_sum_fixed)
        acc.max, acc.hist, acc.sketch = t(st.max_activation), t(st.histogram), t(st.token_sketch)
        acc.top.window, acc.top.value = t(st.top_window), t(st.top_value)
        acc.top.pos, acc.top.acts = t(st.top_pos), t(st.top_acts)
        acc.top.key = top_keys(acc.top.value, acc.top.window)
        feats = acc._feat[:, None].expand(-1, s)
        for b, slots in enumerate(acc.bands):
            slots.window = t(st.band_window[:, b])
            slots.value = t(st.band_value[:, b])
            slots.pos = t(st.band_pos[:, b])
            slots.acts = t(st.band_acts[:, b])
            key = band_keys(slots.window, feats)
            slots.key = torch.where(slots.window >= 0, key,
                                    _empty_keys(key.shape, acc.device))
        return acc

    def referenced_windows(self) -> torch.Tensor:
        """Sorted unique window indices any kept context refers to."""
        ws = torch.cat([self.top.window.flatten(), *(b.window.flatten() for b in self.bands)])
        return ws[ws >= 0].unique()
