"""JumpReLU sparse autoencoders and transcoders: parameters, encode/decode, native save/load.

Owns `SAEConfig` (what an SAE reads, writes and where it came from) and `JumpReLUSAE` (an
inference-only `nn.Module`). Tensors in, tensors out: no knowledge of the language model.
The native folder is `cfg.json` + `sae_weights.safetensors`, laid out so SAELens 6.x
`SAE.load_from_disk` reads it too. Training code lives in `scope/train/` and is never imported here.

Shapes: `x [..., d_in]`, `f [..., d_sae]`, `x_hat [..., d_out]` (d_out = d_in for a plain SAE).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from scope.base.atomic import atomic_write
from scope.base.dtypes import DTYPES as _DTYPES
from scope.base.dtypes import dtype_name, to_torch_dtype
from scope.errors import ConfigError, SAEFormatError

log = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FORMAT_VERSION = 1
#: parameter names, in the order they are written
PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
#: SAELens stores a skip transcoder's affine map as `W_skip [d_out, d_in]` (ours transposed)
SAELENS_SKIP_KEY = "W_skip"
KINDS = ("sae", "transcoder")

# Warn when a sampled decoder row's norm is further than this from 1 (Gemma Scope keeps them unit).
_UNIT_NORM_TOL = 1e-2
_NORM_SAMPLE_ROWS = 1024


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
        def positive_int(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not positive_int(value):
                raise ConfigError(f"SAEConfig.{name} must be a positive int, got {value!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        elif not positive_int(self.d_out):
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


class SAEOutput(NamedTuple):
    """Result of `JumpReLUSAE.run`: features and reconstruction of one batch."""

    feature_acts: torch.Tensor
    """[..., d_sae] JumpReLU feature activations."""
    x_hat: torch.Tensor
    """[..., d_out] reconstruction (incl. the affine skip of a transcoder)."""


class JumpReLUSAE(nn.Module):
    """A JumpReLU SAE or transcoder, inference only.

    `pre = x @ W_enc + b_enc`; `f = pre * (pre > threshold)` (strict >, no ReLU, no input
    normalisation, no b_dec subtraction: Gemma Scope folded those into the released weights);
    `x_hat = f @ W_dec + b_dec (+ x @ affine_skip for affine transcoders)`.
    Parameters do not require grad; the module is a frozen function of its weights.
    """

    W_enc: nn.Parameter  # [d_in, d_sae]
    W_dec: nn.Parameter  # [d_sae, d_out]
    b_enc: nn.Parameter  # [d_sae]
    b_dec: nn.Parameter  # [d_out]
    threshold: nn.Parameter  # [d_sae]
    affine_skip: nn.Parameter | None  # [d_in, d_out]

    def __init__(
        self,
        cfg: SAEConfig,
        W_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        threshold: torch.Tensor,
        affine_skip: torch.Tensor | None = None,
    ) -> None:
        """Wrap the given tensors (no copy) after checking their shapes against `cfg`.

        Args:
            cfg: the config; `cfg.dtype` is set from W_enc's dtype.
            W_enc: [d_in, d_sae]; W_dec: [d_sae, d_out]; b_enc, threshold: [d_sae];
            b_dec: [d_out]; affine_skip: [d_in, d_out] or None.
        """
        super().__init__()
        tensors = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": b_enc, "b_dec": b_dec,
                   "threshold": threshold}
        if affine_skip is not None:
            tensors["affine_skip"] = affine_skip
        check_shapes(cfg, tensors, source="JumpReLUSAE(...)")
        dtypes = {t.dtype for t in tensors.values()}
        if len(dtypes) != 1:
            raise SAEFormatError(f"JumpReLUSAE: parameters have mixed dtypes {sorted(map(str, dtypes))}; "
                                 "cast them to one dtype first")
        cfg.dtype = dtype_name(W_enc.dtype)
        self.cfg = cfg
        for name, tensor in tensors.items():
            setattr(self, name, nn.Parameter(tensor, requires_grad=False))
        if affine_skip is None:
            self.register_parameter("affine_skip", None)

    # -- shape-level properties ---------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def d_out(self) -> int:
        return int(self.cfg.d_out)  # set in __post_init__

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def _apply(self, fn, recurse: bool = True):  # keeps cfg.dtype in sync with .to()/.half()
        out = super()._apply(fn, recurse)
        self.cfg.dtype = dtype_name(self.W_enc.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"name={self.cfg.name!r}, hook={self.cfg.hook_name!r}, d_in={self.d_in}, "
                f"d_sae={self.d_sae}, d_out={self.d_out}, dtype={self.cfg.dtype}, "
                f"affine_skip={self.affine_skip is not None}")

    # -- the function --------------------------------------------------------------------------
    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations `x @ W_enc + b_enc`.

        Args:
            x: [..., d_in] activations (cast to the SAE's dtype and device).

        Returns:
            [..., d_sae] pre-activations.
        """
        x = x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """JumpReLU features `pre * (pre > threshold)` (strict >).

        Args:
            x: [..., d_in] activations.

        Returns:
            [..., d_sae] feature activations in the SAE's dtype.
        """
        pre = self.encode_pre(x)
        return pre * (pre > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Linear decoder `f @ W_dec + b_dec` (without a transcoder's affine skip, which needs x).

        Args:
            f: [..., d_sae] feature activations.

        Returns:
            [..., d_out] reconstruction.
        """
        f = f.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        return f @ self.W_dec + self.b_dec

    def run(self, x: torch.Tensor) -> SAEOutput:
        """Encode and decode once, returning both (features are often wanted with x_hat).

        Args:
            x: [..., d_in] activations.

        Returns:
            SAEOutput(feature_acts [..., d_sae], x_hat [..., d_out]).
        """
        f = self.encode(x)
        x_hat = self.decode(f)
        if self.affine_skip is not None:
            x_hat = x_hat + x.to(device=self.W_enc.device, dtype=self.W_enc.dtype) @ self.affine_skip
        return SAEOutput(f, x_hat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction `x_hat` (incl. `x @ affine_skip` for affine transcoders).

        Args:
            x: [..., d_in] activations.

        Returns:
            [..., d_out] reconstruction.
        """
        return self.run(x).x_hat

    def error(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction error `target - forward(x)`; target defaults to x (plain SAEs).

        Args:
            x: [..., d_in] activations the SAE reads.
            target: [..., d_out] activation it should reproduce; required for transcoders.

        Returns:
            [..., d_out] error term, in the SAE's dtype.
        """
        if target is None:
            if self.cfg.kind == "transcoder":
                raise ConfigError("JumpReLUSAE.error: a transcoder predicts a different site; "
                                 f"pass target= (the {self.cfg.hook_name_out} activation)")
            target = x
        return target.to(device=self.W_dec.device, dtype=self.W_dec.dtype) - self.forward(x)

    # -- native save / load -------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The parameters by name (affine_skip only when present), no copies."""
        out = {name: getattr(self, name).data for name in PARAM_NAMES}
        if self.affine_skip is not None:
            out["affine_skip"] = self.affine_skip.data
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the native folder `path/cfg.json` + `path/sae_weights.safetensors`.

        Each file is written to a temporary name and renamed into place, so a reader never sees
        a half-written file. SAELens 6.x `SAE.load_from_disk(path)` reads the folder: cfg.json
        carries SAELens's fields (`architecture`, `d_in`, `d_sae`, `metadata.hook_name`, ...) and
        our full config under the `scope` key.

        Args:
            path: folder to write (created if needed; existing files are replaced).

        Returns:
            The folder path.
        """
        from safetensors.torch import save_file

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_tensors().items()}
        skip = tensors.pop("affine_skip", None)
        if skip is not None:  # SAELens's W_skip is [d_out, d_in]
            tensors[SAELENS_SKIP_KEY] = skip.T.contiguous()
        atomic_write(folder / WEIGHTS_FILENAME,
                      lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
        cfg_json = json.dumps(self.saelens_cfg_dict(), indent=2, sort_keys=False)
        atomic_write(folder / CFG_FILENAME, lambda tmp: Path(tmp).write_text(cfg_json + "\n"))
        return folder

    def saelens_cfg_dict(self) -> dict[str, Any]:
        """cfg.json content: SAELens 6.x fields plus our config under `scope`."""
        cfg = self.cfg
        if cfg.kind == "transcoder":
            arch = "jumprelu_skip_transcoder" if self.affine_skip is not None else "jumprelu_transcoder"
        else:
            arch = "jumprelu"
        metadata = {
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "hook_name_out": cfg.hook_name_out,
            "hook_head_index": None,
            "prepend_bos": True,
            "neuronpedia_id": cfg.neuronpedia_id,
            "release": cfg.release,
            "sae_id": cfg.sae_id,
        }
        out: dict[str, Any] = {
            "architecture": arch,
            "d_in": cfg.d_in,
            "d_sae": cfg.d_sae,
            "dtype": cfg.dtype,
            "device": "cpu",
            # Gemma Scope SAEs read raw activations: no b_dec subtraction, no normalisation.
            "apply_b_dec_to_input": False,
            "normalize_activations": "none",
            # SAELens users hook hook_z unflattened [.., n_heads, d_head]; our capture flattens it.
            "reshape_activations": "hook_z" if cfg.hook_name.endswith("hook_z") else "none",
            "metadata": metadata,
            "format_version": cfg.format_version,
            "scope": cfg.to_dict(),
        }
        if cfg.kind == "transcoder":
            out["d_out"] = cfg.d_out
        return out

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        check_finite: bool = True,
    ) -> JumpReLUSAE:
        """Load a native or SAELens folder (`cfg.json` + `sae_weights.safetensors`).

        Tensors are memory-mapped by safetensors and cast one at a time, so the weights are
        never held twice in the file's dtype.

        Args:
            path: the folder.
            device: where to put the weights (default CPU).
            dtype: cast to this dtype while loading (default: as stored).
            check_finite: refuse NaN/inf weights (off only for scope's own checked cache).

        Returns:
            The SAE. Raises SAEFormatError for missing/corrupt files, keys, shapes, dtypes,
            config fields or NaN/inf weights.
        """
        folder = Path(path)
        cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
        for p in (cfg_path, weights_path):
            if not p.is_file():
                raise SAEFormatError(f"{p}: missing; a native/SAELens SAE folder holds "
                                     f"{CFG_FILENAME} and {WEIGHTS_FILENAME} (write one with sae.save())")
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise SAEFormatError(f"{cfg_path}: not valid JSON ({exc}); re-save the SAE") from exc
        cfg = config_from_saelens_dict(raw, source=cfg_path)
        tensors = read_safetensors(weights_path, device=device, dtype=dtype)
        if "log_threshold" in tensors and "threshold" not in tensors:  # older SAELens checkpoints
            tensors["threshold"] = torch.exp(tensors.pop("log_threshold"))
        if SAELENS_SKIP_KEY in tensors:
            tensors["affine_skip"] = tensors.pop(SAELENS_SKIP_KEY).T
        return cls.from_tensors(cfg, tensors, source=weights_path, check_finite=check_finite)

    @classmethod
    def from_tensors(
        cls,
        cfg: SAEConfig,
        tensors: Mapping[str, torch.Tensor],
        *,
        source: str | os.PathLike = "<tensors>",
        check_finite: bool = True,
    ) -> JumpReLUSAE:
        """Validate named tensors (keys, shapes, NaN/inf) and build the SAE without copying.

        Args:
            cfg: config whose d_in/d_sae/d_out the shapes must match.
            tensors: W_enc, W_dec, b_enc, b_dec, threshold and optionally affine_skip; other keys
                are ignored with a debug log.
            source: file name used in error messages.
            check_finite: scan every tensor for NaN/inf (skip for trusted caches).

        Returns:
            The SAE (with a logged warning if sampled W_dec rows are not unit norm or some
            thresholds are not positive).

        Raises:
            SAEFormatError: a missing key, a wrong shape, a non-float dtype, or NaN/inf values
                (naming `source`, the tensor and the first bad index).
        """
        missing = [k for k in PARAM_NAMES if k not in tensors]
        if missing:
            raise SAEFormatError(
                f"{source}: missing key(s) {missing}; found {sorted(tensors)}. A JumpReLU SAE "
                f"needs {list(PARAM_NAMES)}: re-download the file or point at the right one")
        unknown = sorted(set(tensors) - set(PARAM_NAMES) - {"affine_skip"})
        if unknown:
            log.debug("%s: ignoring unknown tensors %s", source, unknown)
        params = {k: tensors[k] for k in (*PARAM_NAMES, "affine_skip") if k in tensors}
        check_shapes(cfg, params, source=source)
        for key, t in params.items():
            if t.dtype not in _DTYPES.values():
                raise SAEFormatError(f"{source}: tensor {key!r} has dtype {t.dtype}, expected a "
                                     f"float dtype ({', '.join(_DTYPES)}); the file is not an "
                                     "SAE's weights: re-save or re-download it")
        if check_finite:
            for key, t in params.items():
                bad = first_non_finite(t)
                if bad is not None:
                    raise SAEFormatError(
                        f"{source}: tensor {key!r} holds NaN or inf (first at index {bad}); the "
                        "file is corrupt: delete it (and its cache) and download or save it again")
        sae = cls(cfg, **params)
        warn_if_not_unit_norm(sae.W_dec.data, source)
        warn_if_non_positive_threshold(sae.threshold.data, source)
        return sae


# ------------------------------------------------------------------------------------------------
# helpers shared with loading.py
# ------------------------------------------------------------------------------------------------


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """Shape each parameter must have under `cfg`."""
    d_out = int(cfg.d_out or cfg.d_in)
    return {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, d_out), "b_enc": (cfg.d_sae,),
            "b_dec": (d_out,), "threshold": (cfg.d_sae,), "affine_skip": (cfg.d_in, d_out)}


def check_shapes(cfg: SAEConfig, tensors: Mapping[str, Any], *, source: Any) -> None:
    """Raise SAEFormatError naming `source` and the key when a shape differs from `cfg`."""
    want = expected_shapes(cfg)
    for key, t in tensors.items():
        shape = tuple(t.shape)
        if key in want and shape != want[key]:
            raise SAEFormatError(
                f"{source}: key {key!r} has shape {list(shape)}, expected {list(want[key])} for "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.d_out}; the file does not match "
                "its release/config: re-download it or pass the right SAE id")


def first_non_finite(t: torch.Tensor, rows: int = 4096) -> list[int] | None:
    """Index of the first NaN/inf element of `t`, or None; scans `rows` rows at a time."""
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
    for start in range(0, flat.shape[0], rows):
        ok = torch.isfinite(flat[start:start + rows])
        if not bool(ok.all()):
            where = (~ok).nonzero()[0]
            index = start * flat.shape[1] + int(where[0]) * flat.shape[1] + int(where[1])
            return [int(i) for i in torch.unravel_index(torch.tensor(index), t.shape)] \
                if t.dim() else []
    return None


def warn_if_non_positive_threshold(threshold: torch.Tensor, source: Any) -> None:
    """Log a warning when thresholds are <= 0 (a JumpReLU feature then fires on pre <= 0)."""
    n = int((threshold <= 0).sum())
    if n:
        log.warning("%s: %d of %d thresholds are <= 0 (min %.3g); those features pass zero or "
                    "negative pre-activations, which no trained JumpReLU SAE does: check the file",
                    source, n, threshold.numel(), float(threshold.min()))


def warn_if_not_unit_norm(W_dec: torch.Tensor, source: Any) -> None:
    """Log a warning when sampled decoder rows are not unit norm (cheap: <= 1024 rows)."""
    n = W_dec.shape[0]
    step = max(1, n // _NORM_SAMPLE_ROWS)
    norms = W_dec[::step].float().norm(dim=-1)
    if norms.numel() and float((norms - 1).abs().max()) > _UNIT_NORM_TOL:
        log.warning("%s: decoder rows are not unit norm (sampled norms %.3g..%.3g); Gemma Scope "
                    "SAEs have unit-norm W_dec rows, so check the file if it is one",
                    source, float(norms.min()), float(norms.max()))


def read_safetensors(
    path: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    rename: Mapping[str, str] | None = None,
) -> dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file (memory-mapped), casting one tensor at a time.

    Args:
        path: the file.
        device: target device (default CPU).
        dtype: cast floating tensors to this dtype (default: as stored).
        rename: optional map from file key to returned key.

    Returns:
        {name: tensor}. Raises SAEFormatError for a truncated or corrupt file.
    """
    from safetensors import safe_open

    target = to_torch_dtype(dtype) if dtype is not None else None
    out: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():
                t = fh.get_tensor(key)
                if target is not None and t.is_floating_point() and t.dtype != target:
                    t = t.to(target)
                if device is not None and torch.device(device) != t.device:
                    t = t.to(device)
                out[(rename or {}).get(key, key)] = t
    except SAEFormatError:
        raise
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise SAEFormatError(f"{path}: cannot read safetensors ({exc}); the file is truncated or "
                             "corrupt: delete it and download/save it again") from exc
    return out


def config_from_saelens_dict(raw: Mapping[str, Any], *, source: Any = "cfg.json") -> SAEConfig:
    """SAEConfig from a cfg.json written by us, SAELens 6.x, or older SAELens (flat fields).

    Args:
        raw: the parsed cfg.json.
        source: file name for error messages.

    Returns:
        The config; unknown fields go to `extra`.

    Raises:
        SAEFormatError: naming `source` and the field, for any field of the wrong type or range.
    """
    try:
        return _config_from_saelens_dict(raw, source)
    except ConfigError as exc:
        raise SAEFormatError(f"{source}: {exc}; fix the file or save the SAE again") from None


def _config_from_saelens_dict(raw: Any, source: Any) -> SAEConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a JSON object of SAE fields, got a {type(raw).__name__}")
    if isinstance(raw.get("scope"), Mapping):
        return SAEConfig.from_dict(raw["scope"])
    meta = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise ConfigError(f"'metadata' must be an object, got {type(meta).__name__}")
    meta = dict(meta)

    def pick(key: str, default: Any = None) -> Any:  # SAELens 6 nests in metadata; <6 is flat
        return meta.get(key, raw.get(key, default))

    arch = str(raw.get("architecture", "jumprelu"))
    if "jumprelu" not in arch:
        log.warning("%s: architecture %r is not JumpReLU; loading it as JumpReLU may not match "
                    "the original encoder", source, arch)
    hook_name = pick("hook_name")
    d_in, d_sae, d_out = raw.get("d_in"), raw.get("d_sae"), raw.get("d_out")
    for name, value in (("d_in", d_in), ("d_sae", d_sae), ("d_out", d_out)):
        if (value is not None or name != "d_out") and (
                not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ConfigError(f"{name!r} must be a positive integer, got {value!r}")
    if not hook_name or not isinstance(hook_name, str):
        raise ConfigError(f"hook_name {hook_name!r} (top level or metadata.hook_name) must name "
                          "the TransformerLens hook the SAE reads, e.g. 'blocks.20.hook_resid_post'")
    if raw.get("apply_b_dec_to_input"):
        log.warning("%s: apply_b_dec_to_input=true is ignored; scope encodes raw activations "
                    "(fold b_dec into b_enc first if this SAE needs it)", source)
    kind = "transcoder" if ("transcoder" in arch or (d_out and d_out != d_in)) else "sae"
    used = {"d_in", "d_sae", "d_out", "dtype", "architecture", "metadata", "device"}
    extra = {k: v for k, v in raw.items() if k not in used}
    extra.update({f"metadata.{k}": v for k, v in meta.items()
                  if k not in {"hook_name", "model_name", "neuronpedia_id", "hook_name_out"}})
    extra["architecture"] = arch
    return SAEConfig(
        d_in=d_in, d_sae=d_sae, hook_name=hook_name,
        d_out=d_out or None,
        hook_name_out=pick("hook_name_out") or None,
        model_name=str(pick("model_name", "") or ""),
        dtype=dtype_name(raw.get("dtype", "float32") or "float32"),
        neuronpedia_id=pick("neuronpedia_id"),
        kind=kind, extra=_jsonable(extra),
    )


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))
