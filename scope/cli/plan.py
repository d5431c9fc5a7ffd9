"""`scope plan` and the `--dry-run` of `scope extract` / `scope attribute`: what a run will cost.

Prints the planner's table (peak memory by part, disk, time) and writes `--json FILE` with
`peak_memory_bytes`, `disk_bytes`, `seconds` and the rest (docs/plan.md). Nothing is loaded:
a run that will not fit exits 2 with the figure and the way out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scope.cli.common import command, say
from scope.cli.flags import CTX, DEVICE, FOLDER, POSITIVE
from scope.errors import ConfigError, WontFitError

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_bytes(text: str | int | None, flag: str = "--max-memory") -> int | None:
    """`40GiB`, `80GB`, `512MiB` or a plain number of bytes -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if m is None or m[2].lower() not in _UNITS:
        raise ConfigError(f"{flag} {text!r}: give a size such as 40GiB, 80GB or 512MiB")
    return int(float(m[1]) * _UNITS[m[2].lower()])


@dataclass
class PlanCommand:
    """Estimate the peak memory, disk and time of `scope extract` (or of one attribution graph)
    before running it, from the model's and SAEs' shapes and a quick probe of the device; exits 2
    when the run will not fit."""

    model: str = "bundled"
    """model name, hub id of a known model, local checkpoint folder, or 'bundled'"""
    sae: list[str] | None = None
    """RELEASE/SAE_ID, a local SAE folder or 'bundled' (default); repeat for several"""
    task: Literal["extract", "attribute"] = "extract"
    """extract: a feature store; attribute: one attribution graph (--ctx = prompt tokens)"""
    tokens: POSITIVE = 1_000_000
    """extract: corpus tokens"""
    ctx: CTX = 128
    """extract: context length incl. BOS; attribute: the prompt's length in tokens"""
    batch_size: POSITIVE | None = None
    """windows per forward pass (default 16), or graph rows per backward (32)"""
    top_k: POSITIVE = 20
    """top contexts kept per feature"""
    device: DEVICE = "cpu"
    """the device the run will use (it must exist here)"""
    dtype: str | None = None
    """model dtype (default bfloat16 on CUDA, float32 on CPU)"""
    max_memory: str | None = None
    """cap below the device's memory, e.g. 40GiB"""
    out: FOLDER | None = None
    """store folder: check the free disk there"""
    max_feature_nodes: POSITIVE = 1024
    """attribute: feature rows computed"""
    json: Path | None = None
    """also write the estimates as JSON to this file"""


def show(p: Any, json_path: Path | None) -> int:
    """Print a plan, write its JSON, and give the exit status (2 when it will not fit)."""
    say(p.summary())
    if json_path is not None:
        p.to_json(json_path)
        say(f"wrote {json_path}")
    if not p.fits:
        raise WontFitError("this run will not fit (the figures and the ways out are above)")
    return 0


@command("plan", PlanCommand,
         example="scope plan --model gemma-2-2b --sae gemma-scope-2b-pt-res/layer_20/width_16k/"
         "average_l0_71 --tokens 10000000 --json plan.json")
def run_plan(cfg: PlanCommand) -> int:
    from scope.plan import plan

    p = plan(cfg.model, cfg.sae or ["bundled"], task=cfg.task, tokens=cfg.tokens, ctx=cfg.ctx,
             batch_size=cfg.batch_size, top_k=cfg.top_k, device=cfg.device, dtype=cfg.dtype,
             max_memory=parse_bytes(cfg.max_memory), out=cfg.out,
             max_feature_nodes=cfg.max_feature_nodes, strict=False)
    return show(p, cfg.json)


def dry_run_extract(cfg: Any) -> int:
    """`scope extract --dry-run`: the plan of exactly this command, nothing loaded or written."""
    from scope.plan import plan

    if cfg.tokens is None:
        raise ConfigError("--dry-run needs --tokens N (the planner cannot count a corpus "
                          "without reading it)")
    p = plan(cfg.model, cfg.sae or ["bundled"], tokens=cfg.tokens, ctx=cfg.ctx,
             batch_size=cfg.batch_size, top_k=cfg.top_k, device=cfg.device or _default_device(),
             out=cfg.out, checkpoint_every=cfg.checkpoint_every, strict=False)
    return show(p, None)


def dry_run_attribute(cfg: Any, specs: list[str]) -> int:
    """`scope attribute --graph ... --dry-run`: the plan of the graph (prompt length estimated
    at 4 characters per token, BOS included)."""
    from scope.attribution.rows import parse_memory
    from scope.plan import plan

    n_pos = max(2, 1 + round(len(cfg.prompt) / 4))
    # the graph of `attribute --graph` has the target's logit row only
    p = plan(cfg.model, specs, task="attribute", ctx=n_pos, device=_default_device(),
             max_feature_nodes=cfg.max_feature_nodes or None, max_logits=1,
             max_memory=parse_memory(cfg.max_memory), strict=False)
    return show(p, None)


def _default_device() -> str:
    from scope.model.load import default_device_dtype

    return default_device_dtype()[0]
