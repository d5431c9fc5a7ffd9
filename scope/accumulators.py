"""Per-feature statistics over a stream of sparse feature activations, as tensor operations.

`FeatureAccumulator` keeps, for every feature of one SAE: the firing count, the sum of nonzero
activations (in int64 fixed point, so sums are exact and associative), the max, a histogram on
fixed log-spaced edges, the top-k contexts by the context's max activation and a few contexts
per activation band. Every statistic is order-independent: the state after a stream is the same
however the stream is batched, resumed or sharded, and `merge` of two states equals the state
of the concatenated stream, bit for bit.

Ties are broken deterministically: top-k ranks by (activation desc, global window index asc);
band samples keep the smallest hash of (window, feature). Shapes: `f [batch, pos, d_sae]`,
`mask [batch, pos]`, `windows [batch]`; state `[d_sae, k]`, `[d_sae, n_bands, s]`, `..., pos]`.
No per-feature Python loop; works on any device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

#: histogram edges of nonzero activations: 10 bins per decade from 1e-3 to 1e3 (values outside
#: land in the first/last bin); fixed so histograms from any run add up
HIST_EDGES = np.logspace(-3, 3, 61)
#: activation bands for sampled contexts: 2 per decade from 1e-2 to 1e3 (the same clamping)
BAND_EDGES = np.logspace(-2, 3, 11)
BAND_SAMPLES = 2
#: activations are summed as round(a * 2**SUM_BITS) in int64: exact, associative
SUM_BITS = 20
_WINDOW_MASK = 0xFFFFFFFF
_MAX_KEY = (1 << 63) - 1


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
        out["acts"] = self.acts.gather(1, order[..., None].expand(-1, -1, self.acts.shape[2]))
        return out


class FeatureAccumulator:
    """Running statistics of one SAE's features (see the module docstring)."""

    def __init__(self, d_sae: int, ctx: int, top_k: int = 20, band_samples: int = BAND_SAMPLES,
                 device: str | torch.device = "cpu") -> None:
        self.d_sae, self.ctx, self.top_k = d_sae, ctx, top_k
        self.device = torch.device(device)
        dev = self.device
        self.n_bands = len(BAND_EDGES) - 1
        self.tokens = 0  # non-special tokens seen
        self.count = torch.zeros(d_sae, dtype=torch.long, device=dev)
        self.act_sum = torch.zeros(d_sae, dtype=torch.long, device=dev)  # fixed point
        self.max = torch.zeros(d_sae, dtype=torch.float32, device=dev)
        self.hist = torch.zeros((d_sae, len(HIST_EDGES) - 1), dtype=torch.long, device=dev)
        self.top = Slots(d_sae, top_k, ctx, dev)
        self.bands = [Slots(d_sae, band_samples, ctx, dev) for _ in range(self.n_bands)]
        self._hist_inner = torch.tensor(HIST_EDGES[1:-1], dtype=torch.float32, device=dev)
        self._band_inner = torch.tensor(BAND_EDGES[1:-1], dtype=torch.float32, device=dev)
        self._feat = torch.arange(d_sae, device=dev)

    @torch.no_grad()
    def update(self, f: torch.Tensor, mask: torch.Tensor, windows: torch.Tensor) -> None:
        """Add one batch.

        Args:
            f: `[batch, pos, d_sae]` feature activations (>= 0); modified in place (masked).
            mask: `[batch, pos]` bool, False at BOS/EOS/pad (excluded from every statistic).
            windows: `[batch]` int64 global window indices.
        """
        f = f.float() if f.dtype != torch.float32 else f
        windows = windows.to(self.device)
        excluded = (~mask).nonzero(as_tuple=True)
        f[excluded[0], excluded[1]] = 0.0
        self.tokens += int(mask.sum())
        flat = f.view(-1, self.d_sae)
        rows, cols = flat.nonzero(as_tuple=True)
        vals = flat[rows, cols]
        self.count += torch.bincount(cols, minlength=self.d_sae)
        self.act_sum.index_add_(0, cols, torch.round(vals.double() * 2.0**SUM_BITS).long())
        bins = torch.bucketize(vals, self._hist_inner, right=True)
        self.hist.view(-1).index_add_(0, cols * self.hist.shape[1] + bins,
                                      torch.ones_like(bins))
        ctx_max = f.amax(dim=1)  # [batch, d_sae]
        self.max = torch.maximum(self.max, ctx_max.amax(dim=0))

        def fetch(feats: torch.Tensor, b: torch.Tensor):
            acts = f[b, :, feats]  # [n, pos]
            return windows[b], ctx_max[b, feats], acts.argmax(dim=1), acts.half()

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
        assert (other.d_sae, other.ctx, other.top_k) == (self.d_sae, self.ctx, self.top_k)
        self.tokens += other.tokens
        self.count += other.count.to(self.device)
        self.act_sum += other.act_sum.to(self.device)
        self.max = torch.maximum(self.max, other.max.to(self.device))
        self.hist += other.hist.to(self.device)
        for mine, theirs in zip([self.top, *self.bands], [other.top, *other.bands], strict=True):

            def fetch(feats, cols, t=theirs):
                return (t.window[feats, cols], t.value[feats, cols], t.pos[feats, cols],
                        t.acts[feats, cols])

            mine.offer(theirs.key.to(self.device), fetch)

    # -- conversion to and from store arrays ------------------------------------------------------

    def to_arrays(self, window_index: np.ndarray | None = None,
                  window_tokens: np.ndarray | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """`(summary, per_feature)` numpy arrays in the store's layout (docs/store.md).

        Args:
            window_index: `[n]` sorted window indices covering every kept context.
            window_tokens: `[n, pos]` their token ids; with `window_index`, fills `top_token`
                (the token at the peak of each top context, used by token search).
        """
        cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
        count = cpu(self.count)
        act_sum = cpu(self.act_sum)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, act_sum.astype(np.float64) / 2.0**SUM_BITS / count, 0.0)
            density = count / self.tokens if self.tokens else np.zeros_like(count, np.float64)
        top = {k: cpu(v) for k, v in self.top.sorted_arrays().items()}
        bands = [{k: cpu(v) for k, v in b.sorted_arrays().items()} for b in self.bands]
        top_w, top_p = top["window"], top["pos"]
        top_token = np.full(top_w.shape, -1, dtype=np.int32)
        if window_index is not None and window_tokens is not None and len(window_index):
            rows = np.searchsorted(window_index, top_w).clip(0, len(window_index) - 1)
            found = (top_w >= 0) & (window_index[rows] == top_w)
            top_token = np.where(found, window_tokens[rows, top_p], -1).astype(np.int32)
        summary = {"firing_count": count, "act_sum_fixed": act_sum,
                   "max_activation": cpu(self.max), "mean_activation": mean.astype(np.float32),
                   "density": density.astype(np.float64), "top_value": top["value"],
                   "top_token": top_token,
                   "tokens_counted": np.asarray([self.tokens], dtype=np.int64)}
        stack = lambda attr: np.stack([b[attr] for b in bands], 1)  # noqa: E731
        per_feature = {"histogram": cpu(self.hist), "top_window": top_w,
                       "top_value": top["value"], "top_pos": top_p,
                       "top_acts": top["acts"], "band_window": stack("window"),
                       "band_value": stack("value"), "band_pos": stack("pos"),
                       "band_acts": stack("acts")}
        return summary, per_feature

    @classmethod
    def from_arrays(cls, summary: dict[str, np.ndarray], per_feature: dict[str, np.ndarray],
                    ctx: int, device: str | torch.device = "cpu") -> FeatureAccumulator:
        """Rebuild the state `to_arrays` wrote (resume, merge)."""
        d_sae, k = per_feature["top_window"].shape
        s = per_feature["band_window"].shape[2]
        acc = cls(d_sae, ctx, top_k=k, band_samples=s, device=device)
        t = lambda a: torch.from_numpy(np.array(a)).to(acc.device)  # noqa: E731
        acc.tokens = int(summary["tokens_counted"][0])
        acc.count, acc.act_sum = t(summary["firing_count"]), t(summary["act_sum_fixed"])
        acc.max, acc.hist = t(summary["max_activation"]), t(per_feature["histogram"])
        acc.top.window, acc.top.value = t(per_feature["top_window"]), t(per_feature["top_value"])
        acc.top.pos, acc.top.acts = t(per_feature["top_pos"]), t(per_feature["top_acts"])
        acc.top.key = top_keys(acc.top.value, acc.top.window)
        feats = acc._feat[:, None].expand(-1, s)
        for b, slots in enumerate(acc.bands):
            slots.window = t(per_feature["band_window"][:, b])
            slots.value = t(per_feature["band_value"][:, b])
            slots.pos = t(per_feature["band_pos"][:, b])
            slots.acts = t(per_feature["band_acts"][:, b])
            key = band_keys(slots.window, feats)
            slots.key = torch.where(slots.window >= 0, key,
                                    _empty_keys(key.shape, acc.device))
        return acc

    def referenced_windows(self) -> torch.Tensor:
        """Sorted unique window indices any kept context refers to."""
        ws = torch.cat([self.top.window.flatten(), *(b.window.flatten() for b in self.bands)])
        return ws[ws >= 0].unique()
