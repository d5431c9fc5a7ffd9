"""One extraction run (or one shard of it): set up or resume, loop over batches, checkpoint.

`ExtractionRun.run()` holds the store's lock for the whole run, decides with
`scope.store.folder.check_out_dir` whether `--out` is resumed, reused or started fresh, and
folds every batch into one accumulator per SAE (`BlockedAccumulator`: a wide SAE is encoded
and accumulated one block of features at a time, so memory is bounded whatever its width). It
never loses work: the store is written as a checkpoint every `checkpoint_every` seconds and on
Ctrl-C/SIGTERM (marked partial); a run that stops before its first checkpoint removes what it
wrote (only that).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager

import torch

from scope.errors import CorpusError, NonFiniteActivationError
from scope.model.activations import capture
from scope.pipeline.accumulators import (
    BAND_EDGES,
    BAND_SAMPLES,
    HIST_EDGES,
    SKETCH_DEPTH,
    SKETCH_WIDTH,
    SUM_BITS,
)
from scope.pipeline.checkpoint import WindowPool, load_state, save_state
from scope.pipeline.corpus import iter_batches, special_token_ids, token_strings
from scope.pipeline.decoder_tables import (
    N_LOGITS,
    N_NEIGHBOURS,
    decoder_tables,
    neighbour_mode,
)
from scope.pipeline.feature_blocks import BlockedAccumulator, BlockEncoder
from scope.pipeline.run_config import check_sites
from scope.store import schema as S
from scope.store.folder import check_out_dir, check_out_path, clear_store
from scope.store.lock import store_lock
from scope.store.reader import Store, open_store
from scope.store.writer import write_manifest, write_tables, write_vocab

log = logging.getLogger(__name__)

#: features per `features_START_END.safetensors` file
FEATURE_SHARD_SIZE = 4096
#: seconds between "still computing" lines while decoder tables compute without a bar
HEARTBEAT_S = 10.0


class ExtractionRun:
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
        self.hooks = check_sites(model, saes)
        self.specs, self.overwrite = specs, overwrite
        self.manifest: S.Manifest | None = None

    def run(self) -> Store:
        check_out_path(self.out)  # refused before the lock is even taken: nothing is written
        with store_lock(self.out):  # removes `out` again if it made it and it stays empty
            self.manifest = check_out_dir(self.out, self.config, self.overwrite)
            if self.manifest is not None and self.manifest.status == S.STATUS_COMPLETE:
                log.info("%s already holds a complete store with this configuration", self.out)
                return open_store(self.out)
            try:
                self._run()
            except BaseException:
                if self.manifest is None or self.manifest.data is None:
                    self._remove_unstarted()
                raise
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
            write_manifest(self.out, manifest)  # claims the folder first: the rest is its own
            self._write_vocab()
            write_tables(self.out, manifest, self._decoder_tables(manifest))
            write_manifest(self.out, manifest)
            self.manifest = manifest
            self.accs = [BlockedAccumulator(s.cfg.d_sae, self.ctx, self.config["top_k"],
                                            device=s.W_enc.device) for s in self.saes]
            self.pool = WindowPool()
        self._loop()
        self._checkpoint(S.STATUS_COMPLETE)

    def _decoder_tables(self, manifest: S.Manifest) -> dict[str, dict]:
        """Every SAE's decoder tables (`decoder_tables`), each announced with its size and
        timed, with live progress while one computes (`TablesProgress`)."""
        out = {}
        with TablesProgress(len(self.saes), self.progress) as progress:
            for entry, sae in zip(manifest.saes, self.saes, strict=True):
                n_vocab = min(int(self.model.cfg.d_vocab), len(self.tokenizer))
                progress.start(entry.name, sae.cfg.d_sae, n_vocab, self.config["logits"])
                entry.neighbours = neighbour_mode(sae.W_dec)  # recorded: the pages say which
                out[entry.dir] = decoder_tables(self.model, sae, logits=self.config["logits"],
                                                neighbours=entry.neighbours)
                progress.done()
        return out

    def _remove_unstarted(self) -> None:
        """A run that stopped before its first checkpoint leaves nothing behind in --out."""
        if self.out.is_dir():
            clear_store(self.out, self.manifest)
        self.manifest = None

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        tok = self.tokenizer
        special = special_token_ids(tok)
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
                    # an SAE of one block is encoded whole before any state changes; a wider
                    # one block by block inside its update (bounded memory)
                    fs = [_encoder(sae, acts[sae.cfg.hook_name], len(acc.blocks))
                          for sae, acc in zip(self.saes, self.accs, strict=True)]
                    del acts
                    mask = ~torch.isin(toks, special)
                    in_update = True  # from here to the end of the batch the state is in flux
                    for acc, f, sae in zip(self.accs, fs, self.saes, strict=True):
                        dev = sae.W_enc.device
                        try:
                            acc.update(f, mask.to(dev), idx, toks.to(dev))
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


class TablesProgress:
    """Live progress of the decoder tables (about a minute per 16k features on 2 CPU cores).

    Each SAE's tables are announced with their size and timed in log lines (INFO, the CLI's
    default level). While one computes, a bar shows `n/N SAEs` and the elapsed seconds,
    refreshed every second (`bar=True`; log lines go through tqdm so they do not break it),
    or, without a bar (`--no-progress`), a "still computing" line every `heartbeat` seconds:
    no step is silent for longer than that.
    """

    def __init__(self, n: int, bar: bool, heartbeat: float | None = None) -> None:
        self.n, self.use_bar, self.heartbeat = n, bar, heartbeat or HEARTBEAT_S
        self.i, self.name, self.t0 = 0, "", time.monotonic()
        self._bar = self._redirect = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True,
                                        name="scope-tables-progress")

    def __enter__(self) -> TablesProgress:
        if self.use_bar:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self._bar = tqdm(total=self.n, desc="decoder tables", dynamic_ncols=True,
                             bar_format="{desc}: {n_fmt}/{total_fmt} SAEs [{elapsed}]")
        self._ticker.start()
        return self

    def start(self, name: str, d_sae: int, d_vocab: int, logits: bool) -> None:
        """SAE number `i + 1` (named `name`, `d_sae` features) starts its tables."""
        self.name, self.t0 = name, time.monotonic()
        what = (f"top logit effects over {d_vocab:,} tokens and " if logits else "") + \
            "nearest decoder neighbours"
        log.info("decoder tables %d/%d, SAE %s (%s features): %s", self.i + 1, self.n, name,
                 f"{d_sae:,}", what)
        if self._bar is not None:
            self._bar.set_description_str(f"decoder tables ({name})", refresh=True)

    def done(self) -> None:
        """The current SAE's tables are computed."""
        self.i += 1
        if self._bar is not None:
            self._bar.update(1)
        log.info("decoder tables %d/%d, SAE %s: done in %.0f s", self.i, self.n, self.name,
                 time.monotonic() - self.t0)

    def _tick(self) -> None:
        every = 1.0 if self._bar is not None else self.heartbeat
        while not self._stop.wait(every):
            if self._bar is not None:
                self._bar.refresh()
            elif self.i < self.n:
                log.info("decoder tables %d/%d, SAE %s: still computing, %.0f s so far",
                         self.i + 1, self.n, self.name, time.monotonic() - self.t0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._ticker.join()
        if self._bar is not None:
            self._bar.close()
            self._redirect.__exit__(None, None, None)


def _encoder(sae, x: torch.Tensor, n_blocks: int) -> torch.Tensor | BlockEncoder:
    """The SAE's features of `x` (`[batch, pos, d_in]`): all at once for one block, else a
    `BlockEncoder` that makes one block's (`[batch, pos, stop - start]`) when called."""
    x = x.to(sae.W_enc.device, sae.W_enc.dtype)
    if n_blocks == 1:
        return sae.encode(x)

    def block(start: int, stop: int) -> torch.Tensor:  # JumpReLUSAE.encode on columns start:stop
        pre = x @ sae.W_enc[:, start:stop] + sae.b_enc[start:stop]
        return pre * (pre > sae.threshold[start:stop])

    return block


def _tool_version() -> str:
    from scope.base.version import __version__

    return __version__


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
