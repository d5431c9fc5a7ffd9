"""`scope steer`: generate with and without steering by SAE features, side by side.

With `--relative STORE` a strength is a multiple of the feature's max activation in the store
(1 = its max, the measured default: docs/dashboard.md). Without a store a strength is raw, and
one too small to matter against the feature's scale (its peak on the prompt, from one quick
encode, never below its threshold) is warned about, with a strength that would matter.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from scope.cli.common import command, say
from scope.cli.flags import NON_NEGATIVE, SEED, TEMPERATURE, Check, feature
from scope.errors import SteeringError
from scope.steer import defaults as sd  # shared with the dashboard's steering page

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
        check_relative_store(store, sae, cfg.sae)
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


def check_relative_store(store: Any, sae: Any, spec: str) -> None:
    """`--relative STORE` must hold this very SAE (same spec, width and hook), not just its name.

    Raises:
        SteeringError: the store has no SAE of that name, or it was made from another SAE.
    """
    name = sae.cfg.name
    entries: list[Mapping] = list(store.manifest.get("saes") or [])
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        names = [e.get("name") for e in entries]
        raise SteeringError(f"--relative {store.path}: the store has no SAE {name!r} (it has "
                            f"{names}); extract a store with this --sae first")
    problems = []
    if entry.get("d_sae") != sae.cfg.d_sae:
        problems.append(f"d_sae {entry.get('d_sae')} vs {sae.cfg.d_sae}")
    if entry.get("hook_name") not in (None, sae.cfg.hook_name):
        problems.append(f"hook {entry.get('hook_name')} vs {sae.cfg.hook_name}")
    if not _same_spec(entry.get("spec"), getattr(sae, "scope_spec", spec), spec):
        problems.append(f"spec {entry.get('spec')!r} vs {spec!r}")
    if problems:
        raise SteeringError(
            f"--relative {store.path}: its SAE {name!r} is not the SAE you loaded "
            f"({'; '.join(problems)}), so its max activations do not apply; pass the --sae the "
            "store was extracted with, or a store of this SAE")


def _same_spec(recorded: Any, resolved: str, given: str) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    if recorded in (resolved, given):
        return True
    a, b = Path(recorded).expanduser(), Path(given).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()
