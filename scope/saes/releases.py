"""Registry of Gemma Scope (Gemma 2) and Gemma Scope 2 (Gemma 3) SAE releases.

The data lives in `scope/saes/registry/` (`index.json` + one `<release>.json` per release), generated
from the upstream release list by `configs/releases/generate.py` and read with
`importlib.resources`. It is the offline truth for
`scope saes` and for resolving `load_sae("<release>", "<sae id>")` to a hub repo and file.
Pure Python: no torch, no network.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scope.errors import UnknownSAEError, suggest

#: where the registry lives: package data `scope/saes/registry/` (override with
#: $SCOPE_RELEASES_DIR); `configs/releases/generate.py` writes it
RELEASES_DIR = Path(str(importlib.resources.files("scope.saes").joinpath("registry")))
INDEX_FILENAME = "index.json"
GS1_FORMAT = "gemma-scope-1"  # layer_L/width_W/average_l0_N/params.npz, no config
GS2_FORMAT = "gemma-scope-2"  # site/layer_L_width_W_l0_S/{config.json, params.safetensors}
#: Neuronpedia, where the registry's SAEs have feature pages (the one copy of this address)
NEURONPEDIA_BASE = "https://www.neuronpedia.org"


def neuronpedia_url(neuronpedia_id: str | None, feature: int | None = None) -> str | None:
    """Neuronpedia page of an SAE (`gemma-2-2b/20-gemmascope-res-16k`) or of one of its
    features; None when the SAE has no Neuronpedia id."""
    if not neuronpedia_id or not isinstance(neuronpedia_id, str):
        return None
    base = f"{NEURONPEDIA_BASE}/{neuronpedia_id.strip('/')}"
    return base if feature is None else f"{base}/{int(feature)}"


@dataclass(frozen=True)
class Release:
    """One release: a hub repo (or part of one) and the SAEs it holds."""

    name: str
    """Registry name, e.g. `gemma-scope-2b-pt-res`."""
    repo_id: str
    """Hugging Face repo, e.g. `google/gemma-scope-2b-pt-res`."""
    model: str
    """Model the SAEs were trained on (`gemma-2-2b`, `google/gemma-3-270m`)."""
    format: str
    """`gemma-scope-1` (params.npz) or `gemma-scope-2` (config.json + params.safetensors)."""
    kind: str
    """`sae` or `transcoder`."""
    site: str
    """Site label(s): `res`, `mlp`, `att`, `transcoders` / `resid_post`, `attn_out_all`, ..."""
    notes: tuple[str, ...]
    """Caveats (unverified widths, unscaled embedding inputs, data corrections)."""
    saes: tuple[dict[str, Any], ...]
    """One dict per SAE: id, path, layer, width, d_sae, l0, l0_label, hook_name,
    [hook_name_out, d_out, affine], d_in, neuronpedia."""

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.saes]


@dataclass(frozen=True)
class SAEEntry:
    """A resolved SAE: everything needed to download and configure it."""

    release: Release
    sae_id: str
    """The id as the user named it (`layer_20/width_16k/canonical`)."""
    path: str
    """Folder in the repo (canonical ids map to their `average_l0_N` folder)."""
    info: dict[str, Any]
    """The registry row (layer, width, d_in, hook_name, l0, neuronpedia, ...)."""

    @property
    def repo_id(self) -> str:
        return self.release.repo_id

    @property
    def filename(self) -> str:
        """The weights file to download (`.../params.npz`), or the folder for Gemma Scope 2."""
        if self.release.format == GS1_FORMAT:
            return f"{self.path}/params.npz"
        return f"{self.path}/params.safetensors"

    @property
    def neuronpedia_id(self) -> str | None:
        return self.info.get("neuronpedia")


def releases_dir() -> Path:
    """The registry folder: $SCOPE_RELEASES_DIR, else the package's `registry/`."""
    return Path(os.environ.get("SCOPE_RELEASES_DIR", RELEASES_DIR))


@functools.lru_cache(maxsize=4)
def _index(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / INDEX_FILENAME
    if not path.is_file():
        raise UnknownSAEError(
            f"release registry not found at {path}; regenerate it with "
            "`python configs/releases/generate.py RELEASES.json` or set $SCOPE_RELEASES_DIR")
    return json.loads(path.read_text())["releases"]


@functools.lru_cache(maxsize=32)
def _load_release(folder: Path, name: str) -> Release:
    raw = json.loads((folder / f"{name}.json").read_text())
    return Release(
        name=raw["name"], repo_id=raw["repo_id"], model=raw["model"], format=raw["format"],
        kind=raw["kind"], site=raw.get("site", ""), notes=tuple(raw.get("notes", ())),
        saes=tuple(raw["saes"]),
    )


def list_releases() -> list[dict[str, Any]]:
    """Summaries of every release, sorted by name.

    Returns:
        One dict per release: name, repo_id, model, format, kind, site, n_saes.
    """
    index = _index(releases_dir())
    return [{"name": name, **row} for name, row in sorted(index.items())]


def get_release(name: str) -> Release:
    """The release called `name` (e.g. `gemma-scope-2b-pt-res`).

    Args:
        name: registry name; `google/` prefixes are accepted.

    Returns:
        The Release. Raises UnknownSAEError with close matches for an unknown name.
    """
    folder = releases_dir()
    index = _index(folder)
    key = name.removeprefix("google/")
    if key not in index:
        raise UnknownSAEError(
            f"unknown SAE release {name!r}.{suggest(key, index)} "
            "List them with `scope saes`.")
    return _load_release(folder, key)


def is_release(name: str) -> bool:
    """True when `name` is a registry release name (no error)."""
    try:
        return name.removeprefix("google/") in _index(releases_dir())
    except UnknownSAEError:
        return False


def resolve(release: str, sae_id: str) -> SAEEntry:
    """Resolve a release name and SAE id to the file to load.

    Canonical ids (`layer_20/width_16k/canonical`) map to the folder the `-canonical` release
    names; they are also accepted on the plain release. An SAE may be named by its id or its
    path in the repo.

    Args:
        release: release name, e.g. `gemma-scope-2b-pt-res-canonical`.
        sae_id: SAE id within it, e.g. `layer_20/width_16k/canonical`.

    Returns:
        The SAEEntry. Raises UnknownSAEError naming close ids when it is not in the release.
    """
    rel = get_release(release)
    sae_id = sae_id.strip("/")
    for row in rel.saes:
        if row["id"] == sae_id or row["path"] == sae_id:
            return SAEEntry(rel, sae_id, row["path"], row)
    if sae_id.endswith("/canonical") and is_release(rel.name + "-canonical"):
        canon = get_release(rel.name + "-canonical")
        for row in canon.saes:
            if row["id"] == sae_id:
                return SAEEntry(canon, sae_id, row["path"], row)
    ids = rel.ids
    hint = suggest(sae_id, ids, n=5)
    if not hint:  # fall back to ids sharing the layer/width prefix
        prefix = sae_id.rsplit("/", 1)[0] if "/" in sae_id else sae_id.split("_l0")[0]
        same = [i for i in ids if i.startswith(prefix)][:5]
        hint = f" Did you mean: {', '.join(same)}?" if same else ""
    raise UnknownSAEError(
        f"unknown SAE id {sae_id!r} in release {rel.name!r} ({len(ids)} SAEs).{hint} "
        f"List them with `scope saes {rel.name}`.")


def split_spec(spec: str) -> tuple[str, str] | None:
    """Split `"release/sae_id"` into (release, sae_id) when it starts with a release name.

    Args:
        spec: e.g. `gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`.

    Returns:
        (release, sae_id), or None when the first component is not a release.
    """
    head, _, rest = spec.removeprefix("google/").partition("/")
    if rest and is_release(head):
        return head, rest
    return None
