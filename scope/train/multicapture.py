"""Fill the activation caches of several training configs in one pass over the corpus.

`scope train` captures one hook site per run. Configs that differ only in `hook_name` (same
model, corpus and ctx) read the same token windows, so one forward pass per batch can fill all
their caches: each cache ends up byte-identical to the one its own `scope train` run would
capture (same windows, same kept positions), and the runs that follow find it complete.

    python -m scope.train.multicapture configs/train/demo_layer_3.yaml configs/train/demo_layer_6.yaml
    scope train --config configs/train/demo_layer_3.yaml   # reuses the cache
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from scope.train.buffer import ActivationCache
from scope.train.capture import SHARD_TOKENS, cache_folder, cache_key, special_token_ids
from scope.train.config import TrainConfig

log = logging.getLogger(__name__)


def fill_caches(cfgs: list[TrainConfig], model: Any = None) -> None:
    """Capture the train and held-out activations of every config, one forward pass per batch.

    Args:
        cfgs: configs with the same model, corpus, ctx and capture batch size.
        model: a loaded model (loaded from the first config's `model` when None).
    """
    from scope.model.activations import capture, site_width
    from scope.pipeline.corpus import token_windows
    from scope.pipeline.demo_corpus import corpus_for

    first = cfgs[0].data
    for cfg in cfgs[1:]:
        d = cfg.data
        if (d.model, d.corpus, d.ctx, d.capture_batch_size) != (
                first.model, first.corpus, first.ctx, first.capture_batch_size):
            raise ValueError("multicapture: configs must share model, corpus, ctx and "
                             "capture_batch_size")
    if model is None:
        from scope.model.load import load_model

        model = load_model(first.model)
    special = special_token_ids(model.tokenizer)
    for split in ("train", "heldout"):
        wanted = {cfg.data.hook_name: (cfg.data.train_tokens if split == "train"
                                       else cfg.data.eval_tokens) for cfg in cfgs}
        caches = {cfg.data.hook_name: ActivationCache(
            cache_folder(cfg, split), key=cache_key(cfg, split),
            d_in=site_width(model, cfg.data.hook_name)) for cfg in cfgs}
        starts = {c.windows_done for c in caches.values() if not c.complete}
        if not starts:
            continue
        if len(starts) > 1:
            raise ValueError(f"multicapture: partial {split} caches stopped at different windows "
                             f"{sorted(starts)}; delete them or run `scope train` per config")
        start = starts.pop()
        todo = {h: c for h, c in caches.items() if not c.complete}
        goal = max(wanted[h] for h in todo)
        done = min(c.tokens for c in todo.values())
        bar = tqdm(total=goal, initial=done, desc=f"capture {split} x{len(todo)}", unit="tok",
                   unit_scale=True, mininterval=5.0)
        t0 = time.time()
        windows = token_windows(corpus_for(first.corpus, split), model.tokenizer,
                                ctx=first.ctx, batch_size=first.capture_batch_size, start=start)
        have = {h: c.tokens for h, c in todo.items()}  # written + pending
        for tokens in windows:
            todo = {h: c for h, c in todo.items() if have[h] < wanted[h]}
            if not todo:
                break
            with torch.no_grad():
                acts = capture(model, tokens, list(todo))
            keep = ~torch.isin(tokens, special)
            for h, cache in todo.items():
                kept = acts[h][keep.to(acts[h].device)].float().cpu()
                cache.append(kept, windows=len(tokens), flush_tokens=SHARD_TOKENS)
                have[h] += len(kept)
            bar.update(int(keep.sum()))
        bar.close()
        for cache in caches.values():
            if not cache.complete:
                cache.finish()
        log.info("capture %s: %d sites in %.0f s", split, len(caches), time.time() - t0)


def main(argv: list[str] | None = None) -> int:
    """Command line: the YAML configs whose caches to fill."""
    import yaml

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        sys.stderr.write("usage: python -m scope.train.multicapture CONFIG.yaml [CONFIG.yaml ...]\n")
        return 2
    cfgs = [TrainConfig.from_flat(yaml.safe_load(open(p, encoding="utf-8"))) for p in paths]
    fill_caches(cfgs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
