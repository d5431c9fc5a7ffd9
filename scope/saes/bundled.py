"""Dictionary sets: specs that name one dictionary per layer, and the shipped bundled sets.

`bundled/transcoders` is the set of JumpReLU transcoders shipped for the bundled Gemma 3 270M
(`scope/bundled/transcoders/layer_L/`, one native folder per layer, trained by
`scope train --config configs/train/transcoders.yaml`); `bundled/transcoders/layer_L` is one of
them. Any local folder laid out the same way (the `out` of a transcoder run: `layer_L/` folders
and a `report.json`) is a set too. `bundled/all` names the shipped residual demo SAEs.

A set must be complete: every layer its `report.json` lists (or, without one, every layer from
0 to the deepest present) has a folder, else `MissingLayerError` names the gaps. This module
only resolves names to folders and specs; `scope.saes.loading` loads them.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Sequence
from pathlib import Path

from scope.errors import MissingLayerError, UnknownSAEError

BUNDLED_ROOT = Path(str(importlib.resources.files("scope").joinpath("bundled")))
TRANSCODERS = "transcoders"
TRANSCODERS_SPEC = f"bundled/{TRANSCODERS}"
#: the residual demo SAEs: "bundled" (layer 9) and "bundled/layer_L"
ALL_SPEC = "bundled/all"
SET_REPORT = "report.json"
_LAYER_DIR = re.compile(r"^layer_(\d+)$")
_MEMBER = re.compile(rf"^bundled/{TRANSCODERS}/(layer_\d+)$")
_MEMBER_FILES = ("cfg.json", "sae_weights.safetensors")


def set_layers(folder: Path) -> dict[int, Path]:
    """{layer: member folder} of a complete dictionary set, shallowest first.

    Raises:
        MissingLayerError: a layer the set's report lists (or a gap below the deepest layer)
            has no `layer_L/` folder with cfg.json + sae_weights.safetensors.
    """
    folder = Path(folder)
    present = {int(m.group(1)): p for p in folder.iterdir() if p.is_dir()
               and (m := _LAYER_DIR.match(p.name)) and all((p / f).is_file() for f in _MEMBER_FILES)}
    expected = _reported_layers(folder)
    if expected is None:
        expected = list(range(max(present) + 1)) if present else []
    missing = sorted(set(expected) - set(present))
    if missing or not present:
        have = ", ".join(f"layer_{L}" for L in sorted(present)) or "none"
        raise MissingLayerError(
            f"{folder}: the dictionary set lacks layer(s) {missing or 'all'} (has: {have}); each "
            "layer needs layer_L/ with cfg.json + sae_weights.safetensors. Retrain the missing "
            "layers (scope train --config configs/train/transcoders.yaml) or pass the layers you "
            "have one by one (e.g. --sae DIR/layer_0)")
    return {L: present[L] for L in sorted(present)}


def _reported_layers(folder: Path) -> list[int] | None:
    """The layers a set's report.json says it holds, or None without a readable report."""
    try:
        report = json.loads((folder / SET_REPORT).read_text())
        return sorted(int(L) for L in report["layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_set_folder(path: Path) -> bool:
    """A folder holding `layer_L/` dictionaries rather than one dictionary itself."""
    path = Path(path)
    return path.is_dir() and not (path / "cfg.json").exists() and any(
        _LAYER_DIR.match(p.name) for p in path.iterdir() if p.is_dir())


def set_members(spec: object) -> list[str] | None:
    """The member specs of a set spec (`bundled/transcoders` or a set folder), else None."""
    if spec == TRANSCODERS_SPEC:
        root = BUNDLED_ROOT / TRANSCODERS
        if not root.is_dir():
            raise UnknownSAEError(f"the bundled transcoders are missing ({root} not found); "
                                  "train them with `scope train --config "
                                  "configs/train/transcoders.yaml` or reinstall the package")
        return [f"{TRANSCODERS_SPEC}/layer_{L}" for L in set_layers(root)]
    if not isinstance(spec, (str, Path)) or str(spec).startswith("bundled"):
        return None
    path = Path(spec).expanduser()
    if path.exists() and is_set_folder(path):
        return [str(p) for p in set_layers(path).values()]
    return None


def bundled_member(spec: object) -> Path | None:
    """The folder of `bundled/transcoders/layer_L`, None for other specs.

    Raises:
        UnknownSAEError: a layer the bundled set does not ship.
    """
    m = _MEMBER.match(spec) if isinstance(spec, str) else None
    if m is None:
        return None
    folder = BUNDLED_ROOT / TRANSCODERS / m.group(1)
    if not all((folder / f).is_file() for f in _MEMBER_FILES):
        shipped = set_members(TRANSCODERS_SPEC) if (BUNDLED_ROOT / TRANSCODERS).is_dir() else []
        raise UnknownSAEError(f"no bundled transcoder {spec!r}; shipped: "
                              f"{', '.join(shipped or []) or 'none'}")
    return folder


def expand_sae_specs(specs: Sequence[str]) -> list[str]:
    """SAE specs with sets expanded, in order: `bundled/all` -> every shipped residual demo SAE
    (shallowest first), `bundled/transcoders` or a set folder -> one spec per layer."""
    out: list[str] = []
    for spec in specs:
        members = set_members(spec)
        if members is not None:
            out += members
        elif spec == ALL_SPEC:
            layers = {9} | {int(p.name.split("_")[1]) for p in BUNDLED_ROOT.glob("layer_*")
                            if (p / "sae_weights.safetensors").is_file()}
            out += ["bundled" if L == 9 else f"bundled/layer_{L}" for L in sorted(layers)]
        else:
            out.append(spec)
    return out
