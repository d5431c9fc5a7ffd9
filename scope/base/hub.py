"""Where files come from and go: Hugging Face hub errors as scope errors, and scope's cache.

`hub_error` is the one translation of `huggingface_hub` exceptions (gated repo, missing repo or
file, offline, unreachable) into `HubUnavailableError` / the caller's not-found error, with the
fix in the message. `cache_root` is the one answer to "where does scope cache converted files":
`$SCOPE_CACHE` (with `~` expanded) or `~/.cache/scope`.
"""

from __future__ import annotations

import os
from pathlib import Path

from scope.errors import HubUnavailableError, ScopeError

CACHE_ENV = "SCOPE_CACHE"


def cache_root() -> Path:
    """scope's cache folder: `$SCOPE_CACHE` (`~` expanded) or `~/.cache/scope`."""
    base = os.environ.get(CACHE_ENV)
    return Path(base).expanduser() if base else Path.home() / ".cache" / "scope"


def hub_error(exc: BaseException, what: str, not_found: type[ScopeError], *,
              fix: str = "") -> ScopeError | None:
    """The scope error for a `huggingface_hub` failure while fetching `what`, or None.

    Args:
        exc: the exception `hf_hub_download` / `snapshot_download` raised.
        what: "repo_id" or "repo_id/filename", for the message.
        not_found: error class for a repository or file that does not exist on the hub.
        fix: what the user can do, appended to the message.

    Returns:
        HubUnavailableError (gated, offline, unreachable and not cached), `not_found(...)` (no
        such repository, revision or file), or None when `exc` is not a hub or network error.
    """
    from huggingface_hub import errors as hf

    hint = f" {fix}" if fix else ""
    if isinstance(exc, hf.GatedRepoError):
        return HubUnavailableError(f"{what}: the repository is gated and no access token was "
                                   "accepted: accept its licence on huggingface.co and run "
                                   f"`hf auth login` (or set HF_TOKEN).{hint}")
    if isinstance(exc, hf.LocalEntryNotFoundError) or isinstance(exc, hf.OfflineModeIsEnabled):
        return _unavailable(what, exc, hint)
    if isinstance(exc, (hf.EntryNotFoundError, hf.RepositoryNotFoundError,
                        hf.RevisionNotFoundError)):
        return not_found(f"{what} does not exist on the Hugging Face hub (or it is private): "
                         f"check the name.{hint}")
    if isinstance(exc, (hf.HfHubHTTPError, OSError)):
        return _unavailable(what, exc, hint)
    return None


def _unavailable(what: str, exc: BaseException, hint: str) -> HubUnavailableError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub is unreachable"
    return HubUnavailableError(
        f"cannot get {what}: {why} and it is not in the local cache "
        f"(HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it once with "
        f"network access (`hf download ...`) and copy the cache, or load a local copy by path."
        f"{hint} ({type(exc).__name__})")
