"""Model activations -> the on-disk activation cache a training run reads.

Runs the model over token windows of a corpus split (BOS first, see `scope.pipeline.corpus`), keeps the
activations at one hook site for every position that is not BOS, EOS or padding (Gemma Scope
never trained on those), and appends them to an `ActivationCache`. The windows are
deterministic, so an interrupted capture resumes after the last window it wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from scope.pipeline.corpus import special_token_ids
from scope.train.buffer import ActivationCache
from scope.train.config import TrainConfig

log = logging.getLogger(__name__)

#: write a shard every this many activations (~80 MB of bfloat16 at d_model 640)
SHARD_TOKENS = 1 << 16


def cache_key(cfg: TrainConfig, split: str) -> dict[str, Any]:
    """What an activation cache was captured from (the one definition; `meta.json` keeps it)."""
    d = cfg.data
    return {"model": d.model, "hook_name": d.hook_name, "corpus": d.corpus, "split": split,
            "ctx": d.ctx}


def cache_folder(cfg: TrainConfig, split: str) -> Path:
    """Activation-cache folder of one corpus split for this run's model, hook, corpus and ctx."""
    key = json.dumps(cache_key(cfg, split), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cfg.run.run_dir) / "cache" / f"{split}-{digest}"


def fill_cache(model: Any, corpus: Any, cache: ActivationCache, *, hook_name: str, ctx: int,
               n_tokens: int, batch_size: int, desc: str = "capture") -> ActivationCache:
    """Capture activations at `hook_name` until the cache holds at least `n_tokens` of them.

    Args:
        model: a model from `scope.load_model` (a TransformerLens TransformerBridge).
        corpus: a `scope.pipeline.corpus.Corpus` (its split selects train or held-out text).
        cache: the cache to fill; resumes after `cache.windows_done` windows.
        hook_name: the site to capture.
        ctx: window length (BOS included).
        n_tokens: activations wanted (special positions excluded).
        batch_size: windows per forward pass.
        desc: progress-bar label.

    Returns:
        The completed cache.
    """
    from scope.model.activations import capture
    from scope.pipeline.corpus import token_windows

    if cache.complete:
        return cache
    special = special_token_ids(model.tokenizer)
    done = cache.tokens
    log.info("%s: %s activations of %s (%d already cached)", desc, f"{n_tokens:,}", hook_name,
             done)
    bar = tqdm(total=n_tokens, initial=done, desc=desc, unit="tok", unit_scale=True,
               mininterval=5.0)
    start = time.time()
    windows = token_windows(corpus, model.tokenizer, ctx=ctx, batch_size=batch_size,
                            start=cache.windows_done)
    for tokens in windows:  # [batch, pos]
        if done >= n_tokens:
            break
        with torch.no_grad():
            acts = capture(model, tokens, [hook_name])[hook_name]  # [batch, pos, d_in]
        keep = ~torch.isin(tokens, special)  # [batch, pos]
        kept = acts[keep.to(acts.device)].float().cpu()  # [n, d_in]
        cache.append(kept, windows=len(tokens), flush_tokens=SHARD_TOKENS)
        done += len(kept)
        bar.update(len(kept))
    else:
        if done < n_tokens:
            log.warning("%s: the corpus ran out after %d activations (%d asked for)", desc, done,
                        n_tokens)
    bar.close()
    cache.finish()
    log.info("%s: %d activations in %.0f s", desc, cache.tokens, time.time() - start)
    return cache
