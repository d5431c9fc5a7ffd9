"""Training JumpReLU SAEs and transcoders (Gemma Scope recipe); kept apart from inference code.

`scope.train` is never imported by `scope.saes.sae`, `scope.saes.loading` or any other inference
module. Entry points: `trainer.train(cfg)` (the `scope train` pipeline: one SAE at a hook, or
with `kind: transcoder` one transcoder per layer from one forward pass per batch, see
`transcoders`) and `loop.fit(...)` (the bare loop). Modules: config (typed sections), loop
(Fitter, schedules), checkpoint, jumprelu / transcoder (training modules and estimators),
buffer / capture / multicapture (the single-SAE activation cache), segments / transcoders /
tc_eval (the multi-layer transcoder run), output (TrainResult).
"""

from __future__ import annotations

from scope.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig, TranscoderConfig

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "TrainConfig", "TranscoderConfig"]
