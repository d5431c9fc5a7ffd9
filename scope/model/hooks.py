"""Temporary forward hooks that remove exactly themselves.

`attached` adds TransformerLens hook functions to a model's hook points and, on exit or error,
removes only those it added, so our contexts nest (steering inside steering, an evaluation inside
a steering block) whatever TransformerLens's own `model.hooks()` would clear.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformer_lens.hook_points import HookPoint

HookFn = Callable  # fn(activation, hook) -> activation | None


@contextmanager
def attached(model: torch.nn.Module, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach `(hook_name, fn)` forward hooks for the duration of the block.

    Args:
        model: a model from `scope.load_model` (anything with a TransformerLens `hook_dict`).
        fwd_hooks: pairs of a name in `model.hook_dict` and a TransformerLens hook function.
    """
    added = []
    try:
        for name, fn in fwd_hooks:
            point = model.hook_dict[name]
            point.add_hook(fn, dir="fwd")
            added.append((point, point.fwd_hooks[-1]))
        yield
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


def count_hooks(model: torch.nn.Module) -> int:
    """Number of forward and backward hooks on the model's hook points (0 when clean).

    Only hook points count: the bridge keeps a few permanent hooks of its own on norm modules
    (it feeds `hook_mlp_in` from them), which no caller adds or removes.
    """
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules() if isinstance(m, HookPoint)
    )
