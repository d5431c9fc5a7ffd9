"""The native folder, which is also SAELens 6's: `cfg.json` + `sae_weights.safetensors`.

`cfg.json` carries every field SAELens 6's `SAE.load_from_disk` and its evals read (top-level
`architecture`, `d_in`, `d_sae`, `dtype`, `apply_b_dec_to_input`, `normalize_activations`,
`reshape_activations`, and `metadata` with `sae_lens_version` >= 6 so SAELens does not treat the
folder as a pre-6 config, `model_name`, `hook_name`, `context_size`, `prepend_bos`, ...) plus
scope's full `SAEConfig` under the `scope` key. Reading accepts scope's folders, SAELens 6
folders (fields under `metadata`) and older SAELens ones (flat fields).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scope.base.atomic import atomic_write, atomic_write_text
from scope.base.dtypes import dtype_name
from scope.errors import ConfigError, SAEFormatError
from scope.saes.config import SAEConfig
from scope.saes.formats.tensors import read_safetensors

log = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
FILES = (CFG_FILENAME, WEIGHTS_FILENAME)
#: SAELens stores a skip transcoder's affine map as `W_skip [d_out, d_in]` (ours transposed)
SAELENS_SKIP_KEY = "W_skip"
#: the SAELens config layout scope writes (metadata-nested fields, introduced in SAELens 6.0)
SAELENS_FORMAT_VERSION = "6.0.0"
#: Gemma Scope 1 and 2 were trained on 1,024-token sequences with BOS (both reports)
GEMMA_SCOPE_CONTEXT = 1024


def saelens_model_name(model_name: str) -> str:
    """The name SAELens / TransformerLens load a model by: the hub id for scope's short names
    (`gemma-3-270m` -> `google/gemma-3-270m`), anything else unchanged."""
    from scope.model.names import hub_id

    return hub_id(model_name) or model_name


def _context_size(cfg: SAEConfig) -> int | None:
    """Sequence length the SAE was trained on, where it is known."""
    training = cfg.extra.get("training")
    if isinstance(training, Mapping) and isinstance(training.get("ctx"), int):
        return int(training["ctx"])
    if isinstance(cfg.extra.get("context_size"), int):
        return int(cfg.extra["context_size"])
    if str(cfg.extra.get("source_format", "")).startswith("gemma-scope"):
        return GEMMA_SCOPE_CONTEXT
    return None


def architecture(cfg: SAEConfig, has_skip: bool) -> str:
    """SAELens's architecture name for this SAE."""
    if cfg.kind == "transcoder":
        return "jumprelu_skip_transcoder" if has_skip else "jumprelu_transcoder"
    return "jumprelu"


def saelens_cfg_dict(cfg: SAEConfig, *, has_skip: bool = False) -> dict[str, Any]:
    """cfg.json content: SAELens 6 fields plus our config under `scope`.

    Args:
        cfg: the SAE's config.
        has_skip: the SAE has an affine skip (a skip transcoder).
    """
    metadata = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": None,  # not trained by SAELens
        "model_name": saelens_model_name(cfg.model_name),
        "model_class_name": "HookedTransformer",
        "model_from_pretrained_kwargs": {},
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "hook_name_out": cfg.hook_name_out,
        "prepend_bos": True,
        "exclude_special_tokens": True,
        "context_size": _context_size(cfg),
        "dataset_path": None,
        "seqpos_slice": [None],
        "neuronpedia_id": cfg.neuronpedia_id,
        "release": cfg.release,
        "sae_id": cfg.sae_id,
    }
    out: dict[str, Any] = {
        "architecture": architecture(cfg, has_skip),
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


def write_native(folder: str | Path, cfg: SAEConfig, tensors: Mapping[str, torch.Tensor]) -> Path:
    """Write `folder/cfg.json` + `folder/sae_weights.safetensors`, each file atomically.

    Args:
        folder: created if needed; existing files are replaced.
        cfg: the config.
        tensors: scope's parameter names (`affine_skip` optional, written as SAELens's W_skip).

    Returns:
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    skip = out.pop("affine_skip", None)
    if skip is not None:  # SAELens's W_skip is [d_out, d_in]
        out[SAELENS_SKIP_KEY] = skip.T.contiguous()
    atomic_write(folder / WEIGHTS_FILENAME,
                 lambda tmp: save_file(out, str(tmp), metadata={"format": "pt"}))
    cfg_json = json.dumps(saelens_cfg_dict(cfg, has_skip=skip is not None), indent=2)
    atomic_write_text(folder / CFG_FILENAME, cfg_json + "\n")
    return folder


def read_native(folder: str | Path, *, device=None, dtype=None
                ) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    """Config and tensors (scope's names) of a native/SAELens folder, and its weights file.

    Raises:
        SAEFormatError: a missing file, invalid JSON, a bad field, or an unreadable weights file.
    """
    folder = Path(folder)
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
    return cfg, tensors, weights_path


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
