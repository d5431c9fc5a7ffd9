"""The one rule for relative strengths: a store's maxima apply only to the very SAE it was
extracted with (same name, width and hook; and the same spec when the caller knows it).

`scope.steering(..., relative_to=store)` and `scope steer --relative STORE` both check here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scope.errors import SteeringError


def check_relative_store(store: Any, sae: Any, spec: str | None = None, *,
                         flag: str = "relative_to") -> None:
    """Refuse a store whose SAE of this name is another SAE, so its maxima do not apply.

    Args:
        store: an open store (`scope.open_store`).
        sae: the loaded SAE the strengths are for.
        spec: what the user passed to load it (`--sae`); compared with the store's recorded spec
            when given (an SAE built in memory has none).
        flag: how the error names the argument (`--relative` on the CLI).

    Raises:
        SteeringError: the store has no SAE of that name, or it was made from another SAE.
    """
    name = sae.cfg.name
    problems = store_sae_mismatches(store, sae, spec)
    if problems is None:
        names = [e.get("name") for e in list(store.manifest.get("saes") or [])]
        raise SteeringError(f"{flag} {store.path}: the store has no SAE {name!r} (it has "
                            f"{names}); extract a store with this SAE first")
    if problems:
        raise SteeringError(
            f"{flag} {store.path}: its SAE {name!r} is not the SAE you loaded "
            f"({'; '.join(problems)}), so its max activations do not apply; load the SAE the "
            "store was extracted with, or use a store of this SAE")


def store_sae_mismatches(store: Any, sae: Any, spec: str | None = None) -> list[str] | None:
    """How the store's SAE of `sae`'s name differs from `sae` (width, hook, and the recorded
    spec when `spec` is given): [] when it is the same SAE, None when the store has no SAE of
    that name. `scope attribute --store` uses it too: another SAE's labels do not apply."""
    entries: list[Mapping] = list(store.manifest.get("saes") or [])
    entry = next((e for e in entries if e.get("name") == sae.cfg.name), None)
    if entry is None:
        return None
    problems = []
    if entry.get("d_sae") != sae.cfg.d_sae:
        problems.append(f"d_sae {entry.get('d_sae')} vs {sae.cfg.d_sae}")
    if entry.get("hook_name") not in (None, sae.cfg.hook_name):
        problems.append(f"hook {entry.get('hook_name')} vs {sae.cfg.hook_name}")
    if spec is not None and not _same_spec(entry.get("spec"), getattr(sae, "scope_spec", spec),
                                           spec):
        problems.append(f"spec {entry.get('spec')!r} vs {spec!r}")
    return problems


def _same_spec(recorded: Any, resolved: str, given: str) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    if recorded in (resolved, given):
        return True
    a, b = Path(recorded).expanduser(), Path(given).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()
