"""The planner: peak memory, disk and time of a run, from shapes and a quick probe of the device.

`plan(model, saes, tokens=..., ctx=..., batch_size=..., device=...)` returns a `Plan`
(`peak_memory_bytes`, `disk_bytes`, `seconds`, their parts; `to_json(path)`), or refuses a run
that will not fit with a `WontFitError` naming the figure and the way out. docs/plan.md.
"""

from scope.plan.estimate import Plan, plan
from scope.plan.shapes import ModelShape, SAEShape, model_shape, sae_shape

__all__ = ["ModelShape", "Plan", "SAEShape", "model_shape", "plan", "sae_shape"]
