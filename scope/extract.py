"""The extraction pipeline: corpus windows -> model -> SAEs -> accumulators -> feature store.

`extract(model, saes, corpus, out)` runs the model once per batch, stopping after the deepest
hooked layer, encodes every SAE on the whole batch and folds the features into one
`FeatureAccumulator` per SAE (tensor operations over `[tokens, d_sae]`, on the model's device).
It never loses work: the store is written as a checkpoint every `checkpoint_every` seconds and on
Ctrl-C/SIGTERM (marked partial), and rerunning the same call resumes and ends bit-identical to an
uninterrupted run. `shard=(i, n)` takes whole batches `i, i+n, ...`; under `torchrun` the ranks
shard automatically and rank 0 merges (`scope.merge`).
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

import numpy as np
import torch

import scope
from scope.accumulators import BAND_EDGES, BAND_SAMPLES, HIST_EDGES, SUM_BITS, FeatureAccumulator
from scope.activations import norm_gain
from scope.corpus import Corpus, as_corpus, iter_batches, token_strings
from scope.errors import CorpusError, ShapeMismatchError, StoreError
from scope.merge import (
    RANKS_DIR,
    WindowPool,
    canonical,
    check_out_dir,
    load_state,
    merge_stores,
    save_state,
)
from scope.store import (
    FORMAT_VERSION,
    STATUS_COMPLETE,
    STATUS_PARTIAL,
    VOCAB,
    Store,
    atomic_write_text,
    open_store,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

N_LOGITS = 10
FEATURE_SHARD_SIZE = 4096
LOGIT_CHUNK = 4096  # features per block of the logit tables
VOCAB_CHUNK = 8192  # vocabulary columns per block


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
        model: a HookedTransformer from `scope.load_model` (its tokenizer makes the windows).
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
        self.manifest = check_out_dir(out, config, overwrite)
        self.specs = specs

    def run(self) -> Store:
        if self.manifest is not None and self.manifest.get("status") == STATUS_COMPLETE:
            log.info("%s already holds a complete store with this configuration", self.out)
            return open_store(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if self.manifest is not None and self.manifest.get("data"):
            devices = [s.W_enc.device for s in self.saes]
            self.accs, self.pool, self.logits = load_state(self.out, self.manifest, devices)
            log.info("resuming %s after %d windows (%d tokens)", self.out,
                     self.manifest["windows"], self.manifest["tokens"])
        else:
            self.manifest = self._new_manifest()
            self._write_vocab()
            write_manifest(self.out, self.manifest)
            self.accs = [FeatureAccumulator(s.cfg.d_sae, self.ctx, self.config["top_k"],
                                            device=s.W_enc.device) for s in self.saes]
            self.pool = WindowPool()
            self.logits = [decoder_logits(self.model, s, enabled=self.config["logits"])
                           for s in self.saes]
        self._loop()
        self._checkpoint(STATUS_COMPLETE)
        log.info("store complete: %s (%d tokens)", self.out, self.manifest["tokens"])
        return open_store(self.out)

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        tok = self.tokenizer
        special = torch.tensor(sorted({int(t) for t in (tok.bos_token_id, tok.eos_token_id,
                               tok.pad_token_id) if t is not None}))
        device = torch.device(self.model.cfg.device)
        done, last_save, dirty = int(self.manifest["windows"]), time.monotonic(), False
        bar = tqdm(total=self._total_tokens(), initial=int(self.manifest["tokens"]), unit="tok",
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
                    acts = scope.capture(self.model, toks_dev, self.hooks)
                    fs = [sae.encode(acts[sae.cfg.hook_name].to(sae.W_enc.device,
                                                                 sae.W_enc.dtype))
                          for sae in self.saes]
                    del acts
                    mask = ~torch.isin(toks, special)
                    in_update = True  # from here to the end of the batch the state is in flux
                    for acc, f in zip(self.accs, fs, strict=True):
                        acc.update(f, mask.to(f.device), idx)
                    self.pool.add(idx, toks)
                    done += len(idx)
                    self.manifest["windows"] = done
                    self.manifest["tokens"] += int(toks.numel())
                    in_update, dirty = False, True
                    del fs
                    bar.update(int(toks.numel()))
                    if stop.is_set():
                        raise KeyboardInterrupt
                    if n_batch % 64 == 63:
                        self.pool.prune(self.accs)
                    if time.monotonic() - last_save >= self.checkpoint_every:
                        self._checkpoint(STATUS_PARTIAL)
                        last_save, dirty = time.monotonic(), False
        except BaseException:
            if dirty and not in_update:
                self._checkpoint(STATUS_PARTIAL)
            log.warning("extraction stopped after %d tokens; %s is a consistent partial store: "
                        "rerun the same command to resume", self.manifest["tokens"], self.out)
            raise
        finally:
            bar.close()
        self.manifest["corpus_skipped"] = dict(self.corpus.skipped)

    def _checkpoint(self, status: str) -> None:
        self.manifest["status"] = status
        save_state(self.out, self.manifest, self.accs, self.pool, self.logits)

    def _total_tokens(self) -> int | None:
        if self.config["tokens"] is None:
            return None
        n_windows = -(-int(self.config["tokens"]) // self.ctx)
        i, n = self.shard
        mine = sum(min(self.batch_size, n_windows - b * self.batch_size)
                   for b in range(i, -(-n_windows // self.batch_size), n))
        return mine * self.ctx

    def _write_vocab(self) -> None:
        import json

        n = min(int(self.model.cfg.d_vocab), len(self.tokenizer))
        vocab = token_strings(self.tokenizer, n)
        atomic_write_text(self.out / VOCAB, json.dumps(vocab, ensure_ascii=False))

    def _new_manifest(self) -> dict:
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        saes = []
        for j, (sae, spec) in enumerate(zip(self.saes, self.specs, strict=True)):
            c = sae.cfg
            saes.append({"name": self.config["saes"][j]["name"], "spec": spec,
                         "hook_name": c.hook_name, "d_in": c.d_in, "d_sae": c.d_sae,
                         "neuronpedia_id": c.neuronpedia_id, "model_name": c.model_name,
                         "release": c.release, "sae_id": c.sae_id, "kind": c.kind,
                         "dir": f"{j:02d}-{_safe(self.config['saes'][j]['name'])}"})
        return {
            "format_version": FORMAT_VERSION, "tool_version": scope.__version__,
            "status": STATUS_PARTIAL, "model": {"name": self.model.cfg.model_name,
                                                 "spec": self.config["model"]},
            "saes": saes, "corpus": self.corpus.describe(), "tokens": 0, "windows": 0,
            "ctx": self.ctx, "top_k": self.config["top_k"], "band_samples": BAND_SAMPLES,
            "shard": self.config["shard"], "config": self.config,
            "histogram_edges": HIST_EDGES.tolist(), "band_edges": BAND_EDGES.tolist(),
            "sum_bits": SUM_BITS, "feature_shard_size": FEATURE_SHARD_SIZE,
            "n_logits": N_LOGITS, "created": now, "data": None,
        }


@torch.no_grad()
def decoder_logits(model: Any, sae: Any, k: int = N_LOGITS, enabled: bool = True
                   ) -> dict[str, np.ndarray]:
    """The k most positive and most negative logit effects of each feature's decoder direction.

    `W_dec[f] @ (diag(gain) @ W_U)` with the final norm's gain (`norm_gain`, 1 + w for Gemma); attention
    SAEs (`attn.hook_z`) are first mapped to the residual stream through that layer's `W_O`.
    Sites whose output is not in the residual stream (or `enabled=False`) get empty tables
    (ids -1).

    Returns:
        `logit_pos_ids / logit_neg_ids [d_sae, k]` int32, `logit_pos_vals / _neg_vals` float32.
    """
    F = sae.cfg.d_sae
    empty = {"logit_pos_ids": np.full((F, k), -1, np.int32),
             "logit_pos_vals": np.zeros((F, k), np.float32),
             "logit_neg_ids": np.full((F, k), -1, np.int32),
             "logit_neg_vals": np.zeros((F, k), np.float32)}
    cfg = model.cfg
    W_dec = sae.W_dec.detach()
    hook = sae.cfg.hook_name_out or sae.cfg.hook_name
    if not enabled:
        return empty
    if W_dec.shape[1] == cfg.d_model:
        to_resid = None
    elif hook.endswith("attn.hook_z") and W_dec.shape[1] == cfg.n_heads * cfg.d_head:
        to_resid = model.blocks[int(hook.split(".")[1])].attn.W_O  # [n_heads, d_head, d_model]
    else:
        log.info("%s: decoder is not in the residual stream; no logit tables", sae.cfg.name)
        return empty
    W_U = model.W_U.detach()  # [d_model, d_vocab]
    n_vocab = min(W_U.shape[1], len(model.tokenizer))
    W_U = W_U[:, :n_vocab]
    gain = norm_gain(model, "ln_final").to(W_U.dtype)  # Gemma: 1 + w (the bridge keeps raw w)
    out = {key: v.copy() for key, v in empty.items()}
    # Blocks of features x blocks of vocabulary keep each product compute-bound and ~100 MB.
    for start in range(0, F, LOGIT_CHUNK):
        d = W_dec[start : start + LOGIT_CHUNK].to(W_U.device, W_U.dtype)
        if to_resid is not None:
            d = torch.einsum("fhd,hdm->fm", d.view(len(d), cfg.n_heads, cfg.d_head), to_resid)
        if gain is not None:
            d = d * gain
        cands = []
        for v0 in range(0, n_vocab, VOCAB_CHUNK):
            logits = (d @ W_U[:, v0 : v0 + VOCAB_CHUNK]).float()  # [chunk, vocab chunk]
            kk = min(k, logits.shape[1])
            for largest in (True, False):
                t = logits.topk(kk, dim=1, largest=largest)
                cands.append((largest, t.values, t.indices + v0))
        sl = slice(start, start + len(d))
        for largest, key in ((True, "pos"), (False, "neg")):
            vals = torch.cat([v for lg, v, _ in cands if lg == largest], dim=1)
            ids = torch.cat([i for lg, _, i in cands if lg == largest], dim=1)
            t = vals.topk(min(k, vals.shape[1]), dim=1, largest=largest)
            out[f"logit_{key}_vals"][sl, : t.values.shape[1]] = t.values.cpu().numpy()
            out[f"logit_{key}_ids"][sl, : t.values.shape[1]] = ids.gather(1, t.indices).cpu().numpy()
    return out


def _check_sites(model: Any, saes: Sequence[Any]) -> list[str]:
    """Validate hook names and that each SAE's width matches its site; return the sites."""
    from scope.activations import site_width, validate_hook_names

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
    if (manifest is not None and manifest.get("status") == STATUS_COMPLETE
            and canonical(manifest.get("config")) == canonical(config) and not overwrite):
        return open_store(out)
    own = not dist.is_initialized()
    if own:
        backend = "nccl" if torch.device(model.cfg.device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(days=7))
    try:
        parts = [out / RANKS_DIR / f"rank-{r:03d}-of-{world:03d}" for r in range(world)]
        shard_cfg = dict(config, shard=[rank, world])
        specs = [s["spec"] for s in config["saes"]]
        _Run(model, saes, specs, corpus, parts[rank], shard_cfg, checkpoint_every, overwrite,
             progress and rank == 0).run()
        dist.barrier()
        if rank == 0:
            merge_stores(parts, out, overwrite=overwrite)
            import shutil

            shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
        dist.barrier()
    finally:
        if own:
            dist.destroy_process_group()
    store = open_store(out)
    if canonical(store.manifest.get("config")) != canonical(config):
        raise StoreError(f"{out}: the merged store's configuration differs from this run's")
    return store


class _CallableModule(types.ModuleType):
    """`scope.extract` names both this module and its function: importing the submodule makes
    Python set the package attribute to the module, so the module forwards calls to `extract`
    and `scope.extract(model, saes, corpus, out)` works whatever was imported first."""

    def __call__(self, *args: Any, **kwargs: Any) -> Store:
        return extract(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
