"""Floating dtypes by name: the one parser of "float32", "bf16", "torch.float16", ... in scope.

Models, SAEs, training configs and CLI flags all take dtype names; this module turns a name or
a torch dtype into the canonical name or the torch dtype, and refuses anything else with a
`ConfigError` that lists what is accepted.
"""

from __future__ import annotations

import torch

from scope.errors import ConfigError

#: canonical name -> torch dtype (the floating dtypes scope computes in)
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16",
           "float": "float32", "double": "float64"}


def dtype_name(dtype: torch.dtype | str) -> str:
    """Canonical name of a floating dtype ("float32", "bfloat16", ...).

    Args:
        dtype: a torch dtype or a name such as "bf16", "torch.float16".

    Returns:
        The canonical name.

    Raises:
        ConfigError: anything that is not a floating dtype we support (int8, "float8", 3, ...).
    """
    if isinstance(dtype, torch.dtype):
        for name, value in DTYPES.items():
            if value == dtype:
                return name
        raise ConfigError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPES)}")
    if not isinstance(dtype, str):
        raise ConfigError(f"dtype {dtype!r} is not a dtype name; use one of {', '.join(DTYPES)}")
    name = dtype.removeprefix("torch.").lower()
    name = ALIASES.get(name, name)
    if name not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return name


def to_torch_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The torch dtype for a name or dtype (see `dtype_name`)."""
    return DTYPES[dtype_name(dtype)]
