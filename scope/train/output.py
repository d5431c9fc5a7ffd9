"""What a training run hands back, and the pieces every kind of run shares to get there.

`TrainResult` (the saved dictionary or dictionaries, the folder, the report), the save-dtype cast
with its float16 overflow guard, and loading the run's model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What `train` produced."""

    sae: Any
    """The trained `JumpReLUSAE` (raw-activation weights, in the saved dtype); for a transcoder
    run the list of them, shallowest layer first."""
    out: Path
    """Folder it was saved to."""
    report: dict[str, Any]
    """Held-out figures (see `heldout_report`) and training facts."""


def load_run_model(cfg: TrainConfig) -> Any:
    """The model `cfg.data.model` names (`scope.model.load.load_model`)."""
    from scope.model.load import load_model

    log.info("loading model %s", cfg.data.model)
    return load_model(cfg.data.model)


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
