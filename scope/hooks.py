"""Temporary forward hooks that remove exactly themselves.

TransformerLens's `model.hooks()` clears *every* non-permanent hook on exit, so nesting two of
our contexts (steering inside steering, an evaluation inside a steering block) would strip the
outer one's hooks. `attached` adds hooks and, on exit or error, removes only those it added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from transformer_lens.hook_points import HookedRootModule

HookFn = Callable  # fn(activation, hook) -> activation | None


@contextmanager
def attached(model: HookedRootModule, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Attach `(hook_name, fn)` forward hooks for the duration of the block.

    Args:
        model: a HookedTransformer (any HookedRootModule).
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


def count_hooks(model: HookedRootModule) -> int:
    """Number of forward and backward hooks attached anywhere in the model (0 when clean)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )
