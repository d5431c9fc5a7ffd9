"""The extraction pipeline: corpus windows -> model -> SAEs -> accumulators -> feature store.

`extract(model, saes, corpus, out)` runs the model once per batch, stopping after the deepest
hooked layer, encodes every SAE on the whole batch and folds the features into one
`FeatureAccumulator` per SAE (tensor operations over `[tokens, d_sae]`, on the model's device).
It never loses work: the store is written as a checkpoint every `checkpoint_every` seconds and on
Ctrl-C/SIGTERM (marked partial), and rerunning the same call resumes and ends bit-identical to an
uninterrupted run. `shard=(i, n)` takes whole batches `i, i+n, ...`; under `torchrun` the ranks
shard automatically and rank 0 merges (`scope.pipeline.merge`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from scope.errors import CorpusError, NonFiniteActivationError, ShapeMismatchError, StoreError
from scope.model.activations import capture
from scope.pipeline.accumulators import (
    BAND_EDGES,
    BAND_SAMPLES,
    HIST_EDGES,
    SKETCH_DEPTH,
    SKETCH_WIDTH,
    SUM_BITS,
    FeatureAccumulator,
)
from scope.pipeline.checkpoint import (
    WindowPool,
    canonical,
    check_out_dir,
    clear_store,
    load_state,
    save_state,
    store_lock,
)
from scope.pipeline.corpus import Corpus, as_corpus, iter_batches, token_strings
from scope.pipeline.decoder_tables import N_LOGITS, N_NEIGHBOURS, decoder_logits, decoder_tables
from scope.pipeline.merge import merge_stores
from scope.store import schema as S
from scope.store.reader import Store, open_store, read_manifest
from scope.store.writer import write_manifest, write_tables, write_vocab

log = logging.getLogger(__name__)

__all__ = ["decoder_logits", "extract"]

FEATURE_SHARD_SIZE = 4096


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
    shard = _parse_shard(shard)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    specs = _sae_specs(saes, sae_specs)
    config = _config(model, saes, specs, corpus, tokens, ctx, batch_size, top_k, shard, model_spec)
    config["logits"] = bool(logits)
    _check_sites(model, saes)
    _check_corpus(corpus)
    if world > 1 and shard is None:
        return _extract_distributed(model, saes, corpus, Path(out), config, checkpoint_every,
                                    overwrite, progress)
    return _Run(model, saes, specs, corpus, Path(out), config, checkpoint_every, overwrite,
                progress).run()


class _Run:
    """One (shard of an) extraction: set up or resume, loop over batches, checkpoint."""

    def __init__(self, model, saes, specs, corpus, out, config, checkpoint_every, overwrite,
                 progress) -> None:
        self.model, self.saes, self.corpus, self.out = model, saes, corpus, out
        self.config, self.checkpoint_every, self.progress = config, checkpoint_every, progress
        self.ctx, self.batch_size = config["ctx"], config["batch_size"]
        self.shard = tuple(config["shard"] or (0, 1))
        self.tokenizer = getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise CorpusError("the model has no tokenizer; load it with scope.load_model")
        self.hooks = _check_sites(model, saes)
        self.specs, self.overwrite = specs, overwrite
        self.manifest: S.Manifest | None = None

    def run(self) -> Store:
        if self.out.exists() and not self.out.is_dir():
            raise StoreError(f"--out {self.out} is a file; choose a folder")
        created = not self.out.exists()
        try:
            with store_lock(self.out):
                self.manifest = check_out_dir(self.out, self.config, self.overwrite)
                if self.manifest is not None and self.manifest.status == S.STATUS_COMPLETE:
                    log.info("%s already holds a complete store with this configuration",
                             self.out)
                    return open_store(self.out)
                try:
                    self._run()
                except BaseException:
                    if self.manifest is None or self.manifest.data is None:
                        self._remove_unstarted()
                    raise
        finally:
            if created and self.out.is_dir() and not any(self.out.iterdir()):
                self.out.rmdir()  # a run that failed at once leaves no empty folder either
        log.info("store complete: %s (%d tokens)", self.out, self.manifest.tokens)
        return open_store(self.out)

    def _run(self) -> None:
        if self.manifest is not None and self.manifest.data:
            devices = [s.W_enc.device for s in self.saes]
            self.accs, self.pool = load_state(self.out, self.manifest, devices)
            log.info("resuming %s after %d windows (%d tokens)", self.out,
                     self.manifest.windows, self.manifest.tokens)
        else:
            manifest = self._new_manifest()
            self._write_vocab()
            write_tables(self.out, manifest,
                         {e.dir: decoder_tables(self.model, s, logits=self.config["logits"])
                          for e, s in zip(manifest.saes, self.saes, strict=True)})
            write_manifest(self.out, manifest)
            self.manifest = manifest
            self.accs = [FeatureAccumulator(s.cfg.d_sae, self.ctx, self.config["top_k"],
                                            device=s.W_enc.device) for s in self.saes]
            self.pool = WindowPool()
        self._loop()
        self._checkpoint(S.STATUS_COMPLETE)

    def _remove_unstarted(self) -> None:
        """A run that stopped before its first checkpoint leaves nothing behind in --out."""
        if self.out.is_dir():
            clear_store(self.out)
        self.manifest = None

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        tok = self.tokenizer
        special = torch.tensor(sorted({int(t) for t in (tok.bos_token_id, tok.eos_token_id,
                               tok.pad_token_id) if t is not None}))
        device = torch.device(self.model.cfg.device)
        done, last_save, dirty = int(self.manifest.windows), time.monotonic(), False
        bar = tqdm(total=self._total_tokens(), initial=int(self.manifest.tokens), unit="tok",
                   unit_scale=True, desc=f"extract {self.out.name}", disable=not self.progress,
                   dynamic_ncols=True, smoothing=0.1)
        batches = iter_batches(self.corpus, tok, self.ctx, self.batch_size,
                               self.config["tokens"], self.shard, start=done,
                               block=self.batch_size)
        in_update = False
        try:
            with _deferred_interrupts() as stop:
                for n_batch, (idx, toks) in enumerate(batches):
                    toks_dev = toks.to(device)
                    acts = capture(self.model, toks_dev, self.hooks)
                    fs = [sae.encode(acts[sae.cfg.hook_name].to(sae.W_enc.device,
                                                                 sae.W_enc.dtype))
                          for sae in self.saes]
                    del acts
                    mask = ~torch.isin(toks, special)
                    in_update = True  # from here to the end of the batch the state is in flux
                    for acc, f, sae in zip(self.accs, fs, self.saes, strict=True):
                        try:
                            acc.update(f, mask.to(f.device), idx, toks.to(f.device))
                        except NonFiniteActivationError as exc:
                            raise NonFiniteActivationError(
                                f"SAE {sae.cfg.name!r}, feature {exc.feature}: a NaN or "
                                f"infinite activation in windows {idx.tolist()[:4]}...; the "
                                f"store keeps its last checkpoint. {exc}") from None
                    self.pool.add(idx, toks)
                    done += len(idx)
                    self.manifest.windows = done
                    self.manifest.tokens += int(toks.numel())
                    in_update, dirty = False, True
                    del fs
                    bar.update(int(toks.numel()))
                    if stop.is_set():
                        raise KeyboardInterrupt
                    if n_batch % 64 == 63:
                        self.pool.prune(self.accs)
                    if time.monotonic() - last_save >= self.checkpoint_every:
                        self._checkpoint(S.STATUS_PARTIAL)
                        last_save, dirty = time.monotonic(), False
        except BaseException:
            if dirty and not in_update:
                self._checkpoint(S.STATUS_PARTIAL)
            log.warning("extraction stopped after %d tokens; %s is a consistent partial store: "
                        "rerun the same command to resume", self.manifest.tokens, self.out)
            raise
        finally:
            bar.close()
        self.manifest.corpus_skipped = dict(self.corpus.skipped)

    def _checkpoint(self, status: str) -> None:
        self.manifest.status = status
        save_state(self.out, self.manifest, self.accs, self.pool)

    def _total_tokens(self) -> int | None:
        if self.config["tokens"] is None:
            return None
        n_windows = -(-int(self.config["tokens"]) // self.ctx)
        i, n = self.shard
        mine = sum(min(self.batch_size, n_windows - b * self.batch_size)
                   for b in range(i, -(-n_windows // self.batch_size), n))
        return mine * self.ctx

    def _write_vocab(self) -> None:
        n = min(int(self.model.cfg.d_vocab), len(self.tokenizer))
        write_vocab(self.out, token_strings(self.tokenizer, n))

    def _new_manifest(self) -> S.Manifest:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        saes = []
        for j, (sae, spec) in enumerate(zip(self.saes, self.specs, strict=True)):
            c = sae.cfg
            name = self.config["saes"][j]["name"]
            saes.append(S.SAEEntry(
                name=name, dir=f"{j:02d}-{_safe(name)}", hook_name=c.hook_name, d_in=c.d_in,
                d_sae=c.d_sae, spec=spec, neuronpedia_id=c.neuronpedia_id,
                model_name=c.model_name, release=c.release, sae_id=c.sae_id, kind=c.kind))
        return S.Manifest(
            saes=saes, config=self.config, model={"name": self.model.cfg.model_name,
                                                  "spec": self.config["model"]},
            corpus=self.corpus.describe(), ctx=self.ctx, top_k=self.config["top_k"],
            band_samples=BAND_SAMPLES, histogram_edges=HIST_EDGES.tolist(),
            band_edges=BAND_EDGES.tolist(), feature_shard_size=FEATURE_SHARD_SIZE,
            tool_version=_tool_version(), shard=self.config["shard"], sum_bits=SUM_BITS,
            n_logits=N_LOGITS, n_neighbours=N_NEIGHBOURS,
            token_sketch={"depth": SKETCH_DEPTH, "width": SKETCH_WIDTH}, created=now)


def _tool_version() -> str:
    from scope.base.version import __version__

    return __version__


def _check_corpus(corpus: Corpus) -> None:
    """Fail before anything is written when the corpus is missing or holds no text."""
    try:
        next(iter(corpus.documents()))
    except StopIteration:
        raise CorpusError(f"corpus {corpus.source!r} holds no readable text") from None


def _check_sites(model: Any, saes: Sequence[Any]) -> list[str]:
    """Validate hook names and that each SAE's width matches its site; return the sites."""
    from scope.model.activations import site_width, validate_hook_names

    hooks = validate_hook_names(model, list(dict.fromkeys(s.cfg.hook_name for s in saes)))
    for sae in saes:
        width = site_width(model, sae.cfg.hook_name)
        if width != sae.cfg.d_in:
            raise ShapeMismatchError(
                f"SAE {sae.cfg.name!r} reads d_in={sae.cfg.d_in} but its hook "
                f"{sae.cfg.hook_name} on model {model.cfg.model_name} has width {width}; use an "
                f"SAE made for this model and site")
    return hooks


def _sae_specs(saes: Sequence[Any], given: Sequence[str | None] | None) -> list[str | None]:
    if given is not None:
        if len(given) != len(saes):
            raise ShapeMismatchError(f"{len(given)} sae_specs for {len(saes)} SAEs")
        return list(given)
    specs = []
    for sae in saes:
        c = sae.cfg
        spec = getattr(sae, "scope_spec", None) or c.extra.get("spec")
        if spec is None and c.release == "bundled":
            spec = "bundled"
        elif spec is None and c.release and c.sae_id:
            spec = f"{c.release}/{c.sae_id}"
        elif spec is None:
            spec = c.extra.get("path") or c.extra.get("source")
        specs.append(spec)
    return specs


def _config(model, saes, specs, corpus, tokens, ctx, batch_size, top_k, shard, model_spec
            ) -> dict:
    """The resolved run configuration (written into the manifest; resuming requires equality)."""
    if int(ctx) < 2:
        raise CorpusError(f"--ctx {ctx}: a window is BOS plus at least one token; use --ctx 2 or "
                          "more (the default is 128)")
    if tokens is not None and int(tokens) < 1:
        raise CorpusError(f"--tokens {tokens}: need a positive token budget")
    if batch_size < 1 or top_k < 1:
        raise CorpusError(f"batch size {batch_size} and top-k {top_k} must be >= 1")
    names, seen = [], {}
    for sae in saes:
        name = sae.cfg.name
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    dtype = next(model.parameters()).dtype
    return {
        "model": model_spec or getattr(model, "scope_spec", None) or model.cfg.model_name,
        "saes": [{"name": n, "spec": sp, "hook_name": s.cfg.hook_name, "d_sae": s.cfg.d_sae,
                  "dtype": str(s.W_enc.dtype).removeprefix("torch.")}
                 for n, sp, s in zip(names, specs, saes, strict=True)],
        "corpus": corpus.describe(), "tokens": None if tokens is None else int(tokens),
        "ctx": int(ctx), "batch_size": int(batch_size), "top_k": int(top_k),
        "shard": None if shard is None or shard == (0, 1) else list(shard),
        "model_dtype": str(dtype).removeprefix("torch."),
    }


def _parse_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/")) if isinstance(shard, str) else map(int, shard)
    except (ValueError, TypeError):
        raise CorpusError(f"--shard {shard!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise CorpusError(f"--shard {i}/{n}: need 0 <= i < n")
    return i, n


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:80]


@contextmanager
def _deferred_interrupts():
    """SIGINT/SIGTERM set an event the loop checks between batches (a second Ctrl-C is hard)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        log.warning("interrupt received: finishing this batch and saving a checkpoint "
                    "(Ctrl-C again to stop at once)")

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _extract_distributed(model, saes, corpus, out, config, checkpoint_every, overwrite,
                         progress) -> Store:
    """Under torchrun: rank r extracts shard r/world into out/ranks/, rank 0 merges into out."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
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
        _Run(model, saes, specs, corpus, parts[rank], shard_cfg, checkpoint_every, overwrite,
             progress and rank == 0).run()
        dist.barrier()
        if rank == 0:
            merge_stores(parts, out, overwrite=overwrite)
            import shutil

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
