"""Tensors from files: safetensors read through `safe_open` (memory-mapped, one tensor cast at a
time, shapes and dtypes from the header alone) and the NaN/inf scan every loader runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch

from scope.base.dtypes import to_torch_dtype
from scope.errors import SAEFormatError


class TensorInfo(NamedTuple):
    """Shape and dtype of one tensor in a safetensors header (`shape` as in a tensor)."""

    shape: tuple[int, ...]
    dtype: str


def _corrupt(path: str | os.PathLike, exc: BaseException) -> SAEFormatError:
    return SAEFormatError(f"{path}: cannot read safetensors ({exc}); the file is truncated or "
                          "corrupt: delete it and download/save it again")


def safetensors_info(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """{key: TensorInfo(shape, dtype)} from a safetensors header; reads no tensor data.

    Raises:
        SAEFormatError: naming the file when its header is truncated or not safetensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {key: TensorInfo(tuple(fh.get_slice(key).get_shape()),
                                    str(fh.get_slice(key).get_dtype())) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise SAEFormatError(f"{path}: unreadable safetensors header ({exc}); the file is "
                             "truncated or corrupt: download it again") from exc


def read_safetensors(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    rename: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file (memory-mapped), casting one tensor at a time.

    Args:
        path: the file.
        device: target device (default CPU).
        dtype: cast floating tensors to this dtype (default: as stored).
        rename: optional map from file key to returned key.

    Returns:
        {name: tensor}. Raises SAEFormatError for a truncated or corrupt file.
    """
    from safetensors import safe_open

    target = to_torch_dtype(dtype) if dtype is not None else None
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                if target is not None and t.is_floating_point() and t.dtype != target:
                    t = t.to(target)
                if device is not None and torch.device(device) != t.device:
                    t = t.to(device)
                out[(rename or {}).get(key, key)] = t
    except Exception as exc:
        raise _corrupt(path, exc) from exc
    return out


def first_non_finite(t: torch.Tensor, rows: int = 4096) -> list[int] | None:
    """Index of the first NaN/inf element of `t`, or None; scans `rows` rows at a time."""
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
    for start in range(0, flat.shape[0], rows):
        ok = torch.isfinite(flat[start:start + rows])
        if not bool(ok.all()):
            where = (~ok).nonzero()[0]
            index = start * flat.shape[1] + int(where[0]) * flat.shape[1] + int(where[1])
            return [int(i) for i in torch.unravel_index(torch.tensor(index), t.shape)] \
                if t.dim() else []
    return None
