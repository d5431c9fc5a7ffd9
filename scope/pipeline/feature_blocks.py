"""Wide SAEs: one SAE's statistics kept as consecutive blocks of features, with bounded memory.

A 1,048,576-feature SAE cannot take the whole `[batch, pos, d_sae]` activation tensor per batch
(16 x 128 x 1M float32 is 8.6 GB, plus the top-k candidates of every feature). A
`BlockedAccumulator` holds one `FeatureAccumulator` per block of `block` features (each knows
its offset, so hashes use the SAE's feature index) and encodes the SAE one block at a time:
the activations that exist at once are `[batch, pos, block]`, whatever the width. Every
statistic is per feature and exact, so the blocked state equals the unblocked one bit for bit
(`stats()` copies each block's rows into the whole-SAE arrays), whatever the block size; the
state stays on the device it was given (top-k included) and only `stats()` (a checkpoint)
moves it to the host.

Memory, stated (`state_bytes`, `batch_bytes`): the state is, per feature,
`28 + 8 * n_bins + 8 * depth * width + (top_k + n_bands * band_samples) * (24 + 2 * ctx)` bytes
(23,500 bytes at ctx 128, top_k 20 and the default edges and sketch: 24.6 GB at 1,048,576
features, on the SAE's device); each batch adds, for one block at a time, about
`(20 + 100 * density) * batch * ctx * block` bytes (the dense activations and their masks, the
candidates, and per firing activation its indices and bins; 1.5 GB at batch 16, ctx 128, block
32,768 and 2% of the features firing), flat in the width (measured in tests/test_accumulators.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import numpy as np
import torch

from scope.pipeline.accumulators import (
    BAND_EDGES,
    BAND_SAMPLES,
    HIST_EDGES,
    SKETCH_DEPTH,
    SKETCH_WIDTH,
    FeatureAccumulator,
    FeatureStats,
)

#: features per block: the activations of one block of one batch are `[batch, pos, block]`
FEATURE_BLOCK = 32768

#: `(start, stop) -> [batch, pos, stop - start]` activations of features start..stop-1
BlockEncoder = Callable[[int, int], torch.Tensor]


def state_bytes(d_sae: int, ctx: int, top_k: int = 20, band_samples: int = BAND_SAMPLES,
                n_bands: int = len(BAND_EDGES) - 1, n_bins: int = len(HIST_EDGES) - 1,
                sketch: tuple[int, int] = (SKETCH_DEPTH, SKETCH_WIDTH)) -> int:
    """Bytes of one SAE's accumulator state (on its device), as laid out by `FeatureAccumulator`:
    counts, sums, maxima, feature ids, histogram, sketch, and each kept context's key, window,
    value, peak position and float16 activations."""
    per_context = 8 + 8 + 4 + 4 + 2 * ctx
    per_feature = (8 + 8 + 4 + 8 + 8 * n_bins + 8 * sketch[0] * sketch[1]
                   + (top_k + n_bands * band_samples) * per_context)
    return d_sae * per_feature


def batch_bytes(batch: int, ctx: int, block: int, density: float = 0.02) -> int:
    """Bytes a batch adds while one block is folded in (an upper estimate): the float32
    activations with their mask and product, the candidate keys, and for each firing activation
    (a `density` share) its row, column, value, fixed-point sum, bin and sketch cells."""
    return int((20 + 100 * density) * batch * ctx * block)


class BlockedAccumulator:
    """`FeatureAccumulator`'s interface over blocks of features (see the module docstring)."""

    def __init__(self, d_sae: int, ctx: int, top_k: int = 20, band_samples: int = BAND_SAMPLES,
                 device: str | torch.device = "cpu", *, block: int | None = None,
                 hist_edges: np.ndarray = HIST_EDGES, band_edges: np.ndarray = BAND_EDGES,
                 sketch: tuple[int, int] = (SKETCH_DEPTH, SKETCH_WIDTH)) -> None:
        block = block or FEATURE_BLOCK
        self.d_sae, self.ctx, self.block = d_sae, ctx, block
        self.blocks = [FeatureAccumulator(min(block, d_sae - a), ctx, top_k, band_samples, device,
                                          hist_edges=hist_edges, band_edges=band_edges,
                                          sketch=sketch, offset=a)
                       for a in range(0, d_sae, block)]

    @property
    def tokens(self) -> int:
        return self.blocks[0].tokens

    @torch.no_grad()
    def update(self, f: torch.Tensor | BlockEncoder, mask: torch.Tensor, windows: torch.Tensor,
               tokens: torch.Tensor | None = None) -> None:
        """Add one batch: `f` is the whole `[batch, pos, d_sae]` activations, or a `BlockEncoder`
        that makes one block's at a time (then only one block exists at once).

        Raises:
            NonFiniteActivationError: as `FeatureAccumulator.update`; with several blocks, the
                blocks before the failing one have taken the batch (the run stops without a
                checkpoint of it, so the store keeps its last consistent one).
        """
        for acc in self.blocks:
            stop = acc.offset + acc.d_sae
            if callable(f):
                part = f(acc.offset, stop)
            else:
                part = f if len(self.blocks) == 1 else f[..., acc.offset:stop].contiguous()
            acc.update(part, mask, windows, tokens)
            del part

    @torch.no_grad()
    def merge(self, other: BlockedAccumulator) -> None:
        """Fold another state (same SAE, same blocks, disjoint windows) into this one."""
        if [b.offset for b in other.blocks] != [b.offset for b in self.blocks]:
            raise ValueError("cannot merge statistics kept in different feature blocks")
        for mine, theirs in zip(self.blocks, other.blocks, strict=True):
            mine.merge(theirs)

    def stats(self) -> FeatureStats:
        """The numpy snapshot of the whole SAE: each block's rows copied into the whole-SAE
        arrays as soon as they are made, so one block's snapshot at most is held beside them
        (a concatenation of every block's would hold the snapshot twice)."""
        if len(self.blocks) == 1:
            return self.blocks[0].stats()
        names = [f.name for f in fields(FeatureStats) if f.name != "tokens"]
        arrays: dict[str, np.ndarray] = {}
        for acc in self.blocks:
            part = acc.stats()
            rows = slice(acc.offset, acc.offset + acc.d_sae)
            for name in names:
                a = getattr(part, name)
                if name not in arrays:
                    arrays[name] = np.empty((self.d_sae, *a.shape[1:]), dtype=a.dtype)
                arrays[name][rows] = a
            tokens = part.tokens
            del part, a
        return FeatureStats(tokens=tokens, **arrays)

    @classmethod
    def from_stats(cls, st: FeatureStats, ctx: int, device: str | torch.device = "cpu", *,
                   block: int | None = None, hist_edges: np.ndarray = HIST_EDGES,
                   band_edges: np.ndarray = BAND_EDGES) -> BlockedAccumulator:
        """Rebuild the state a `stats()` snapshot came from (resume, merge), in `block`s
        (default `FEATURE_BLOCK`, read at call time)."""
        block = block or FEATURE_BLOCK
        d_sae = len(st.firing_count)
        acc = cls.__new__(cls)
        acc.d_sae, acc.ctx, acc.block = d_sae, ctx, block
        acc.blocks = []
        for a in range(0, d_sae, block):
            part = FeatureStats(tokens=st.tokens, **{
                f.name: getattr(st, f.name)[a:a + block]
                for f in fields(FeatureStats) if f.name != "tokens"})
            acc.blocks.append(FeatureAccumulator.from_stats(
                part, ctx, device, hist_edges=hist_edges, band_edges=band_edges, offset=a))
        return acc

    def referenced_windows(self) -> torch.Tensor:
        """Sorted unique window indices any kept context refers to."""
        return torch.cat([b.referenced_windows() for b in self.blocks]).unique()
