"""`scope train` for transcoders: every layer's transcoder from one forward pass per batch.

The run captures segments of the corpus's train split (`scope.train.segments`: one model
forward per batch of windows records every layer's input and output), and trains one
`JumpReLUTrainingTranscoder` per layer on each segment in turn (one `scope.train.loop.Fitter`
per layer, all fed the same shuffled positions), in a single streaming pass: no activation cache
beyond the few segments in flight, which are deleted once trained on. With `workers: 2` a child
process captures the next segments while the parent trains. A checkpoint after whole segments
(all layers' weights, Adam states and counters) lets a killed run resume exactly.

At the end each transcoder is folded to raw activations, evaluated on held-out text
(`scope.train.tc_eval`: FVU, L0, CE loss score) and saved as a native `JumpReLUSAE` folder
`out/layer_L/` (cfg.json + sae_weights.safetensors), with `out/report.json` for all layers.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from scope.errors import ConfigError
from scope.saes.outliers import OUTLIER_PREFIX_KEY
from scope.train import segments as seg
from scope.train.checkpoint import (
    CHECKPOINT_FILENAME,
    config_differs,
    read_checkpoint,
    restore_state,
    state_meta,
    state_tensors,
    write_checkpoint,
)
from scope.train.config import RESUME_KEYS, TrainConfig
from scope.train.loop import Fitter, log_record
from scope.train.output import TrainResult, cast_for_saving, load_run_model
from scope.train.transcoder import JumpReLUTrainingTranscoder

log = logging.getLogger(__name__)

REPORT_FILENAME = "report.json"
PROGRESS_FILENAME = "progress.jsonl"
#: a transcoder run resumes only a checkpoint made under these same keys
TC_RESUME_KEYS = tuple(k for k in RESUME_KEYS if k != "hook_name") + (
    "layers", "hook_in", "hook_out", "skip", "outlier_prefix", "segment_windows",
    "capture_batch_size")
#: segments the capture process may run ahead of the trainer
LOOKAHEAD = 2


def plan(cfg: TrainConfig) -> tuple[int, int]:
    """(segments, optimiser steps per layer) of a run: one pass over `train_tokens`."""
    d, t = cfg.data, cfg.transcoder
    per_segment = t.segment_windows * (d.ctx - t.outlier_prefix)  # at most; EOS lowers it
    n_segments = max(1, math.ceil(d.train_tokens / per_segment))
    return n_segments, n_segments * max(1, per_segment // cfg.optim.batch_size)


def _check(cfg: TrainConfig) -> None:
    d, t = cfg.data, cfg.transcoder
    if t.segment_windows % d.capture_batch_size:
        raise ConfigError(f"segment_windows ({t.segment_windows}) must be a multiple of "
                          f"capture_batch_size ({d.capture_batch_size})")
    if cfg.optim.epochs != 1.0:
        raise ConfigError(f"epochs: {cfg.optim.epochs}: a transcoder run streams the corpus once "
                          "(epochs: 1); raise train_tokens for more data")
    if t.outlier_prefix >= d.ctx:
        raise ConfigError(f"outlier_prefix ({t.outlier_prefix}) leaves no position of a "
                          f"{d.ctx}-token window to train on")


class LayerTrainer:
    """One layer's transcoder, its `Fitter` and its scales."""

    def __init__(self, layer: int, cfg: TrainConfig, d_in: int, d_out: int, total: int) -> None:
        o = cfg.optim
        gen = torch.Generator().manual_seed(o.seed * 1009 + layer)
        self.layer = layer
        self.sae = JumpReLUTrainingTranscoder(d_in, o.d_sae, d_out, skip=cfg.transcoder.skip,
                                              threshold_init=o.threshold_init,
                                              bandwidth=o.bandwidth, generator=gen)
        self.fitter = Fitter(self.sae, o, total)

    @property
    def prefix(self) -> str:
        return f"L{self.layer}."

    def start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fresh start: scales with E||s x||^2 = E||s y||^2 = 1 and b_dec at the target mean."""
        x64, y64 = x.double(), y.double()
        self.fitter.scale = 1.0 / math.sqrt(float(x64.pow(2).sum(-1).mean()))
        self.fitter.scale_out = 1.0 / math.sqrt(float(y64.pow(2).sum(-1).mean()))
        self.sae.init_b_dec(y64.mean(0).float() * self.fitter.scale_out)


def train_segment(layers: list[LayerTrainer], data: dict[str, torch.Tensor], *, seed: int,
                  index: int, batch_size: int) -> int:
    """Train every layer on one segment, shuffled by (seed, index); returns the steps taken."""
    n = data["x"].shape[1]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    perm = torch.randperm(n, generator=gen)
    batches = torch.tensor_split(perm, max(1, n // batch_size))  # sizes in [bs, 2 bs)
    for idx in batches:
        for k, lt in enumerate(layers):
            lt.fitter.step(data["x"][k, idx], data["y"][k, idx])
    return len(batches)


def save_run(path: Path, layers: list[LayerTrainer], segments_done: int, cfg: TrainConfig,
             extra: dict[str, Any]) -> None:
    """Checkpoint every layer after `segments_done` whole segments."""
    tensors: dict[str, torch.Tensor] = {}
    meta_layers = {}
    for lt in layers:
        f = lt.fitter
        tensors.update(state_tensors(lt.sae, f.optimizer, f.state, lt.prefix))
        meta_layers[str(lt.layer)] = {**state_meta(f.state), "scale": f.scale,
                                      "scale_out": f.scale_out}
    write_checkpoint(path, tensors, {"kind": "transcoders", "segments_done": segments_done,
                                     "config": cfg.to_flat(), "layers": meta_layers, **extra})


def load_run(path: Path, layers: list[LayerTrainer], cfg: TrainConfig) -> dict[str, Any] | None:
    """Restore every layer from a matching checkpoint; its header, or None to start afresh."""
    if not path.is_file():
        return None
    tensors, meta = read_checkpoint(path, {"segments_done": int, "config": dict, "layers": dict})
    differs = config_differs(meta["config"], cfg.to_flat(), TC_RESUME_KEYS)
    if differs:
        log.warning("%s was made with different %s; starting afresh", path, ", ".join(differs))
        return None
    for lt in layers:
        entry = meta["layers"].get(str(lt.layer))
        if not isinstance(entry, dict):
            log.warning("%s has no layer %d; starting afresh", path, lt.layer)
            return None
        lt.fitter.state = restore_state(path, tensors, entry, lt.sae, lt.fitter.optimizer,
                                        lt.prefix)
        lt.fitter.scale, lt.fitter.scale_out = float(entry["scale"]), float(entry["scale_out"])
    log.info("resuming from %s after %d segments", path, meta["segments_done"])
    return meta


class _Source:
    """Where the trainer gets segment i: a child capture process, or an inline capture."""

    def __init__(self, model: Any, cfg: TrainConfig, layers: list[int], folder: Path,
                 start: int, stop: int) -> None:
        self.model, self.cfg, self.layers, self.folder = model, cfg, layers, folder
        self.forwards = 0
        self.child = None
        if cfg.transcoder.workers == 2 and start < stop:
            self.child = seg.spawn(cfg, layers, "train", start, stop, folder, LOOKAHEAD,
                                   cfg.run.threads or 1)
        else:
            self.batches = seg.window_batches(model, cfg, "train", start)

    def get(self, index: int) -> dict[str, torch.Tensor]:
        path = seg.segment_path(self.folder, index)
        if self.child is None:
            if path.is_file():  # left by an earlier run: consume its windows, read it
                seg.capture_segment(self.model, self.cfg, self.layers, self.batches, skip=True)
            else:
                data, n = seg.capture_segment(self.model, self.cfg, self.layers, self.batches)
                self.forwards += n
                if data is None:
                    raise ConfigError(f"the train split of corpus {self.cfg.data.corpus!r} ran "
                                      f"out after {index} segments; lower train_tokens")
                return data
        while not path.is_file():
            if self.child.poll() is not None and not path.is_file():
                raise RuntimeError(f"the capture process exited ({self.child.returncode}) before "
                                   f"segment {index}; see the log above")
            time.sleep(0.2)
        return seg.read_segment(path)

    def close(self) -> None:
        if self.child is not None:
            if self.child.poll() is None:  # done early or failing: do not leave it running
                self.child.terminate()
            self.child.wait(timeout=60)


def train_transcoders(cfg: TrainConfig, *, model: Any = None, progress: bool = True) -> Any:
    """Train, evaluate and save one transcoder per layer (the `kind: transcoder` run).

    Args:
        cfg: the resolved run config (`cfg.transcoder.kind == "transcoder"`).
        model: an already loaded model (else `cfg.data.model` is loaded).
        progress: log one line per segment (the bar of single-SAE runs is per step).

    Returns:
        A `scope.train.output.TrainResult` whose `sae` is the list of transcoders, shallowest
        first, and whose `report` is the content of `out/report.json`.
    """
    from scope.model.activations import site_width, validate_hook_names

    _check(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    model = model if model is not None else load_run_model(cfg)
    layer_ids = cfg.transcoder.layer_list(model.cfg.n_layers)
    ins, outs = seg.sites(cfg, layer_ids)
    validate_hook_names(model, ins + outs)
    d_in, d_out = site_width(model, ins[0]), site_width(model, outs[0])
    n_segments, total = plan(cfg)
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    folder = run_dir / "segments" / "train"
    layers = [LayerTrainer(L, cfg, d_in, d_out, total) for L in layer_ids]
    ckpt, progress_file = run_dir / CHECKPOINT_FILENAME, run_dir / PROGRESS_FILENAME
    meta = load_run(ckpt, layers, cfg) if cfg.run.resume else None
    done = int(meta["segments_done"]) if meta else 0
    seconds = float(meta.get("train_seconds", 0.0)) if meta else 0.0
    tokens = int(meta.get("tokens", 0)) if meta else 0
    if meta is None:
        progress_file.unlink(missing_ok=True)
    log.info("transcoders for layers %s: %d features, %d segments of %d windows, ~%d steps of %d",
             layer_ids, cfg.optim.d_sae, n_segments, cfg.transcoder.segment_windows, total,
             cfg.optim.batch_size)
    source = _Source(model, cfg, layer_ids, folder, done, n_segments)
    last_ckpt = layers[0].fitter.state.step
    try:
        for index in range(done, n_segments):
            t0 = time.time()
            data = source.get(index)
            if index == 0 and meta is None:
                for k, lt in enumerate(layers):
                    lt.start(data["x"][k].float(), data["y"][k].float())
            train_segment(layers, data, seed=cfg.optim.seed, index=index,
                          batch_size=cfg.optim.batch_size)
            seg.segment_path(folder, index).unlink(missing_ok=True)
            n = data["x"].shape[1]
            tokens += n
            seconds += time.time() - t0
            records = {lt.layer: lt.fitter.record(time.time() - t0) for lt in layers}
            _log_segment(index, n_segments, records, tokens, seconds, total, progress)
            with open(progress_file, "a") as fh:
                fh.write(json.dumps({"segment": index, "tokens": tokens,
                                     "seconds": round(seconds, 1), "layers": records}) + "\n")
            step = layers[0].fitter.state.step
            if step - last_ckpt >= cfg.run.checkpoint_every or index == n_segments - 1:
                save_run(ckpt, layers, index + 1, cfg, {"tokens": tokens,
                                                        "train_seconds": seconds})
                last_ckpt = step
    finally:
        source.close()
    report = {"training": {"tokens": tokens, "steps": layers[0].fitter.state.step,
                           "train_seconds": round(seconds, 1),
                           "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                           "forward_passes_this_session": source.forwards,
                           "segments": n_segments, "width": cfg.optim.d_sae, "machine": _machine(cfg)}}
    return TrainResult(*finish(model, layers, cfg, report, d_in=d_in, d_out=d_out))


def finish_from_checkpoint(cfg: TrainConfig, *, model: Any = None) -> TrainResult:
    """Fold, evaluate and save the transcoders of a run's latest checkpoint (a run stopped
    before its last segment: its report says how far it got).

    Raises:
        CheckpointError: no usable checkpoint of this config in `cfg.run.run_dir`.
    """
    from scope.errors import CheckpointError
    from scope.model.activations import site_width

    model = model if model is not None else load_run_model(cfg)
    layer_ids = cfg.transcoder.layer_list(model.cfg.n_layers)
    ins, outs = seg.sites(cfg, layer_ids)
    d_in, d_out = site_width(model, ins[0]), site_width(model, outs[0])
    n_segments, total = plan(cfg)
    layers = [LayerTrainer(L, cfg, d_in, d_out, total) for L in layer_ids]
    ckpt = Path(cfg.run.run_dir) / CHECKPOINT_FILENAME
    meta = load_run(ckpt, layers, cfg)
    if meta is None:
        raise CheckpointError(f"{ckpt}: no checkpoint of this config to finish from; run "
                              "`scope train` with it first")
    tokens, seconds = int(meta.get("tokens", 0)), float(meta.get("train_seconds", 0.0))
    report = {"training": {"tokens": tokens, "steps": layers[0].fitter.state.step,
                           "train_seconds": round(seconds, 1),
                           "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                           "segments": n_segments, "width": cfg.optim.d_sae, "segments_done": meta["segments_done"],
                           "stopped_early": meta["segments_done"] < n_segments,
                           "note": f"finished from the checkpoint after {meta['segments_done']} "
                                   f"of {n_segments} segments (step {layers[0].fitter.state.step}"
                                   f" of ~{total}, the schedule unfinished)"
                           if meta["segments_done"] < n_segments else "",
                           "machine": _machine(cfg)}}
    return TrainResult(*finish(model, layers, cfg, report, d_in=d_in, d_out=d_out))


def _log_segment(index: int, n_segments: int, records: dict[int, dict], tokens: int,
                 seconds: float, total: int, progress: bool) -> None:
    fvus = [r["fvu"] for r in records.values()]
    l0s = [r["l0"] for r in records.values()]
    log.info("segment %d/%d  %s tokens  %.0f tok/s  FVU mean %.3f (max %.3f)  L0 mean %.1f  "
             "(%.0f s)", index + 1, n_segments, f"{tokens:,}", tokens / max(seconds, 1e-9),
             sum(fvus) / len(fvus), max(fvus), sum(l0s) / len(l0s), seconds)
    if progress:
        for layer, record in records.items():
            log_record(record, total, prefix=f"  layer {layer}: ")


def _machine(cfg: TrainConfig) -> dict[str, Any]:
    import os

    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "workers": cfg.transcoder.workers}


def finish(model: Any, layers: list[LayerTrainer], cfg: TrainConfig, report: dict[str, Any], *,
           d_in: int, d_out: int) -> tuple[list[Any], Path, dict[str, Any]]:
    """Fold, evaluate on held-out text and save every layer; (transcoders, out folder, report)."""
    from scope.pipeline.corpus import token_windows
    from scope.pipeline.demo_corpus import corpus_for
    from scope.train.tc_eval import ABLATION, evaluate_transcoders, quality_verdict

    model_name = getattr(model.cfg, "model_name", "") or cfg.data.model
    inference = [to_inference(lt, cfg, d_in=d_in, d_out=d_out, model_name=model_name)
                 for lt in layers]
    out = Path(cfg.run.out)
    inference = [cast_for_saving(tc, cfg.run.save_dtype) for tc in inference]
    for lt, tc in zip(layers, inference, strict=True):  # saved before the (long) evaluation
        tc.save(out / f"layer_{lt.layer}")
    d = cfg.data
    n_windows = max(1, math.ceil(d.eval_tokens / (d.ctx - cfg.transcoder.outlier_prefix)))
    windows = torch.stack(list(token_windows(corpus_for(d.corpus, "heldout"),
                                             model.tokenizer, ctx=d.ctx,
                                             max_tokens=n_windows * d.ctx)))
    t0 = time.time()
    model_dtype = next(model.parameters()).dtype
    per_layer = evaluate_transcoders(model, [_copy(tc).to(model_dtype) for tc in inference],
                                     windows,
                                     ce_windows=cfg.run.eval_lm_windows,
                                     prefix=cfg.transcoder.outlier_prefix)
    report["heldout"] = {"windows": len(windows), "ce_windows": min(cfg.run.eval_lm_windows,
                                                                     len(windows)),
                         "ce_loss_score_baseline": f"{ABLATION}-ablation of the MLP output at "
                         "every evaluated position (BOS/outliers keep theirs)",
                         "eval_seconds": round(time.time() - t0, 1)}
    report["layers"] = {str(lt.layer): rec for lt, rec in zip(layers, per_layer, strict=True)}
    report["quality"] = quality_verdict(report["layers"])
    report["config"] = cfg.to_flat()
    saved = []
    for lt, tc, rec in zip(layers, inference, per_layer, strict=True):
        tc.cfg.extra["report"] = rec
        tc.save(out / f"layer_{lt.layer}")
        saved.append(tc)
    (out / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    log.info("saved %d transcoders to %s", len(saved), out)
    return saved, out, report


def _copy(tc: Any) -> Any:
    """A copy of an inference SAE (casting one in place would change the saved dtype)."""
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    return JumpReLUSAE.from_tensors(SAEConfig.from_dict(tc.cfg.to_dict()),
                                    {k: v.clone() for k, v in tc.state_tensors().items()})


def to_inference(lt: LayerTrainer, cfg: TrainConfig, *, d_in: int, d_out: int,
                 model_name: str) -> Any:
    """The float32 inference `JumpReLUSAE` (kind "transcoder") of one layer's trainer."""
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    t, f = cfg.transcoder, lt.fitter
    sae_id = cfg.run.sae_id.format(L=lt.layer) if cfg.run.sae_id else f"layer_{lt.layer}"
    sae_cfg = SAEConfig(
        d_in=d_in, d_sae=lt.sae.d_sae, d_out=d_out, hook_name=t.hook_in.format(L=lt.layer),
        hook_name_out=t.hook_out.format(L=lt.layer), model_name=model_name,
        release=cfg.run.release, sae_id=sae_id, kind="transcoder",
        extra={"training": cfg.to_flat(), "normalisation_scale": f.scale,
               "normalisation_scale_out": f.scale_out, "layer": lt.layer,
               OUTLIER_PREFIX_KEY: t.outlier_prefix,
               "trainer": "scope.train.transcoders (JumpReLU, Gemma Scope recipe)"})
    return JumpReLUSAE.from_tensors(sae_cfg, lt.sae.folded_tensors(f.scale, f.scale_out))
