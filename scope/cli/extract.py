"""`scope extract` and `scope merge`: build a feature store (sharded, resumable) and join shards."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scope.cli.common import command, positional, say
from scope.cli.flags import CTX, DEVICE, FOLDER, POSITIVE, SECONDS, SHARD
from scope.errors import ConfigError, CorpusError, StoreError


@dataclass
class Extract:
    """Run a model and its SAEs over a corpus and record, for every feature, what makes it fire
    (a feature store). Resumes an interrupted run; under `torchrun --nproc_per_node N scope
    extract ...` the ranks shard the corpus and rank 0 merges."""

    model: str = "bundled"
    """model name, hub id, local dir, .gguf or 'bundled'"""
    sae: list[str] | None = None
    """RELEASE/SAE_ID, a local path, or 'bundled' (default); repeat for several SAEs (one
    forward pass)"""
    corpus: str = "default"
    """'default' (the Python standard library's text), a file or folder of .txt/.jsonl/.parquet,
    or hf:DATASET"""
    text_field: str = "text"
    """JSONL/parquet/dataset text field"""
    split: Literal["all", "train", "heldout"] = "all"
    """document split of the corpus"""
    out: FOLDER | None = None
    """store folder to write (required)"""
    tokens: POSITIVE | None = None
    """token budget (default: the whole corpus)"""
    ctx: CTX = 128
    """context length incl. BOS"""
    batch_size: POSITIVE = 16
    """windows per forward pass"""
    top_k: POSITIVE = 20
    """top contexts kept per feature"""
    shard: SHARD | None = None
    """i/n: extract this deterministic slice (merge with `scope merge`)"""
    device: DEVICE | None = None
    """torch device (default: CUDA when available, else CPU)"""
    checkpoint_every: SECONDS = 300.0
    """seconds between checkpoints"""
    overwrite: bool = False
    """replace a store made with a different configuration in --out"""
    no_progress: bool = False
    """hide the progress bar"""
    dry_run: bool = False
    """print the plan (peak memory, disk, time; needs --tokens) and exit: nothing is loaded"""


def check_corpus(source: str) -> None:
    """A local corpus path must exist before any model is loaded or anything is written."""
    if source == "default" or source.startswith("hf:"):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"--corpus {source}: no such file or folder; give a .txt/.jsonl/.parquet "
                          f"file or folder, 'default', or hf:DATASET")
    if not (path.is_file() or path.is_dir()):
        raise CorpusError(f"--corpus {source}: not a regular file or folder")


def _device(device: str | None) -> str | None:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK) unless --device says otherwise."""
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@command("extract", Extract,
         example="scope extract --model gemma-2-2b --sae gemma-scope-2b-pt-res/layer_20/"
         "width_16k/average_l0_71 --out runs/l20 --tokens 1000000")
def run_extract(cfg: Extract) -> int:
    from scope.model.load import load_model
    from scope.pipeline.corpus import Corpus
    from scope.pipeline.extract import extract
    from scope.saes.loading import load_sae

    if cfg.out is None:
        raise StoreError("scope extract needs --out DIR (or `out:` in the --config file)")
    check_corpus(cfg.corpus)
    if cfg.dry_run:
        from scope.cli.plan import dry_run_extract

        return dry_run_extract(cfg)
    model = load_model(cfg.model, device=_device(cfg.device))
    specs = cfg.sae or ["bundled"]
    saes = [load_sae(spec, model=model) for spec in specs]
    corpus = Corpus(source=cfg.corpus, text_field=cfg.text_field, split=cfg.split)
    store = extract(model, saes, corpus, cfg.out, tokens=cfg.tokens, ctx=cfg.ctx,
                    batch_size=cfg.batch_size, top_k=cfg.top_k, shard=cfg.shard,
                    checkpoint_every=cfg.checkpoint_every, overwrite=cfg.overwrite,
                    progress=not cfg.no_progress, model_spec=cfg.model, sae_specs=specs)
    if int(os.environ.get("RANK", "0")) == 0:
        say(f"wrote {store.path}: {store.manifest['tokens']} tokens, "
            f"{', '.join(store.sae_names)}; view it with `scope dashboard {store.path}`")
    return 0


@dataclass
class Merge:
    """Merge the stores of `scope extract --shard i/n` runs (all n shards) into the store a single
    run would have written."""

    stores: list[Path] = positional(nargs="+")
    """shard stores (any order)"""
    out: FOLDER
    """folder of the merged store"""
    overwrite: bool = False
    """replace a different store already in --out"""


def check_out_is_not_an_input(out: Path, inputs: list[Path], flag: str = "--out") -> None:
    """Refuse an output folder that is (or lies inside) one of the inputs."""
    target = out.expanduser().resolve()
    for src in inputs:
        s = Path(src).expanduser().resolve()
        if target == s or s in target.parents:
            raise ConfigError(f"{flag} {out} lies inside the input {src}; write elsewhere")


@command("merge", Merge, example="scope merge runs/l20-0of2 runs/l20-1of2 --out runs/l20")
def run_merge(cfg: Merge) -> int:
    from scope.pipeline.merge import merge_stores

    check_out_is_not_an_input(cfg.out, cfg.stores)
    store = merge_stores(cfg.stores, cfg.out, overwrite=cfg.overwrite)
    say(f"merged {len(cfg.stores)} shards into {store.path}: {store.manifest['tokens']} tokens")
    return 0
