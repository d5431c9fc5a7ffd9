"""The exceptions scope raises for user errors.

Every message names the offending file, argument or name and says how to fix it. Each class
also derives from the builtin a caller would naturally catch (ValueError, FileNotFoundError,
KeyError) so generic handlers keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ScopeError(Exception):
    """Base class of every error scope raises on purpose."""

    exit_code: int = 2
    """Exit status of the `scope` command: 2 when the user must change the command or its
    inputs (the default), 1 for a fault while running a correct command (network, disk)."""


class ConfigError(ScopeError, ValueError):
    """A `--config` file, flag or argument value that does not fit (wrong key, type or range)."""


class UsageError(ConfigError):
    """A command line the `scope` command cannot parse: unknown flag, missing or malformed value."""


class UnknownModelError(ScopeError, ValueError):
    """A model name, id or path that scope cannot resolve."""


class UnknownSAEError(ScopeError, KeyError):
    """A release, SAE id or SAE path that scope cannot resolve."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class HubUnavailableError(ScopeError, ConnectionError):
    """The Hugging Face hub cannot be reached and the file is not in the local cache."""

    exit_code = 1


class SAEFormatError(ScopeError, ValueError):
    """An SAE file that is truncated, corrupt, missing a key, mis-shaped or holds NaN/inf."""


class ShapeMismatchError(ScopeError, ValueError):
    """An SAE whose width does not match the activation it is asked to read."""


class HookNameError(ScopeError, KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorpusError(ScopeError, ValueError):
    """A corpus that is empty, unreadable or malformed."""


class StoreError(ScopeError, ValueError):
    """A feature store that is missing, corrupt, or made with a different configuration."""


class CheckpointError(ScopeError, ValueError):
    """A training checkpoint that is corrupt, truncated, not scope's format or of another SAE."""


class StoreOutsideError(StoreError):
    """A store whose manifest names a path outside the store folder (refused: never followed)."""


class StoreCorruptError(StoreError):
    """A store file that is missing, truncated or not what its name says."""


class StoreLockedError(StoreError):
    """Another live run is writing the same store folder."""


class StoreFullError(StoreError, OSError):
    """The disk filled up while writing a store; the last complete generation is kept."""

    exit_code = 1

    def __str__(self) -> str:  # StoreFullError(errno, message): show the message
        return str(self.args[-1]) if self.args else ""


class NonFiniteActivationError(ScopeError, ValueError):
    """An SAE produced a NaN or infinite feature activation during extraction."""


class AttributionError(ScopeError, ValueError):
    """Bad input to attribution: a target that is not one token, an unknown mode or SAE."""


class SteeringError(ScopeError, ValueError):
    """A steering request that cannot be applied (unknown feature, bad strength, foreign SAE)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the closest of `choices`, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class StoreChangedError(StoreError):
    """A store that a run rewrote while a reader held it open: its data is intact, reopen it."""

    exit_code = 1


class ExplainError(ScopeError, RuntimeError):
    """The explainer or judge model cannot be reached or keeps answering nonsense."""

    exit_code = 1


class EndpointAnswerError(ExplainError):
    """A chat endpoint answered, but not with a chat completion (HTML, non-UTF-8, not JSON, too
    large, too slow, a redirect elsewhere); reported per feature."""


class EndpointConfigError(ConfigError):
    """An `--endpoint` that is not a plain http(s) URL (control characters, no host, credentials
    in the URL, another scheme)."""


class ExplanationImportError(StoreError):
    """An explanation file to import that is unreadable, truncated, not Neuronpedia's format, has
    a bad row (named by file and row) or belongs to another model; nothing was imported."""


class ExportError(StoreError):
    """An export that cannot be written as asked (`--out` inside the store, a folder that holds
    something else, non-finite values in the store, a payload over the upload limit)."""


class PickleWeightsError(UnknownModelError):
    """A model checkpoint whose only weights are pickles (`pytorch_model.bin`, `*.pt`): scope
    loads safetensors only, since unpickling can run code; the message says how to convert."""


class SAEBenchPathError(ConfigError):
    """A `--saebench-json` path that is a folder (or otherwise not a file that can be written)."""


class DeviceError(ScopeError, ValueError):
    """A device this machine does not have (`cuda` without a GPU, `cuda:3` on a 2-GPU host)."""


class WontFitError(ScopeError, MemoryError):
    """A planned run that will not fit the device's memory, `max_memory` or the disk; the message
    gives the figure and the way out (fewer features per pass, a smaller batch, another device)."""


class MissingLayerError(SAEFormatError):
    """A per-layer dictionary set (e.g. bundled/transcoders) that lacks some of its layers."""
