"""Steering defaults shared by `scope steer` and the dashboard's steering page (one place), and
the rule that turns a relative strength into a raw one.

Strengths are multiples of each feature's max activation in a feature store when one is given
(an SAE's activation scale varies by orders of magnitude between features and SAEs, so a raw
strength such as 8 can be noise for one feature and word salad for another); without a store
they are raw multiples of the unit decoder direction.

`STRENGTH_X_MAX` was chosen by measurement (`benchmarks/bench_steer_sweep.py`, its table in
docs/dashboard.md): the largest multiple of the sweep whose steered text stays fluent for more
than `MOST` of the features, fluent meaning within `DRIFT_MARGIN` nats/token of the unsteered
text's loss and at least `MIN_DISTINCT` of its words distinct (a loop scores a low loss).
"""

from __future__ import annotations

from collections.abc import Mapping

#: tokens generated after the prompt
MAX_NEW_TOKENS = 30
#: 0 = greedy (the same text every time; the steered/default difference is the steering alone)
TEMPERATURE = 0.0
#: sampling seed (used when TEMPERATURE > 0)
SEED = 0
#: default strength, as a multiple of the feature's max activation in the store (measured)
STRENGTH_X_MAX = 1.0
#: default raw strength (multiple of the unit decoder direction) when no store is given
STRENGTH_RAW = 8.0
#: strengths of the dashboard's sweep (multiples of max activation), shown side by side
SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0)
#: the multiples the benchmark measures to choose STRENGTH_X_MAX
BENCH_MULTIPLES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
#: a steered text is fluent while its loss stays within this many nats/token of the default's
DRIFT_MARGIN = 1.0
#: ... and not a loop: at least this share of its words distinct
MIN_DISTINCT = 0.5
#: the default keeps more than this share of the features fluent (a majority)
MOST = 0.5
#: an absolute strength below this share of the feature's max activation barely moves the text
TINY = 0.1
#: the dashboard's default prompt
PROMPT = "Once upon a time"


def scale_by_max(strengths: Mapping[int, float], max_activations) -> dict[int, float]:
    """Relative strengths to raw ones: each strength times its feature's max activation (the
    one place this product is written; `steering(relative_to=store)`, the dashboard and the
    sweep use it)."""
    return {int(f): float(s) * float(max_activations[int(f)]) for f, s in strengths.items()}


def choose_multiple(fluent: Mapping[float, float], most: float = MOST) -> float | None:
    """The largest multiple whose share of fluent features (`Sweep.fluent()`) is above `most`,
    among the multiples up to the first that is not; None if even the smallest is not."""
    best = None
    for m in sorted(fluent):
        if fluent[m] <= most:
            break
        best = m
    return best


def tiny_strengths(strengths: Mapping[int, float], scale: Mapping[int, float] | object,
                   tiny: float = TINY) -> list[tuple[int, float, float]]:
    """Absolute strengths too small to matter: `(feature, strength, scale)` for each whose
    |strength| is below `tiny` x the feature's scale (its max activation, from a store or a
    quick encode of the prompt). Zero strengths are deliberate and never flagged."""
    out = []
    for f, s in strengths.items():
        peak = float(scale[int(f)])  # type: ignore[index]
        if s != 0 and peak > 0 and abs(float(s)) < tiny * peak:
            out.append((int(f), float(s), peak))
    return out


def tiny_warnings(strengths: Mapping[int, float], scale, source: str) -> list[str]:
    """One line per absolute strength too small to move the text (`tiny_strengths`), naming
    the feature's scale, where it came from (`source`, e.g. "its max in runs/demo" or "its peak
    on the prompt") and a strength that would matter."""
    return [f"feature {f}: strength {s:g} is {abs(s) / peak:.1%} of its scale ({peak:,.4g}, "
            f"{source}) and will barely change the text; try {f}:{STRENGTH_X_MAX * peak:.4g} "
            f"({STRENGTH_X_MAX:g}x), or give a store for strengths relative to each feature's max"
            for f, s, peak in tiny_strengths(strengths, scale)]


def prompt_scale(model, sae, prompt: str, features) -> dict[int, float]:
    """Each feature's scale when no store is at hand: its largest activation over `prompt` (BOS
    left out) from one quick encode, and never below its JumpReLU threshold (the smallest
    nonzero activation it can have), so a feature silent on the prompt still has a scale."""
    import torch

    from scope.model.activations import capture

    site = sae.cfg.hook_name
    with torch.inference_mode():
        tokens = model.to_tokens(prompt)
        acts = capture(model, tokens, [site])[site]
        f = sae.encode(acts.to(sae.W_dec.dtype))[0, 1:]  # [pos, d_sae], BOS left out
        idx = torch.tensor([int(i) for i in features], dtype=torch.long)
        peak = f[:, idx].amax(0) if f.shape[0] else torch.zeros(len(idx))
        floor = sae.threshold.detach()[idx].to(peak.dtype)
    return {int(i): float(v) for i, v in zip(idx.tolist(), torch.maximum(peak, floor).tolist(),
                                              strict=True)}


def describe() -> str:
    """One line for --help."""
    return (f"defaults: {MAX_NEW_TOKENS} new tokens, temperature {TEMPERATURE:g} (greedy), "
            f"seed {SEED}; with a store a strength is a multiple of the feature's max "
            f"activation (default {STRENGTH_X_MAX:g}x, chosen by a measured sweep)")
