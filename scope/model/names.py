"""The short model names scope knows: one row per Gemma 2 / Gemma 3 text model, with its hub id.

`load_model` resolves them, `scope models` prints them, and the SAE writer names a model the way
SAELens / TransformerLens load it (`hub_id`). Standard library only.
"""

from __future__ import annotations

from typing import NamedTuple


class KnownModel(NamedTuple):
    """One row of the short-name table that `scope models` prints."""

    name: str  # short name accepted by load_model, also model.cfg.model_name
    hub_id: str  # Hugging Face repository
    d_model: int
    n_layers: int
    notes: str


BUNDLED = "bundled"
_G2 = "Gemma 2; Gemma Scope SAEs"
_G3 = "Gemma 3; Gemma Scope 2 SAEs"
_MM = "multimodal checkpoint, text tower only"
KNOWN: tuple[KnownModel, ...] = (
    KnownModel("gemma-2-2b", "google/gemma-2-2b", 2304, 26, _G2),
    KnownModel("gemma-2-2b-it", "google/gemma-2-2b-it", 2304, 26, "Gemma 2 (instruction-tuned)"),
    KnownModel("gemma-2-9b", "google/gemma-2-9b", 3584, 42, _G2),
    KnownModel("gemma-2-9b-it", "google/gemma-2-9b-it", 3584, 42, "Gemma 2 (instruction-tuned); "
               "Gemma Scope res SAEs"),
    KnownModel("gemma-2-27b", "google/gemma-2-27b", 4608, 46, "Gemma 2; Gemma Scope res SAEs"),
    KnownModel("gemma-2-27b-it", "google/gemma-2-27b-it", 4608, 46, "Gemma 2 (instruction-tuned)"),
    KnownModel("gemma-3-270m", "google/gemma-3-270m", 640, 18, _G3 + "; `bundled` is its GGUF"),
    KnownModel("gemma-3-270m-it", "google/gemma-3-270m-it", 640, 18, _G3 + " (instruction-tuned)"),
    KnownModel("gemma-3-1b-pt", "google/gemma-3-1b-pt", 1152, 26, _G3),
    KnownModel("gemma-3-1b-it", "google/gemma-3-1b-it", 1152, 26, _G3 + " (instruction-tuned)"),
    KnownModel("gemma-3-4b-pt", "google/gemma-3-4b-pt", 2560, 34, f"{_G3}; {_MM}"),
    KnownModel("gemma-3-4b-it", "google/gemma-3-4b-it", 2560, 34, f"{_G3}; {_MM}"),
    KnownModel("gemma-3-12b-pt", "google/gemma-3-12b-pt", 3840, 48, f"{_G3}; {_MM}"),
    KnownModel("gemma-3-12b-it", "google/gemma-3-12b-it", 3840, 48, f"{_G3}; {_MM}"),
    KnownModel("gemma-3-27b-pt", "google/gemma-3-27b-pt", 5376, 62, f"{_G3}; {_MM}"),
    KnownModel("gemma-3-27b-it", "google/gemma-3-27b-it", 5376, 62, f"{_G3}; {_MM}"),
)
ALIASES = {"gemma-3-270m-pt": "gemma-3-270m", "gemma-3-1b": "gemma-3-1b-pt"}
BY_NAME = {k.name: k for k in KNOWN}
BY_HUB = {k.hub_id: k for k in KNOWN}


def known_models() -> list[KnownModel]:
    """Return the short model names `load_model` accepts, with hub id, size and notes."""
    return list(KNOWN)


def lookup(name: str) -> KnownModel | None:
    """The row for a short name, alias or hub id (`gemma-3-1b`, `google/gemma-3-1b-pt`), or None."""
    name = ALIASES.get(name, name)
    return BY_NAME.get(name) or BY_HUB.get(name)


def hub_id(name: str) -> str | None:
    """Hub id of a known short name, alias or hub id; None for anything else."""
    row = lookup(name)
    return row.hub_id if row else None


def same_model(a: str, b: str) -> bool:
    """Whether two model names name the same checkpoint (short name, alias or hub id); names
    scope does not know are compared without an `org/` prefix."""
    ra, rb = lookup(a), lookup(b)
    if ra or rb:
        return ra == rb
    return a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1]
