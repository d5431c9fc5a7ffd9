"""The extraction pipeline: corpus windows -> model -> SAEs -> accumulators -> feature store.

`extract(model, saes, corpus, out)` runs the model once per batch, stopping after the deepest
hooked layer, encodes every SAE on the whole batch and folds the features into one
`FeatureAccumulator` per SAE (tensor operations over `[tokens, d_sae]`, on the model's device).
It never loses work: the store is written as a checkpoint every `checkpoint_every` seconds and on
Ctrl-C/SIGTERM (marked partial), and rerunning the same call resumes and ends bit-identical to an
uninterrupted run (`scope.pipeline.run`). `shard=(i, n)` takes whole batches `i, i+n, ...`; under
`torchrun` the ranks shard automatically and rank 0 merges (`scope.pipeline.merge`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from scope.errors import ShapeMismatchError, StoreError
from scope.pipeline.corpus import Corpus, as_corpus
from scope.pipeline.decoder_tables import decoder_logits
from scope.pipeline.merge import merge_stores
from scope.pipeline.run import ExtractionRun
from scope.pipeline.run_config import (
    check_corpus,
    check_sites,
    parse_shard,
    resolve_sae_specs,
    run_config,
)
from scope.store import schema as S
from scope.store.folder import canonical, check_out_path
from scope.store.reader import Store, open_store, read_manifest

log = logging.getLogger(__name__)

__all__ = ["decoder_logits", "extract"]


def extract(
    model: Any,
    saes: Any,
    corpus: Corpus | str | Sequence[str] | None = None,
    out: str | os.PathLike = "runs/extract",
    *,
    tokens: int | None = None,
    ctx: int = 128,
    batch_size: int = 16,
    top_k: int = 20,
    shard: tuple[int, int] | str | None = None,
    checkpoint_every: float = 300.0,
    overwrite: bool = False,
    progress: bool = True,
    model_spec: str | None = None,
    sae_specs: Sequence[str | None] | None = None,
    logits: bool = True,
) -> Store:
    """Record, for every feature of every SAE, what makes it fire over a corpus.

    Args:
        model: a model from `scope.load_model` (a TransformerLens TransformerBridge) (its tokenizer makes the windows).
        saes: one JumpReLUSAE or a list; several may read several sites (one forward pass).
        corpus: a `Corpus`, a path, "hf:NAME", a list of texts, or None for the default.
        out: store folder; a partial store with the same configuration is resumed, a complete
            one is returned as is, a different one is refused (unless `overwrite`).
        tokens: token budget (window tokens, BOS included), None for the whole corpus.
        ctx: window length, BOS included.
        batch_size: windows per forward pass.
        top_k: contexts kept per feature.
        shard: `(i, n)` or "i/n": this run takes batches i, i+n, ... (merge with `scope merge`).
        checkpoint_every: seconds between checkpoints.
        overwrite: delete a store with a different configuration in `out` and start fresh.
        progress: show a tqdm bar (tokens/s, ETA).
        model_spec: what `load_model` accepts to rebuild the model (default: `model.scope_spec`).
        sae_specs: per SAE, what `load_sae` accepts (default: from each SAE's config).
        logits: compute the decoder logit tables (one `d_sae x d_model x d_vocab` product per
            SAE, about a minute for 16k features on 2 CPU cores); False leaves them empty.

    Returns:
        The opened store (`scope.open_store(out)`).
    """
    saes = list(saes) if isinstance(saes, (list, tuple)) else [saes]
    if not saes:
        raise ShapeMismatchError("extract needs at least one SAE")
    corpus = as_corpus(corpus)
    shard = parse_shard(shard)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    specs = resolve_sae_specs(saes, sae_specs)
    config = run_config(model, saes, specs, corpus, tokens, ctx, batch_size, top_k, shard,
                        model_spec, logits).to_dict()
    check_sites(model, saes)
    check_corpus(corpus)
    if world > 1 and shard is None:
        return _extract_distributed(model, saes, corpus, Path(out), config, checkpoint_every,
                                    overwrite, progress)
    return ExtractionRun(model, saes, specs, corpus, Path(out), config, checkpoint_every,
                         overwrite, progress).run()


def _extract_distributed(model, saes, corpus, out, config, checkpoint_every, overwrite,
                         progress) -> Store:
    """Under torchrun: rank r extracts shard r/world into out/ranks/, rank 0 merges into out."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    check_out_path(out)
    manifest = read_manifest(out) if out.is_dir() else None
    if (manifest is not None and manifest.status == S.STATUS_COMPLETE
            and canonical(manifest.config) == canonical(config) and not overwrite):
        return open_store(out)
    own = not dist.is_initialized()
    if own:
        backend = "nccl" if torch.device(model.cfg.device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(days=7))
    try:
        parts = [out / S.RANKS_DIR / f"rank-{r:03d}-of-{world:03d}" for r in range(world)]
        shard_cfg = dict(config, shard=[rank, world])
        specs = [s["spec"] for s in config["saes"]]
        ExtractionRun(model, saes, specs, corpus, parts[rank], shard_cfg, checkpoint_every,
                      overwrite, progress and rank == 0).run()
        dist.barrier()
        if rank == 0:
            merge_stores(parts, out, overwrite=overwrite)
            shutil.rmtree(out / S.RANKS_DIR, ignore_errors=True)
        dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()
    store = open_store(out)
    if canonical(store.manifest.get("config")) != canonical(config):
        raise StoreError(f"{out}: the merged store's configuration differs from this run's")
    return store


class _CallableModule(types.ModuleType):
    """`scope.pipeline.extract` names both this module and its function: importing the submodule makes
    Python set the package attribute to the module, so the module forwards calls to `extract`
    and `scope.extract(model, saes, corpus, out)` works whatever was imported first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Store:
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
