"""The optimisation loop of a JumpReLU dictionary: schedules, one step, and `fit`.

`Fitter` owns everything one optimiser step does to one dictionary (SAE or transcoder): scale
the raw batch to the run's normalisation, warm up the L0 coefficient and the learning rate, take
the (sparse or autograd) step, clip spiking gradients, nudge lambda towards a target L0, keep the
decoder rows at unit norm and track dead features. `fit` drives one `Fitter` from a stream of
batches with a progress bar, log records and checkpoints; the multi-layer transcoder trainer
drives one `Fitter` per layer from the same captured batch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from scope.train.config import OptimConfig

log = logging.getLogger(__name__)


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


def make_optimizer(sae: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    """Adam over every parameter with the config's betas (Gemma Scope: beta1 = 0)."""
    return torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.adam_betas)


class Fitter:
    """One dictionary's optimiser steps, its state and its running log sums.

    Works for `JumpReLUTrainingSAE` (target = input) and `JumpReLUTrainingTranscoder` (a target
    at another site, with its own scale); only SAEs take the sparse-product step.
    """

    def __init__(self, sae: Any, cfg: OptimConfig, total_steps: int, *, scale: float = 1.0,
                 scale_out: float | None = None, optimizer: torch.optim.Optimizer | None = None,
                 state: FitState | None = None) -> None:
        """Args:
            sae: the training dictionary (modified in place).
            cfg: optimisation settings.
            total_steps: the step count the schedule is laid out for.
            scale: multiplies every input batch (E||scale * x||^2 = 1).
            scale_out: multiplies every target batch (transcoders); None = `scale`.
            optimizer: over `sae`'s parameters (made here when None).
            state: where to resume from (a fresh start when None).
        """
        self.sae, self.cfg, self.total_steps = sae, cfg, total_steps
        self.scale = scale
        self.scale_out = scale if scale_out is None else scale_out
        self.optimizer = optimizer or make_optimizer(sae, cfg)
        self.state = state or FitState()
        if self.state.steps_since_fired is None:
            self.state.steps_since_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.sums = _Sums()
        self.density = 1.0  # fraction of features firing at the previous step
        self.lr = self.lam = 0.0

    def step(self, x: torch.Tensor, target: torch.Tensor | None = None) -> Any:
        """One optimiser step on raw activations x [batch, d_in] (and target [batch, d_out]).

        Returns:
            The dictionary's `TrainStepOutput` for this batch.
        """
        sae, cfg, state = self.sae, self.cfg, self.state
        x = x.float() * self.scale  # [batch, d_in]
        y = None if target is None else target.float() * self.scale_out  # [batch, d_out]
        self.lr = lr_at(state.step, self.total_steps, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        dead = state.steps_since_fired >= cfg.dead_steps
        self.lam = lam = l0_coefficient_at(state.step, cfg) * state.l0_scale
        self.optimizer.zero_grad(set_to_none=True)
        if y is None and self.density < cfg.sparse_below:  # same gradients, faster
            out = sae.sparse_step(x, lam, dead, cfg.dead_coefficient)
        else:
            out = (sae(x, lam, dead, cfg.dead_coefficient) if y is None
                   else sae(x, lam, dead, cfg.dead_coefficient, target=y))
            out.loss.backward()
        self.density = float(out.l0) / sae.d_sae
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
        self.optimizer.step()
        sae.normalize_decoder()
        sae.clamp_threshold()
        fired = out.fired.any(dim=0)
        state.steps_since_fired += 1
        state.steps_since_fired[fired] = 0
        state.step += 1
        self.sums.add(x if y is None else y, out)
        return out

    def record(self, seconds: float) -> dict[str, float]:
        """Close the current log interval: a progress record (also kept in `state.history`)."""
        state = self.state
        record = self.sums.record(state.step, self.lr, float(
            (state.steps_since_fired >= self.cfg.dead_steps).float().mean()))
        record["l0_coefficient"] = self.lam
        record["clipped_steps"] = state.clipped
        record["tokens_per_s"] = round(self.sums.tokens / max(seconds, 1e-9), 1)
        state.history.append(record)
        self.sums = _Sums()
        return record


def fit(sae: Any, batches: Iterator[torch.Tensor], cfg: OptimConfig,
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
    fitter = Fitter(sae, cfg, total_steps, scale=scale, optimizer=optimizer, state=state)
    state = fitter.state
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not progress, mininterval=5.0)
    start = time.time()
    while state.step < total_steps:
        fitter.step(next(batches))
        bar.update(1)
        if state.step % log_every == 0 or state.step == total_steps:
            record = fitter.record(time.time() - start)
            bar.set_postfix(loss=f"{record['loss']:.4f}", l0=f"{record['l0']:.1f}",
                            fvu=f"{record['fvu']:.3f}", dead=f"{record['dead']:.2f}")
            log_record(record, total_steps)
            if progress_file is not None:
                with open(progress_file, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            start = time.time()
        if on_checkpoint and checkpoint_every and state.step % checkpoint_every == 0:
            on_checkpoint(state)
    bar.close()
    if on_checkpoint:
        on_checkpoint(state)
    return state


def log_record(record: dict[str, float], total_steps: int, prefix: str = "") -> None:
    """One progress line (loss, mse, L0, FVU, dead fraction, lr, lambda)."""
    log.info("%sstep %d/%d  loss %.4f  mse %.4f  L0 %.1f  FVU %.4f  dead %.3f  lr %.2e  "
             "lambda %.2e", prefix, record["step"], total_steps, record["loss"], record["mse"],
             record["l0"], record["fvu"], record["dead"], record["lr"], record["l0_coefficient"])


class _Sums:
    """Running sums over one log interval; FVU is a ratio of sums (docs/saes.md, "Metrics")."""

    def __init__(self) -> None:
        self.n = self.tokens = 0
        self.loss = self.mse = self.l0 = self.var = 0.0

    def add(self, y: torch.Tensor, out: Any) -> None:
        """Add one step: `y` [batch, d_out] is what the dictionary reconstructs (normalised)."""
        self.n += 1
        self.tokens += len(y)
        self.loss += float(out.loss.detach())
        self.mse += float(out.mse)
        self.l0 += float(out.l0)
        # per-token variance around this batch's mean, summed like the MSE
        self.var += float((y - y.mean(dim=0)).pow(2).sum(dim=-1).mean())

    def record(self, step: int, lr: float, dead: float) -> dict[str, float]:
        n = max(self.n, 1)
        return {"step": step, "loss": self.loss / n, "mse": self.mse / n, "l0": self.l0 / n,
                "fvu": self.mse / max(self.var, 1e-12), "dead": dead, "lr": lr}
