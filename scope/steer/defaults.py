"""Steering defaults shared by `scope steer` and the dashboard's steering page (one place).

Strengths are multiples of each feature's max activation in a feature store when one is given
(an SAE's activation scale varies by orders of magnitude between features and SAEs, so a raw
strength such as 8 can be noise for one feature and word salad for another); without a store
they are raw multiples of the unit decoder direction.
"""

from __future__ import annotations

#: tokens generated after the prompt
MAX_NEW_TOKENS = 30
#: 0 = greedy (the same text every time; the steered/default difference is the steering alone)
TEMPERATURE = 0.0
#: sampling seed (used when TEMPERATURE > 0)
SEED = 0
#: default strength, as a multiple of the feature's max activation in the store
STRENGTH_X_MAX = 4.0
#: default raw strength (multiple of the unit decoder direction) when no store is given
STRENGTH_RAW = 8.0
#: strengths of the sweep (multiples of max activation), shown side by side
SWEEP = (0.0, 0.5, 1.0, 2.0, 4.0)
#: the dashboard's default prompt
PROMPT = "Once upon a time"


def describe() -> str:
    """One line for --help."""
    return (f"defaults: {MAX_NEW_TOKENS} new tokens, temperature {TEMPERATURE:g} (greedy), "
            f"seed {SEED}; with --relative STORE a strength is a multiple of the feature's max "
            f"activation (dashboard default {STRENGTH_X_MAX:g}x)")
