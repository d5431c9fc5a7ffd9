"""The JumpReLU training loop and the `scope train` pipeline.

`fit` trains a `JumpReLUTrainingSAE` on a stream of raw activation batches: it multiplies them
by the run's scale (E||x||^2 = 1), warms up the L0 coefficient and the learning rate, keeps the
decoder rows at unit norm, tracks dead features, logs loss / L0 / FVU, and checkpoints so a
killed run resumes and replays the same batches. `train(cfg)` is the whole pipeline behind
`scope train`: capture activations of the corpus's train and held-out splits into a cache, fit,
fold the scale into the weights, evaluate on held-out text and save a native `JumpReLUSAE`
with the resolved config and the report beside it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from scope.train.buffer import ActivationCache, shuffled_batches
from scope.train.capture import cache_folder, cache_key
from scope.train.checkpoint import (
    CHECKPOINT_FILENAME,
    STATE_FIELDS,
    config_differs,
    read_checkpoint,
    restore_state,
    state_meta,
    state_tensors,
    warn_legacy,
    write_checkpoint,
)
from scope.train.config import RESUME_KEYS, TrainConfig
from scope.train.jumprelu import JumpReLUTrainingSAE
from scope.train.loop import FitState, fit, l0_coefficient_at, lr_at, make_optimizer
from scope.train.output import TrainResult, cast_for_saving, load_run_model

__all__ = ["FitState", "TrainResult", "cache_folder", "cast_for_saving", "fit", "heldout_report",
           "l0_coefficient_at",
           "load_checkpoint", "lr_at", "make_optimizer", "prepare_data", "save_checkpoint",
           "to_inference", "train"]

log = logging.getLogger(__name__)

PROGRESS_FILENAME = "progress.jsonl"
TRAINING_CONFIG_FILENAME = "training_config.json"
REPORT_FILENAME = "report.json"
#: training activations the report's `train_sample` figures (L0, FVU, dead fraction) use
TRAIN_SAMPLE_TOKENS = 400_000


# --------------------------------------------------------------------------------------------
# checkpoints of a single-SAE run
# --------------------------------------------------------------------------------------------

#: JSON fields of a single-SAE checkpoint and the types they must have
_CHECKPOINT_FIELDS = {**STATE_FIELDS, "scale": float, "config": dict}


def save_checkpoint(path: Path, sae: JumpReLUTrainingSAE, optimizer: torch.optim.Optimizer,
                    state: FitState, scale: float, cfg: TrainConfig) -> None:
    """Write a resumable checkpoint atomically: tensors in safetensors, the rest as JSON."""
    write_checkpoint(path, state_tensors(sae, optimizer, state),
                     {**state_meta(state), "scale": scale, "config": cfg.to_flat()})
    log.debug("checkpoint at step %d -> %s", state.step, path)


def load_checkpoint(path: Path, sae: JumpReLUTrainingSAE, optimizer: torch.optim.Optimizer,
                    cfg: TrainConfig) -> tuple[FitState, float] | None:
    """Restore a checkpoint made under the same optimisation settings, else return None.

    Raises:
        CheckpointError: the file is not a complete scope checkpoint of this SAE's shape.
    """
    path = Path(path)
    if not path.is_file():
        return None
    tensors, meta = read_checkpoint(path, _CHECKPOINT_FIELDS)
    differs = config_differs(meta["config"], cfg.to_flat(), RESUME_KEYS)
    if differs:
        log.warning("%s was made with different %s; starting afresh", path, ", ".join(differs))
        return None
    state = restore_state(path, tensors, meta, sae, optimizer)
    log.info("resuming from %s at step %d", path, state.step)
    return state, float(meta["scale"])


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def prepare_data(cfg: TrainConfig, model: Any = None) -> tuple[ActivationCache, ActivationCache]:
    """Fill (or reuse) the activation caches of the train and held-out splits.

    Args:
        cfg: the run config.
        model: a loaded model (loaded from `cfg.data.model` only when a cache needs filling).

    Returns:
        (train cache, held-out cache), both complete.
    """
    from scope.pipeline.demo_corpus import corpus_for

    caches = []
    for split, n_tokens in (("train", cfg.data.train_tokens), ("heldout", cfg.data.eval_tokens)):
        folder = cache_folder(cfg, split)
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            cache = ActivationCache.open(folder)
            if cache is not None and cache.meta["key"] == cache_key(cfg, split) and (
                    cache.complete and cache.tokens >= n_tokens):
                caches.append(cache)
                continue
        model = model if model is not None else load_run_model(cfg)
        from scope.model.activations import site_width

        d_in = site_width(model, cfg.data.hook_name)
        cache = ActivationCache(folder, key=cache_key(cfg, split), d_in=d_in)
        if cache.complete and cache.tokens < n_tokens:
            cache.meta["complete"] = False  # asked for more than last time: extend it
        corpus = corpus_for(cfg.data.corpus, split)
        from scope.train.capture import fill_cache

        caches.append(fill_cache(model, corpus, cache, hook_name=cfg.data.hook_name,
                                 ctx=cfg.data.ctx, n_tokens=n_tokens,
                                 batch_size=cfg.data.capture_batch_size, desc=f"capture {split}"))
    return caches[0], caches[1]


def estimate_scale(cache: ActivationCache, n: int = 1 << 16) -> tuple[float, torch.Tensor]:
    """Scale with E||scale * x||^2 = 1 and the mean activation [d_in], from a sample of the cache."""
    sample = cache.sample(n).double()
    scale = 1.0 / math.sqrt(float(sample.pow(2).sum(dim=-1).mean()))
    return scale, sample.mean(dim=0).float()


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


def to_inference(sae: JumpReLUTrainingSAE, scale: float, cfg: TrainConfig, *, d_in: int,
                 model_name: str = "", extra: dict[str, Any] | None = None) -> Any:
    """The inference `JumpReLUSAE` of a training SAE, reading raw activations (float32).

    Args:
        sae: the trained SAE (normalised scale).
        scale: the run's normalisation factor, folded into the weights here.
        cfg: the run config (hook name, release, sae_id; written into `cfg.extra["training"]`).
        d_in: activation width.
        model_name: the model's short name.
        extra: more entries for `cfg.extra`.

    Returns:
        A float32 `scope.saes.sae.JumpReLUSAE`.
    """
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    sae_cfg = SAEConfig(
        d_in=d_in, d_sae=sae.d_sae, hook_name=cfg.data.hook_name,
        model_name=model_name or cfg.data.model, release=cfg.run.release, sae_id=cfg.run.sae_id,
        extra={"training": cfg.to_flat(), "normalisation_scale": scale,
               "trainer": "scope.train (JumpReLU, Gemma Scope recipe)", **(extra or {})},
    )
    return JumpReLUSAE.from_tensors(sae_cfg, sae.folded_tensors(scale))


def heldout_report(sae: Any, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """L0, FVU and dead fraction of an inference SAE on raw held-out activations [n, d_in].

    The same definitions as `scope eval` (`scope.pipeline.evals.reconstruction_stats`): FVU is a ratio of
    sums over every token; a feature is dead when it fires on none of the tokens.
    """
    from scope.pipeline.evals import reconstruction_stats

    return reconstruction_stats(sae, acts, batch_size=batch_size)


def _lm_report(model: Any, sae: Any, cfg: TrainConfig) -> dict[str, float]:
    """Delta LM loss (and L0/FVU in context) on `eval_lm_windows` held-out windows."""
    from scope.pipeline.corpus import token_windows
    from scope.pipeline.demo_corpus import corpus_for
    from scope.pipeline.evals import evaluate

    n = cfg.run.eval_lm_windows
    windows = token_windows(corpus_for(cfg.data.corpus, "heldout"), model.tokenizer,
                            ctx=cfg.data.ctx, max_tokens=n * cfg.data.ctx)
    tokens = torch.stack(list(windows))[:n]  # [batch, pos]
    model_sae = sae.to(next(model.parameters()).dtype)
    rep = evaluate(model, model_sae, tokens, batch_size=8, progress=False)
    return {"delta_lm_loss": rep.delta_lm_loss, "clean_lm_loss": rep.clean_loss,
            "spliced_lm_loss": rep.spliced_loss, "lm_eval_l0": rep.l0, "lm_eval_fvu": rep.fvu,
            "lm_eval_tokens": rep.n_tokens}


def train(cfg: TrainConfig, *, model: Any = None, progress: bool = True) -> TrainResult:
    """Capture, fit, fold, evaluate and save: the whole `scope train` run.

    Args:
        cfg: the resolved run config.
        model: an already loaded model (else `cfg.data.model` is loaded when needed).
        progress: show progress bars.

    Returns:
        A `TrainResult`; the SAE is saved in `cfg.run.out` with `training_config.json` and
        `report.json` beside it.
    """
    if cfg.transcoder.kind == "transcoder":  # one per layer, from one forward pass per batch
        from scope.train.transcoders import train_transcoders

        return train_transcoders(cfg, model=model, progress=progress)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    run_dir = Path(cfg.run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_cache, eval_cache = prepare_data(cfg, model)
    d_in, o = train_cache.d_in, cfg.optim
    total = int(o.epochs * train_cache.tokens) // o.batch_size
    log.info("training %d features on %s activations: %d steps of %d", o.d_sae,
             f"{train_cache.tokens:,}", total, o.batch_size)

    gen = torch.Generator().manual_seed(o.seed)
    sae = JumpReLUTrainingSAE(d_in, o.d_sae, threshold_init=o.threshold_init,
                              bandwidth=o.bandwidth, generator=gen)
    optimizer = make_optimizer(sae, o)
    ckpt = run_dir / CHECKPOINT_FILENAME
    warn_legacy(run_dir)
    progress_file = run_dir / PROGRESS_FILENAME
    resumed = load_checkpoint(ckpt, sae, optimizer, cfg) if cfg.run.resume else None
    if resumed is not None:
        state, scale = resumed
    else:
        scale, mean = estimate_scale(train_cache)
        sae.init_b_dec(mean * scale)
        state = FitState()
        progress_file.unlink(missing_ok=True)
    log.info("normalisation scale %.6g (E||x||^2 = 1 after scaling)", scale)
    batches = shuffled_batches(train_cache, o.batch_size, seed=o.seed, start_step=state.step)
    started = time.time()
    state = fit(sae, batches, o, total, scale=scale, optimizer=optimizer, state=state,
                log_every=cfg.run.log_every, checkpoint_every=cfg.run.checkpoint_every,
                on_checkpoint=lambda s: save_checkpoint(ckpt, sae, optimizer, s, scale, cfg),
                progress=progress, progress_file=progress_file)
    train_seconds = time.time() - started

    if cfg.run.eval_lm_windows and model is None:
        model = load_run_model(cfg)
    model_name = getattr(getattr(model, "cfg", None), "model_name", "") or cfg.data.model
    inference = cast_for_saving(
        to_inference(sae, scale, cfg, d_in=d_in, model_name=model_name), cfg.run.save_dtype)
    report: dict[str, Any] = {"heldout": heldout_report(inference.float(), eval_cache.all())}
    # "dead" depends on the window: also count features that never fire on a larger sample of
    # the training activations
    report["train_sample"] = heldout_report(inference, train_cache.sample(TRAIN_SAMPLE_TOKENS))
    inference = cast_for_saving(inference, cfg.run.save_dtype)  # .float() above cast in place
    if cfg.run.eval_lm_windows:
        report["heldout"].update(_lm_report(model, inference, cfg))
        inference = cast_for_saving(inference, cfg.run.save_dtype)
    report["training"] = {"steps": state.step, "batch_size": o.batch_size,
                          "tokens_seen": state.step * o.batch_size,
                          "train_activations": train_cache.tokens,
                          "seconds_this_session": round(train_seconds, 1),
                          "last_progress": state.history[-1] if state.history else None}
    log.info("held-out: %s", json.dumps(report["heldout"]))
    inference.cfg.extra["report"] = report
    out = Path(cfg.run.out)
    inference.save(out)
    (out / TRAINING_CONFIG_FILENAME).write_text(json.dumps(cfg.to_flat(), indent=2) + "\n")
    (out / REPORT_FILENAME).write_text(json.dumps(report, indent=2) + "\n")
    log.info("saved %s (%s)", out, inference.cfg.dtype)
    return TrainResult(inference, out, report)
