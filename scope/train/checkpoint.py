"""Resumable training checkpoints: safetensors tensors plus one JSON header, never pickle.

A checkpoint holds, per dictionary, its parameters (`{prefix}sae.*`), Adam's state
(`{prefix}optim.{i}.*`) and its dead-feature counters (`{prefix}steps_since_fired`), and in the
header the `FitState` scalars, the normalisation scale(s) and the resolved config. A single-SAE
run uses the empty prefix; the multi-layer transcoder run prefixes every layer with `L{layer}.`.
Loading a checkpoint from someone else's run folder can never run code.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scope.base.atomic import atomic_write
from scope.errors import CheckpointError
from scope.train.loop import FitState

log = logging.getLogger(__name__)

CHECKPOINT_FILENAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "scope.train.checkpoint/1"
#: the pickle checkpoint of earlier versions: never loaded (unpickling can run code)
LEGACY_CHECKPOINT_FILENAME = "checkpoint.pt"
#: JSON fields of one dictionary's state and the types they must have
STATE_FIELDS = {"step": int, "history": list, "l0_scale": float, "grad_norm_ema": float,
                "clipped": int}


def state_tensors(sae: torch.nn.Module, optimizer: torch.optim.Optimizer, state: FitState,
                  prefix: str = "") -> dict[str, torch.Tensor]:
    """The tensors of one dictionary's training state, keyed under `prefix`."""
    tensors = {f"{prefix}sae.{k}": v.detach().contiguous() for k, v in sae.state_dict().items()}
    for index, entry in optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            value = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{prefix}optim.{index}.{key}"] = value.detach().contiguous()
    tensors[f"{prefix}steps_since_fired"] = state.steps_since_fired.contiguous()
    return tensors


def state_meta(state: FitState) -> dict[str, Any]:
    """The JSON scalars of one dictionary's `FitState`."""
    return {"step": state.step, "history": state.history, "l0_scale": state.l0_scale,
            "grad_norm_ema": state.grad_norm_ema, "clipped": state.clipped}


def write_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + `meta` (format tag added) atomically."""
    header = {"scope_checkpoint": json.dumps({"format": CHECKPOINT_FORMAT, **meta})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_checkpoint(path: Path, fields: dict[str, type]) -> tuple[dict[str, torch.Tensor],
                                                                  dict[str, Any]]:
    """Tensors and JSON header of a checkpoint file, checking `fields`' types, or CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    except Exception as exc:  # safetensors raises its own error types for any corrupt header
        raise bad_checkpoint(path, f"not a safetensors file ({exc})") from None
    try:
        meta = json.loads(header.get("scope_checkpoint", ""))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise bad_checkpoint(path, f"no {CHECKPOINT_FORMAT!r} header")
    check_fields(path, meta, fields)
    return tensors, meta


def check_fields(path: Path, meta: dict[str, Any], fields: dict[str, type]) -> None:
    """CheckpointError unless every field of `meta` named in `fields` has its type."""
    for name, kind in fields.items():
        value = meta.get(name)
        ok = isinstance(value, kind) and not isinstance(value, bool) or (
            kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise bad_checkpoint(path, f"field {name!r} is {value!r}, expected {kind.__name__}")


def restore_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                  sae: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  prefix: str = "") -> FitState:
    """Load one dictionary's parameters and Adam state from checkpoint tensors; its FitState.

    Raises:
        CheckpointError: a tensor of the wrong shape or type, or a missing one.
    """
    check_fields(path, meta, STATE_FIELDS)
    sae_prefix, optim_prefix = f"{prefix}sae.", f"{prefix}optim."
    sae_state = {k[len(sae_prefix):]: v for k, v in tensors.items() if k.startswith(sae_prefix)}
    expected = {k: v.shape for k, v in sae.state_dict().items()}
    got = {k: v.shape for k, v in sae_state.items()}
    if got != expected:
        raise bad_checkpoint(path, f"{prefix or 'SAE '}tensors {got} do not match this run's "
                             f"{expected}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith(optim_prefix):
            index, name = key[len(optim_prefix):].split(".", 1)
            if not index.isdigit() or int(index) >= len(params):
                raise bad_checkpoint(path, f"optimizer entry {key!r} has no parameter")
            optim_state.setdefault(int(index), {})[name] = value
    for index, entry in optim_state.items():
        for name, value in entry.items():
            if value.dim() and value.shape != params[index].shape:
                raise bad_checkpoint(path, f"optimizer entry {optim_prefix}{index}.{name} has "
                                     f"shape {tuple(value.shape)}, expected "
                                     f"{tuple(params[index].shape)}")
    fired = tensors.get(f"{prefix}steps_since_fired")
    if fired is None or fired.shape != (sae.d_sae,) or fired.dtype != torch.long:
        raise bad_checkpoint(path, f"{prefix}steps_since_fired must be int64 [{sae.d_sae}]")
    sae.load_state_dict(sae_state)
    optimizer.load_state_dict({"state": optim_state,
                               "param_groups": optimizer.state_dict()["param_groups"]})
    return FitState(meta["step"], fired, meta["history"], meta["l0_scale"],
                    meta["grad_norm_ema"], meta["clipped"])


def config_differs(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
    """The resume keys whose values differ between a checkpoint's config and this run's."""
    return [k for k in keys if old.get(k) != new.get(k)]


def bad_checkpoint(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is not a usable scope training checkpoint: {why}. Delete it "
                           "(or set resume: false) to start the run afresh.")


def warn_legacy(run_dir: Path) -> None:
    """Warn once that an old pickle checkpoint beside the run is ignored."""
    if (run_dir / LEGACY_CHECKPOINT_FILENAME).is_file():
        log.warning("%s is a pickle checkpoint of an older scope; it is never loaded (unpickling "
                    "can run code). Resuming only from %s.", run_dir / LEGACY_CHECKPOINT_FILENAME,
                    CHECKPOINT_FILENAME)
