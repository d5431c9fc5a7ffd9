"""Training JumpReLU SAEs (Gemma Scope recipe); kept apart from the inference code.

`scope.train` is never imported by `scope.saes.sae`, `scope.saes.loading` or any other inference module.
Entry points: `train(cfg)` (the `scope train` pipeline) and `fit(...)` (the bare loop).
"""

from __future__ import annotations

from scope.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "TrainConfig"]
