"""`JumpReLUSAE`: a JumpReLU sparse autoencoder or transcoder, inference only.

Tensors in, tensors out: no knowledge of the language model. The config lives in
`scope.saes.config`, the file layouts in `scope.saes.formats` (`save` writes the native folder,
which SAELens 6's `SAE.load_from_disk` reads too). Training code lives in `scope/train/` and is
never imported here.

Shapes: `x [... d_in]`, `f [... d_sae]`, `x_hat [... d_out]` (d_out = d_in for a plain SAE).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from scope.base.dtypes import DTYPES as _DTYPES
from scope.base.dtypes import dtype_name
from scope.base.shapes import (
    DecoderWeight,
    EncoderWeight,
    Features,
    FeatureVector,
    OutVector,
    SAEIn,
    SAEOut,
    SkipWeight,
)
from scope.errors import ConfigError, SAEFormatError
from scope.saes.config import PARAM_NAMES, SAEConfig, check_shapes
from scope.saes.formats.native import (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    read_native,
    saelens_cfg_dict,
    write_native,
)
from scope.saes.formats.tensors import first_non_finite

__all__ = ["CFG_FILENAME", "PARAM_NAMES", "WEIGHTS_FILENAME", "JumpReLUSAE", "SAEConfig",
           "SAEOutput"]

log = logging.getLogger(__name__)

# Warn when a sampled decoder row's norm is further than this from 1 (Gemma Scope keeps them unit).
_UNIT_NORM_TOL = 1e-2
_NORM_SAMPLE_ROWS = 1024


class SAEOutput(NamedTuple):
    """Result of `JumpReLUSAE.run`: features and reconstruction of one batch."""

    feature_acts: Features
    """[..., d_sae] JumpReLU feature activations."""
    x_hat: SAEOut
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
        W_enc: EncoderWeight,
        W_dec: DecoderWeight,
        b_enc: FeatureVector,
        b_dec: OutVector,
        threshold: FeatureVector,
        affine_skip: SkipWeight | None = None,
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
    def encode_pre(self, x: SAEIn) -> Features:
        """Pre-activations `x @ W_enc + b_enc`.

        Args:
            x: [..., d_in] activations (cast to the SAE's dtype and device).

        Returns:
            [..., d_sae] pre-activations.
        """
        x = x.to(device=self.W_enc.device, dtype=self.W_enc.dtype)
        return x @ self.W_enc + self.b_enc

    def encode(self, x: SAEIn) -> Features:
        """JumpReLU features `pre * (pre > threshold)` (strict >).

        Args:
            x: [..., d_in] activations.

        Returns:
            [..., d_sae] feature activations in the SAE's dtype.
        """
        pre = self.encode_pre(x)
        return pre * (pre > self.threshold)

    def decode(self, f: Features) -> SAEOut:
        """Linear decoder `f @ W_dec + b_dec` (without a transcoder's affine skip, which needs x).

        Args:
            f: [..., d_sae] feature activations.

        Returns:
            [..., d_out] reconstruction.
        """
        f = f.to(device=self.W_dec.device, dtype=self.W_dec.dtype)
        return f @ self.W_dec + self.b_dec

    def run(self, x: SAEIn) -> SAEOutput:
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

    def forward(self, x: SAEIn) -> SAEOut:
        """Reconstruction `x_hat` (incl. `x @ affine_skip` for affine transcoders).

        Args:
            x: [..., d_in] activations.

        Returns:
            [..., d_out] reconstruction.
        """
        return self.run(x).x_hat

    def error(self, x: SAEIn, target: SAEOut | None = None) -> SAEOut:
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
    def state_tensors(self) -> dict[str, Tensor]:
        """The parameters by name (affine_skip only when present), no copies."""
        out = {name: getattr(self, name).data for name in PARAM_NAMES}
        if self.affine_skip is not None:
            out["affine_skip"] = self.affine_skip.data
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write the native folder `path/cfg.json` + `path/sae_weights.safetensors`.

        Each file is written to a temporary name and renamed into place, so a reader never sees
        a half-written file. SAELens 6's `SAE.load_from_disk(path)` reads the folder and its
        evals run on it: cfg.json carries SAELens's fields (`architecture`, `d_in`, `d_sae`,
        `metadata.sae_lens_version`, `metadata.hook_name`, `metadata.model_name`, ...; see
        `scope.saes.formats.native`) and our full config under the `scope` key.

        Args:
            path: folder to write (created if needed; existing files are replaced).

        Returns:
            The folder path.
        """
        return write_native(path, self.cfg, self.state_tensors())

    def saelens_cfg_dict(self) -> dict[str, Any]:
        """cfg.json content: SAELens 6 fields plus our config under `scope`."""
        return saelens_cfg_dict(self.cfg, has_skip=self.affine_skip is not None)

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
        cfg, tensors, weights_path = read_native(path, device=device, dtype=dtype)
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
