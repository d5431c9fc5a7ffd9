"""`SAEConfig`: what an SAE reads and writes, and where it came from.

Written into every saved SAE (under the `scope` key of `cfg.json`). Also owns the parameter
names and the shape each one must have under a config, so every file format checks shapes
with the same rule (`check_shapes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scope.base.dtypes import dtype_name
from scope.errors import ConfigError, SAEFormatError

FORMAT_VERSION = 1
#: parameter names, in the order they are written
PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
KINDS = ("sae", "transcoder")


@dataclass
class SAEConfig:
    """What an SAE reads and writes, and where it came from. Written into every saved SAE."""

    d_in: int
    """Width of the activation the encoder reads (d_model, or n_heads*d_head for attention)."""
    d_sae: int
    """Number of features (the release's "width", e.g. 16384)."""
    hook_name: str
    """TransformerLens hook the SAE reads, e.g. `blocks.20.hook_resid_post`."""
    d_out: int | None = None
    """Width the decoder writes; None means d_in (a plain SAE). Set for transcoders."""
    hook_name_out: str | None = None
    """For transcoders: the hook whose activation the decoder predicts (`blocks.L.hook_mlp_out`)."""
    model_name: str = ""
    """Model the SAE was trained on, e.g. `gemma-2-2b` or `google/gemma-3-270m`."""
    release: str = ""
    """Registry release name (`gemma-scope-2b-pt-res`), empty for local files."""
    sae_id: str = ""
    """SAE id within the release (`layer_20/width_16k/average_l0_71`), empty for local files."""
    dtype: str = "float32"
    """Dtype of the parameters as loaded ("float32", "bfloat16", ...)."""
    neuronpedia_id: str | None = None
    """Neuronpedia id (`gemma-2-2b/20-gemmascope-res-16k`) where Neuronpedia hosts this SAE."""
    kind: str = "sae"
    """"sae" (reconstructs its input) or "transcoder" (predicts hook_name_out from hook_name)."""
    format_version: int = FORMAT_VERSION
    """Version of this config's layout; loaders accept older versions and unknown keys."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (l0 label, source file, site notes); JSON-serialisable."""

    def __post_init__(self) -> None:
        """Check every field's type and range; ConfigError names the field and the value."""
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ConfigError(f"SAEConfig.{name} must be a positive int, got {value!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        elif not _positive_int(self.d_out):
            raise ConfigError(f"SAEConfig.d_out must be a positive int or None, got {self.d_out!r}")
        if not isinstance(self.hook_name, str) or not self.hook_name:
            raise ConfigError("SAEConfig.hook_name must name a TransformerLens hook, "
                              f"e.g. 'blocks.20.hook_resid_post', got {self.hook_name!r}")
        for name in ("model_name", "release", "sae_id"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"SAEConfig.{name} must be a string, got "
                                  f"{getattr(self, name)!r}")
        for name in ("hook_name_out", "neuronpedia_id"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(f"SAEConfig.{name} must be a string or null, got "
                                  f"{getattr(self, name)!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"SAEConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "sae" and self.d_out != self.d_in:
            raise ConfigError(f"SAEConfig: an SAE with d_out={self.d_out} != d_in={self.d_in} "
                              "must have kind='transcoder'")
        self.dtype = dtype_name(self.dtype)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"SAEConfig.extra must be a mapping, got {type(self.extra).__name__}")

    @property
    def name(self) -> str:
        """`release/sae_id` when the SAE came from the registry, else its hook name."""
        if self.release:
            return f"{self.release}/{self.sae_id}" if self.sae_id else self.release
        return self.hook_name

    @property
    def neuronpedia_url(self) -> str | None:
        """Base Neuronpedia page of this SAE (append `/<feature>`), or None."""
        from scope.saes.releases import neuronpedia_url

        return neuronpedia_url(self.neuronpedia_id)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SAEConfig:
        """Build a config from `to_dict()` output; unknown keys are kept in `extra`.

        Args:
            data: mapping with at least d_in, d_sae, hook_name.

        Returns:
            The config.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"an SAE config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = kwargs.pop("extra", None) or {}
        if not isinstance(extra, Mapping):
            raise ConfigError(f"SAEConfig.extra must be a mapping, got {type(extra).__name__}")
        extra = dict(extra)
        extra.update({k: v for k, v in data.items() if k not in known})
        return cls(**kwargs, extra=extra)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def file_config(source: Any, **fields: Any) -> SAEConfig:
    """`SAEConfig(**fields)` for an SAE read from `source`; a bad field is a SAEFormatError
    naming the file (ConfigError is for arguments the caller passed)."""
    try:
        return SAEConfig(**fields)
    except ConfigError as exc:
        raise SAEFormatError(f"{source}: {exc}; the file does not describe a usable SAE") from None


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Shape each parameter must have under `cfg`."""
    d_out = int(cfg.d_out or cfg.d_in)
    return {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, d_out), "b_enc": (cfg.d_sae,),
            "b_dec": (d_out,), "threshold": (cfg.d_sae,), "affine_skip": (cfg.d_in, d_out)}


def check_shapes(cfg: SAEConfig, tensors: Mapping[str, Any], *, source: Any) -> None:
    """Raise SAEFormatError naming `source` and the key when a shape differs from `cfg`.

    Args:
        cfg: the config the shapes must fit.
        tensors: {name: anything with `.shape`} (tensors, numpy arrays, shape-only records).
        source: file name used in the message.
    """
    want = expected_shapes(cfg)
    for key, t in tensors.items():
        shape = tuple(t.shape)
        if key in want and shape != want[key]:
            raise SAEFormatError(
                f"{source}: key {key!r} has shape {list(shape)}, expected {list(want[key])} for "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.d_out}; the file does not match "
                "its release/config: re-download it or pass the right SAE id")
