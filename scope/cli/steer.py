"""`scope steer`: generate with and without steering by SAE features, side by side.

With `--relative STORE` a strength is a multiple of the feature's max activation in the store
(1 = its max, the measured default: docs/dashboard.md). Without a store a strength is raw, and
one too small to matter against the feature's scale (its peak on the prompt, from one quick
encode, never below its threshold) is warned about, with a strength that would matter.
"""

from __future__ import annotations

import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from scope.cli.common import command, say
from scope.cli.flags import NON_NEGATIVE, SEED, TEMPERATURE, Check, feature
from scope.steer import defaults as sd  # shared with the dashboard's steering page
from scope.steer.relative import check_relative_store

log = logging.getLogger("scope")
FEATURE = Annotated[tuple[int, float], Check(feature)]


@dataclass(kw_only=True)
class Steer:
    """Generate text with and without steering by SAE features, side by side."""

    model: str = "bundled"
    """model spec"""
    sae: str = "bundled"
    """RELEASE/SAE_ID, a local path, or 'bundled'"""
    feature: list[FEATURE] = field(metadata={"metavar": "INDEX:STRENGTH"})
    """feature and strength; repeat for several"""
    prompt: str
    """text to continue"""
    mode: Literal["add", "clamp"] = "add"
    """add STRENGTH x the decoder direction, or clamp the feature to STRENGTH"""
    relative: Path | None = field(default=None, metadata={"metavar": "STORE"})
    """a store of this SAE: strengths are multiples of each feature's max activation there
    (1 = its max; without a store a strength is raw and a tiny one is warned about)"""
    max_new_tokens: NON_NEGATIVE = sd.MAX_NEW_TOKENS
    """tokens generated after the prompt"""
    temperature: TEMPERATURE = sd.TEMPERATURE
    """0 = greedy"""
    seed: SEED = sd.SEED
    """same seed, same text"""


WIDTH = 48


def side_by_side(left: str, right: str, width: int = WIDTH) -> list[str]:
    """Two texts in columns of `width`, wrapped at word boundaries (a longer word overflows)."""
    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]

    a, b = wrap(left), wrap(right)
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"{x:<{width}} | {y}".rstrip() for x, y in zip(a, b, strict=True)]


@command("steer", Steer, epilog=sd.describe(),
         example='scope steer --relative runs/demo --feature 2322:1 --prompt '
         '"My favourite thing to do on a sunny day is"')
def run_steer(cfg: Steer) -> int:
    from scope.model.load import load_model
    from scope.saes.loading import load_sae
    from scope.steer.intervene import generate, steering
    from scope.store import open_store

    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model=model)
    store = open_store(cfg.relative) if cfg.relative else None
    if store is not None:
        check_relative_store(store, sae, cfg.sae, flag="--relative")
    features = dict(cfg.feature)
    valid = {f: s for f, s in features.items() if 0 <= f < sae.cfg.d_sae}  # steering names the rest
    if store is None and cfg.mode == "add" and valid:  # raw strengths: say when one cannot matter
        scale = sd.prompt_scale(model, sae, cfg.prompt, valid)
        for line in sd.tiny_warnings(valid, scale, "its peak on the prompt"):
            log.warning("%s (--relative STORE)", line)
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed)
    default = generate(model, cfg.prompt, **gen)
    with steering(model, sae, features, mode=cfg.mode, relative_to=store):
        steered = generate(model, cfg.prompt, **gen)
    what = ", ".join(f"{i}:{v:g}" for i, v in features.items())
    say(f"{'default':<{WIDTH}} | steered ({cfg.mode} {what} on {sae.cfg.name})")
    say(f"{'-' * WIDTH}-+-{'-' * WIDTH}")
    for line in side_by_side(cfg.prompt + default, cfg.prompt + steered):
        say(line)
    return 0
