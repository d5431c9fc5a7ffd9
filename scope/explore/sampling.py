"""Which contexts an explanation is written from and scored on (delphi's protocol, on a store).

Positives: the feature's kept contexts (top and band samples), one per window, sorted by peak
activation and cut into `n_quantiles` equal slices; from each slice `n_test // n_quantiles`
(at least one) are drawn at random and held out for scoring, the explainer sees only the rest.
Negatives: windows drawn at random from the store's window pool (every window some feature kept
a context of) that the feature does not fire on anywhere (position 0 excluded), verified by
re-encoding them with the store's model and SAE (`replay.WindowEncoder`), since a store keeps
no record of where a feature is zero. Hard negatives (optional): the top contexts of the
feature's decoder neighbours, verified the same way. A feature with fewer than `min_examples`
kept contexts is skipped, with the reason.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: crop of a context shown to a model: this many tokens before the peak and after it
LEFT, RIGHT = 24, 8


@dataclass(frozen=True)
class ScoringConfig:
    """The scoring protocol's parameters (stored with every score)."""

    n_quantiles: int = 10
    """activation quantiles the positives are drawn from (delphi: 10)"""
    n_test: int = 10
    """held-out activating contexts scored (spread over the quantiles)"""
    n_negatives: int = 10
    """verified non-activating contexts drawn from the corpus windows"""
    n_hard: int = 0
    """verified non-activating contexts from decoder neighbours' top contexts"""
    per_prompt: int = 5
    """examples per judge prompt (delphi: 5)"""
    min_examples: int = 12
    """kept activating contexts a feature needs to be explained and scored"""
    fuzz: bool = True
    """also run the fuzzing scorer"""
    fuzz_threshold: float = 0.3
    """tokens at or above this share of the context's peak are highlighted (delphi: 0.3)"""
    verify: bool = True
    """verify negatives by re-encoding with the store's model and SAE"""
    candidate_windows: int = 128
    """corpus windows encoded once per run as the negative pool"""

    def __post_init__(self) -> None:
        from scope.errors import ConfigError

        for name in ("n_quantiles", "n_test", "per_prompt", "min_examples", "candidate_windows"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"scoring {name} = {getattr(self, name)}: must be at least 1")
        if self.n_negatives < 0 or self.n_hard < 0:
            raise ConfigError("scoring n_negatives and n_hard must be >= 0")
        if not 0 < self.fuzz_threshold <= 1:
            raise ConfigError(f"fuzz_threshold {self.fuzz_threshold}: give a share in (0, 1]")

    def protocol(self, seed: int) -> dict:
        return {"name": "delphi-detection", "version": 1, "n_quantiles": self.n_quantiles,
                "n_test": self.n_test, "n_negatives": self.n_negatives, "n_hard": self.n_hard,
                "per_prompt": self.per_prompt, "few_shot": 3, "min_examples": self.min_examples,
                "negatives": "verified" if self.verify else "unverified",
                "candidate_windows": self.candidate_windows, "fuzz": self.fuzz,
                "fuzz_threshold": self.fuzz_threshold, "crop": [LEFT, RIGHT], "seed": seed}


@dataclass(frozen=True)
class Context:
    """A context as a model sees it: tokens, activations (zeros for negatives), the peak."""

    tokens: list[str]
    activations: list[float]
    max_position: int
    window: int
    activating: bool

    @property
    def max_activation(self) -> float:
        return max(self.activations) if self.activations else 0.0


def positives_pool(feat) -> list:
    """The feature's kept contexts, one per window, highest peak first."""
    seen, out = set(), []
    for e in list(feat.top_examples) + [e for b in (feat.band_examples or []) for e in b.examples]:
        if e.window not in seen and e.max_activation > 0:
            seen.add(e.window)
            out.append(e)
    out.sort(key=lambda e: (-e.max_activation, e.window))
    return out


def split_positives(pool: list, cfg: ScoringConfig, n_explain: int, rng: random.Random
                    ) -> tuple[list, list[tuple[object, int]]]:
    """(contexts for the explainer, [(held-out context, quantile)]), disjoint by window."""
    nq = max(1, min(cfg.n_quantiles, len(pool) // 2))  # every slice keeps one for the explainer
    size = len(pool) // nq
    per = max(1, cfg.n_test // nq)
    test, rest = [], []
    for q in range(nq):
        chunk = pool[q * size:(q + 1) * size] if q < nq - 1 else pool[q * size:]
        pick = set(rng.sample(range(len(chunk)), min(per, len(chunk) - 1) if len(chunk) > 1
                              else 0))
        test += [(e, q) for j, e in enumerate(chunk) if j in pick]
        rest += [e for j, e in enumerate(chunk) if j not in pick]
    rest.sort(key=lambda e: (-e.max_activation, e.window))
    half = n_explain // 2
    explain = rest[:half]
    tail = rest[half:]
    k = n_explain - len(explain)
    if tail and k > 0:
        idx = np.unique(np.linspace(0, len(tail) - 1, num=min(k, len(tail))).round().astype(int))
        explain += [tail[i] for i in idx]
    return explain, test


@dataclass
class NegativePool:
    """Corpus windows encoded once per run; per feature, the ones it never fires on."""

    store: object
    sae: str
    encoder: object | None
    cfg: ScoringConfig
    seed: int = 0
    windows: np.ndarray = field(default=None, init=False)
    maxes: np.ndarray | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        index = self.store.window_ids()  # the store's window pool
        rng = np.random.default_rng(self.seed)
        n = min(len(index), self.cfg.candidate_windows)
        self.windows = np.sort(rng.choice(index, size=n, replace=False)) if n else index[:0]
        if self.encoder is not None and n:
            log.info("encoding %d candidate negative windows", n)
            self.maxes = self.encoder.max_acts(self.tokens(self.windows))

    def tokens(self, windows) -> np.ndarray:
        return np.stack([self.store.window_tokens(int(w)) for w in windows])

    def context(self, window: int, rng: random.Random) -> Context:
        ids = self.store.window_tokens(int(window))
        vocab = self.store.vocab
        toks = [vocab[t] if 0 <= t < len(vocab) else f"<{t}>" for t in ids]
        lo = min(len(toks) - 1, LEFT + 1)
        p = rng.randint(lo, max(lo, len(toks) - 1 - RIGHT))
        return Context(toks, [0.0] * len(toks), p, int(window), False)

    def negatives(self, feature: int, exclude: set[int], rng: random.Random) -> list[Context]:
        """Up to `n_negatives` contexts the feature does not fire on (verified when encoded)."""
        ok = [int(w) for j, w in enumerate(self.windows) if int(w) not in exclude
              and (self.maxes is None or not self.maxes[j, feature] > 0)]
        pick = rng.sample(ok, min(self.cfg.n_negatives, len(ok)))
        return [self.context(w, rng) for w in sorted(pick)]

    def hard_negatives(self, feat, exclude: set[int], rng: random.Random) -> list[Context]:
        """Up to `n_hard` top contexts of decoder neighbours the feature does not fire on."""
        if self.cfg.n_hard <= 0:
            return []
        cand = []
        for j, _cos in feat.neighbours[:5]:
            other = self.store.feature(self.sae, int(j))
            cand += [e.window for e in other.top_examples[:4] if e.window not in exclude]
        cand = sorted(set(cand))
        if self.encoder is not None and cand:
            m = self.encoder.max_acts(self.tokens(cand))[:, int(feat.index)]
            cand = [w for w, v in zip(cand, m, strict=True) if not v > 0]
        pick = rng.sample(cand, min(self.cfg.n_hard, len(cand)))
        return [self.context(w, rng) for w in sorted(pick)]


def crop(ctx) -> tuple[list[str], list[float]]:
    """Tokens and activations of a context's crop around its peak."""
    p = int(ctx.max_position)
    lo, hi = max(0, p - LEFT), min(len(ctx.tokens), p + RIGHT + 1)
    return list(ctx.tokens[lo:hi]), list(ctx.activations[lo:hi])


def show(tok: str) -> str:
    return tok.replace("\n", "↵")


def plain_text(ctx) -> str:
    toks, _ = crop(ctx)
    return "".join(show(t) for t in toks).strip()


def highlighted(toks: list[str], marks: list[bool]) -> str:
    """Tokens with runs of marked ones wrapped in << >>."""
    out, i = [], 0
    while i < len(toks):
        if marks[i]:
            j = i
            while j < len(toks) and marks[j]:
                j += 1
            out.append("<<" + "".join(show(t) for t in toks[i:j]) + ">>")
            i = j
        else:
            out.append(show(toks[i]))
            i += 1
    return "".join(out).strip()


def fuzz_text(ctx, threshold: float, n_incorrect: int, rng: random.Random) -> str:
    """An activating context with its firing tokens (>= threshold * peak) highlighted, or a
    non-activating one with `n_incorrect` random tokens highlighted (delphi's fuzzing)."""
    toks, acts = crop(ctx)
    peak = max(acts) if acts else 0.0
    if getattr(ctx, "activating", True) and peak > 0:
        marks = [a >= threshold * peak for a in acts]
    else:
        chosen = set(rng.sample(range(len(toks)), min(n_incorrect, len(toks))))
        marks = [k in chosen for k in range(len(toks))]
    return highlighted(toks, marks)


def n_marked(contexts, threshold: float) -> int:
    """delphi's `n_incorrect`: the mean number of highlighted tokens per positive, rounded up."""
    counts = []
    for c in contexts:
        _, acts = crop(c)
        peak = max(acts) if acts else 0.0
        counts.append(sum(a >= threshold * peak for a in acts) if peak > 0 else 0)
    return max(1, math.ceil(sum(counts) / len(counts))) if counts else 1
