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

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from scope.base.atomic import atomic_write
from scope.errors import CheckpointError
from scope.train.buffer import ActivationCache, shuffled_batches
from scope.train.config import OptimConfig, TrainConfig
from scope.train.jumprelu import JumpReLUTrainingSAE

log = logging.getLogger(__name__)

CHECKPOINT_FILENAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "scope.train.checkpoint/1"
#: the pickle checkpoint of earlier versions: never loaded (unpickling can run code)
LEGACY_CHECKPOINT_FILENAME = "checkpoint.pt"
PROGRESS_FILENAME = "progress.jsonl"
TRAINING_CONFIG_FILENAME = "training_config.json"
REPORT_FILENAME = "report.json"
#: training activations the report's `train_sample` figures (L0, FVU, dead fraction) use
TRAIN_SAMPLE_TOKENS = 400_000
#: the optimisation is fully determined by these config keys; a checkpoint made under others
#: is not resumed
_RESUME_KEYS = ("model", "hook_name", "corpus", "ctx", "train_tokens", "d_sae", "l0_coefficient",
                "l0_warmup_steps", "bandwidth", "threshold_init", "lr", "lr_warmup_steps",
                "lr_decay_fraction", "adam_betas", "batch_size", "epochs", "dead_steps",
                "dead_coefficient", "target_l0", "spike_clip", "seed")


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


@dataclass
class FitState:
    """Everything a resumed `fit` needs besides the SAE parameters."""

    step: int = 0
    """Optimiser steps done."""
    steps_since_fired: torch.Tensor | None = None
    """[d_sae] steps since each feature last fired (dead-feature tracking)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Progress records (one per log interval)."""
    l0_scale: float = 1.0
    """Multiplier of the L0 coefficient set by the `target_l0` controller (1 without it)."""
    grad_norm_ema: float = 0.0
    """Running mean of the gradient norm (for `spike_clip`)."""
    clipped: int = 0
    """Steps whose gradient `spike_clip` scaled down."""


def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate at `step`: linear warmup from 10%, constant, linear decay to 0 at the end."""
    lr = cfg.lr
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        lr *= 0.1 + 0.9 * step / cfg.lr_warmup_steps
    decay_start = int(total * (1.0 - cfg.lr_decay_fraction))
    if step >= decay_start and total > decay_start:
        lr *= max(0.0, (total - step) / (total - decay_start))
    return lr


def l0_coefficient_at(step: int, cfg: OptimConfig) -> float:
    """L0 coefficient at `step`: linear warmup from 0 over `l0_warmup_steps`."""
    if cfg.l0_warmup_steps and step < cfg.l0_warmup_steps:
        return cfg.l0_coefficient * (step + 1) / cfg.l0_warmup_steps
    return cfg.l0_coefficient


def make_optimizer(sae: JumpReLUTrainingSAE, cfg: OptimConfig) -> torch.optim.Adam:
    """Adam over every parameter with the config's betas (Gemma Scope: beta1 = 0)."""
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)


def fit(sae: JumpReLUTrainingSAE, batches: Iterator[torch.Tensor], cfg: OptimConfig,
        total_steps: int, *, scale: float = 1.0, optimizer: torch.optim.Optimizer | None = None,
        state: FitState | None = None, log_every: int = 25,
        on_checkpoint: Callable[[FitState], None] | None = None, checkpoint_every: int = 0,
        progress: bool = True, progress_file: str | os.PathLike | None = None) -> FitState:
    """Train `sae` for `total_steps` optimiser steps (or resume up to them).

    Args:
        sae: the training SAE (modified in place).
        batches: raw activation batches [batch, d_in]; the first one used is step `state.step`'s.
        cfg: optimisation settings.
        total_steps: the step count the schedule is laid out for.
        scale: multiplies every batch (the run's normalisation, E||scale * x||^2 = 1).
        optimizer: an optimizer over `sae`'s parameters (made here when None).
        state: where to resume from (a fresh start when None).
        log_every: steps between progress records.
        on_checkpoint: called with the state every `checkpoint_every` steps and at the end.
        checkpoint_every: 0 disables periodic checkpoints.
        progress: show a tqdm bar (tokens/s, ETA, loss, L0, FVU).
        progress_file: append progress records as JSON lines here.

    Returns:
        The final `FitState`.
    """
    optimizer = optimizer or make_optimizer(sae, cfg)
    state = state or FitState()
    if state.steps_since_fired is None:
        state.steps_since_fired = torch.zeros(sae.d_sae, dtype=torch.long)
    sums = _Sums()
    density = 1.0  # fraction of features firing at the previous step
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not progress, mininterval=5.0)
    start = time.time()
    while state.step < total_steps:
        x = next(batches).float() * scale  # [batch, d_in]
        lr = lr_at(state.step, total_steps, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dead = state.steps_since_fired >= cfg.dead_steps
        lam = l0_coefficient_at(state.step, cfg) * state.l0_scale
        optimizer.zero_grad(set_to_none=True)
        if density < cfg.sparse_below:  # same gradients as the autograd reference, faster
            out = sae.sparse_step(x, lam, dead, cfg.dead_coefficient)
        else:
            out = sae(x, lam, dead, cfg.dead_coefficient)
            out.loss.backward()
        density = float(out.l0) / sae.d_sae
        if cfg.spike_clip:  # a rare huge-norm activation must not blow up Adam (beta1 = 0)
            norm = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in sae.parameters())))
            if state.grad_norm_ema and norm > cfg.spike_clip * state.grad_norm_ema:
                for p in sae.parameters():
                    p.grad.mul_(cfg.spike_clip * state.grad_norm_ema / norm)
                state.clipped += 1
                norm = cfg.spike_clip * state.grad_norm_ema
            state.grad_norm_ema = norm if not state.grad_norm_ema else (
                0.99 * state.grad_norm_ema + 0.01 * norm)
        if cfg.target_l0 and state.step >= cfg.l0_warmup_steps:
            # multiplicative controller: at most +-1% per step, towards the target L0
            error = max(-1.0, min(1.0, float(out.l0) / cfg.target_l0 - 1.0))
            state.l0_scale *= math.exp(0.01 * error)
        sae.project_decoder_grad()
        optimizer.step()
        sae.normalize_decoder()
        sae.clamp_threshold()
        fired = out.fired.any(dim=0)
        state.steps_since_fired += 1
        state.steps_since_fired[fired] = 0
        state.step += 1
        sums.add(x, out)
        bar.update(1)
        if state.step % log_every == 0 or state.step == total_steps:
            record = sums.record(state.step, lr, float((state.steps_since_fired >=
                                                        cfg.dead_steps).float().mean()))
            record["l0_coefficient"] = lam
            record["clipped_steps"] = state.clipped
            record["tokens_per_s"] = round(sums.tokens / max(time.time() - start, 1e-9), 1)
            state.history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", l0=f"{record['l0']:.1f}",
                            fvu=f"{record['fvu']:.3f}", dead=f"{record['dead']:.2f}")
            log.info("step %d/%d  loss %.4f  mse %.4f  L0 %.1f  FVU %.4f  dead %.3f  lr %.2e  "
                     "lambda %.2e", state.step, total_steps, record["loss"], record["mse"],
                     record["l0"], record["fvu"], record["dead"], lr, lam)
            if progress_file is not None:
                with open(progress_file, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            sums = _Sums()
            start = time.time()
        if on_checkpoint and checkpoint_every and state.step % checkpoint_every == 0:
            on_checkpoint(state)
    bar.close()
    if on_checkpoint:
        on_checkpoint(state)
    return state


class _Sums:
    """Running sums over one log interval; FVU is a ratio of sums (docs/saes.md, "Metrics")."""

    def __init__(self) -> None:
        self.n = self.tokens = 0
        self.loss = self.mse = self.l0 = self.var = 0.0

    def add(self, x: torch.Tensor, out: Any) -> None:
        self.n += 1
        self.tokens += len(x)
        self.loss += float(out.loss.detach())
        self.mse += float(out.mse)
        self.l0 += float(out.l0)
        # per-token variance around this batch's mean, summed like the MSE
        self.var += float((x - x.mean(dim=0)).pow(2).sum(dim=-1).mean())

    def record(self, step: int, lr: float, dead: float) -> dict[str, float]:
        n = max(self.n, 1)
        return {"step": step, "loss": self.loss / n, "mse": self.mse / n, "l0": self.l0 / n,
                "fvu": self.mse / max(self.var, 1e-12), "dead": dead, "lr": lr}


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


def save_checkpoint(path: Path, sae: JumpReLUTrainingSAE, optimizer: torch.optim.Optimizer,
                    state: FitState, scale: float, cfg: TrainConfig) -> None:
    """Write a resumable checkpoint atomically: tensors in safetensors, the rest as JSON.

    The file holds only tensors and one JSON string in the safetensors header (no pickle), so
    loading a checkpoint from someone else's run folder can never run code.
    """
    tensors = {f"sae.{k}": v.detach().contiguous() for k, v in sae.state_dict().items()}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = value.detach().contiguous()
    tensors["steps_since_fired"] = state.steps_since_fired.contiguous()
    meta = {"format": CHECKPOINT_FORMAT, "step": state.step, "history": state.history,
            "l0_scale": state.l0_scale, "grad_norm_ema": state.grad_norm_ema,
            "clipped": state.clipped, "scale": scale, "config": cfg.to_flat()}
    header = {"scope_checkpoint": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
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
    tensors, meta = _read_checkpoint(path)
    old, new = meta["config"], cfg.to_flat()
    differs = [k for k in _RESUME_KEYS if old.get(k) != new.get(k)]
    if differs:
        log.warning("%s was made with different %s; starting afresh", path, ", ".join(differs))
        return None
    sae_state = {k[len("sae."):]: v for k, v in tensors.items() if k.startswith("sae.")}
    expected = {k: v.shape for k, v in sae.state_dict().items()}
    got = {k: v.shape for k, v in sae_state.items()}
    if got != expected:
        raise _bad_checkpoint(path, f"SAE tensors {got} do not match this run's {expected}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            if not index.isdigit() or int(index) >= len(params):
                raise _bad_checkpoint(path, f"optimizer entry {key!r} has no parameter")
            optim_state.setdefault(int(index), {})[name] = value
    for index, entry in optim_state.items():
        for name, value in entry.items():
            if value.dim() and value.shape != params[index].shape:
                raise _bad_checkpoint(path, f"optimizer entry optim.{index}.{name} has shape "
                                      f"{tuple(value.shape)}, expected {tuple(params[index].shape)}")
    fired = tensors.get("steps_since_fired")
    if fired is None or fired.shape != (sae.d_sae,) or fired.dtype != torch.long:
        raise _bad_checkpoint(path, f"steps_since_fired must be int64 [{sae.d_sae}]")
    sae.load_state_dict(sae_state)
    optimizer.load_state_dict({"state": optim_state,
                               "param_groups": optimizer.state_dict()["param_groups"]})
    state = FitState(meta["step"], fired, meta["history"], meta["l0_scale"],
                     meta["grad_norm_ema"], meta["clipped"])
    log.info("resuming from %s at step %d", path, state.step)
    return state, float(meta["scale"])


#: JSON fields of a checkpoint and the types they must have
_CHECKPOINT_FIELDS = {"step": int, "history": list, "l0_scale": float, "grad_norm_ema": float,
                      "clipped": int, "scale": float, "config": dict}


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON fields of a checkpoint file, or CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for any corrupt header
        raise _bad_checkpoint(path, f"not a safetensors file ({exc})") from None
    try:
        meta = json.loads(header.get("scope_checkpoint", ""))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise _bad_checkpoint(path, f"no {CHECKPOINT_FORMAT!r} header")
    for name, kind in _CHECKPOINT_FIELDS.items():
        value = meta.get(name)
        ok = isinstance(value, kind) and not isinstance(value, bool) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise _bad_checkpoint(path, f"field {name!r} is {value!r}, expected {kind.__name__}")
    return tensors, meta


def _bad_checkpoint(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable scope training checkpoint: {why}. Delete it "
                           "(or set resume: false) to start the run afresh.")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def cache_folder(cfg: TrainConfig, split: str) -> Path:
    """Activation-cache folder of one corpus split for this run's model, hook, corpus and ctx."""
    key = json.dumps(_cache_key(cfg, split), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cfg.run.run_dir) / "cache" / f"{split}-{digest}"


def _cache_key(cfg: TrainConfig, split: str) -> dict[str, Any]:
    d = cfg.data
    return {"model": d.model, "hook_name": d.hook_name, "corpus": d.corpus, "split": split,
            "ctx": d.ctx}


def prepare_data(cfg: TrainConfig, model: Any = None) -> tuple[ActivationCache, ActivationCache]:
    """Fill (or reuse) the activation caches of the train and held-out splits.

    Args:
        cfg: the run config.
        model: a loaded model (loaded from `cfg.data.model` only when a cache needs filling).

    Returns:
        (train cache, held-out cache), both complete.
    """
    from scope.pipeline.corpus import Corpus

    caches = []
    for split, n_tokens in (("train", cfg.data.train_tokens), ("heldout", cfg.data.eval_tokens)):
        folder = cache_folder(cfg, split)
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            cache = ActivationCache.open(folder)
            if cache is not None and cache.meta["key"] == _cache_key(cfg, split) and (
                    cache.complete and cache.tokens >= n_tokens):
                caches.append(cache)
                continue
        model = model if model is not None else _load_model(cfg)
        from scope.model.activations import site_width

        d_in = site_width(model, cfg.data.hook_name)
        cache = ActivationCache(folder, key=_cache_key(cfg, split), d_in=d_in)
        if cache.complete and cache.tokens < n_tokens:
            cache.meta["complete"] = False  # asked for more than last time: extend it
        corpus = Corpus(source=cfg.data.corpus, split=split)
        from scope.train.capture import fill_cache

        caches.append(fill_cache(model, corpus, cache, hook_name=cfg.data.hook_name,
                                 ctx=cfg.data.ctx, n_tokens=n_tokens,
                                 batch_size=cfg.data.capture_batch_size, desc=f"capture {split}"))
    return caches[0], caches[1]


def _load_model(cfg: TrainConfig) -> Any:
    from scope.model.load import load_model

    log.info("loading model %s", cfg.data.model)
    return load_model(cfg.data.model)


def estimate_scale(cache: ActivationCache, n: int = 1 << 16) -> tuple[float, torch.Tensor]:
    """Scale with E||scale * x||^2 = 1 and the mean activation [d_in], from a sample of the cache."""
    sample = cache.sample(n).double()
    scale = 1.0 / math.sqrt(float(sample.pow(2).sum(dim=-1).mean()))
    return scale, sample.mean(dim=0).float()


# --------------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train` produced."""

    sae: Any
    """The trained `JumpReLUSAE` (raw-activation weights, in the saved dtype)."""
    out: Path
    """Folder it was saved to."""
    report: dict[str, Any]
    """Held-out figures (see `heldout_report`) and training facts."""


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


def cast_for_saving(sae: Any, dtype_name: str) -> Any:
    """Cast to the save dtype; float16 falls back to bfloat16 if a weight would overflow it."""
    from scope.base.dtypes import dtype_name as canonical
    from scope.base.dtypes import to_torch_dtype

    dtype_name = canonical(dtype_name)
    if dtype_name == "float16":
        biggest = max(float(t.abs().max()) for t in sae.state_tensors().values())
        if biggest > torch.finfo(torch.float16).max / 2:
            log.warning("a weight of magnitude %.3g does not fit float16; saving bfloat16",
                        biggest)
            dtype_name = "bfloat16"
    return sae.to(to_torch_dtype(dtype_name))


def heldout_report(sae: Any, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """L0, FVU and dead fraction of an inference SAE on raw held-out activations [n, d_in].

    The same definitions as `scope eval` (`scope.pipeline.evals.reconstruction_stats`): FVU is a ratio of
    sums over every token; a feature is dead when it fires on none of the tokens.
    """
    from scope.pipeline.evals import reconstruction_stats

    return reconstruction_stats(sae, acts, batch_size=batch_size)


def _lm_report(model: Any, sae: Any, cfg: TrainConfig) -> dict[str, float]:
    """Delta LM loss (and L0/FVU in context) on `eval_lm_windows` held-out windows."""
    from scope.pipeline.corpus import Corpus, token_windows
    from scope.pipeline.evals import evaluate

    n = cfg.run.eval_lm_windows
    windows = token_windows(Corpus(source=cfg.data.corpus, split="heldout"), model.tokenizer,
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
    if (run_dir / LEGACY_CHECKPOINT_FILENAME).is_file():
        log.warning("%s is a pickle checkpoint of an older scope; it is never loaded (unpickling "
                    "can run code). Resuming only from %s.", run_dir / LEGACY_CHECKPOINT_FILENAME,
                    CHECKPOINT_FILENAME)
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
        model = _load_model(cfg)
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
