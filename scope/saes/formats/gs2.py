"""Gemma Scope 2 (Gemma 3): one folder per SAE, `config.json` + `params.safetensors`.

`config.json` names the Hugging Face module the SAE reads (`hf_hook_point_in`) and, for
transcoders, writes (`hf_hook_point_out`), plus `width`, `model_name`, `type`. The weights use
lowercase keys (`w_enc`, `w_dec`, ...; affine transcoders add `affine_skip_connection`). Shapes
come from the local safetensors header (SAELens's own loader asks the hub for them, and fails
offline).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from scope.errors import SAEFormatError
from scope.saes import releases
from scope.saes.config import SAEConfig, file_config
from scope.saes.formats.tensors import read_safetensors, safetensors_info

log = logging.getLogger(__name__)

GS2_CONFIG_FILENAME = "config.json"
GS2_WEIGHTS_FILENAME = "params.safetensors"
FILES = (GS2_CONFIG_FILENAME, GS2_WEIGHTS_FILENAME)
#: file key -> scope's parameter name
GS2_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
            "threshold": "threshold", "affine_skip_connection": "affine_skip"}

# Hugging Face module path in a Gemma Scope 2 config -> TransformerLens hook (docs/saes.md).
_HF_HOOKS = [
    (re.compile(r"(?:^|\.)layers\.(\d+)\.output$"), "blocks.{L}.hook_resid_post"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.post_feedforward_layernorm\.output$"),
     "blocks.{L}.hook_mlp_out"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj\.input$"), "blocks.{L}.attn.hook_z"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.pre_feedforward_layernorm\.output$"),
     "blocks.{L}.ln2.hook_normalized_with_gain"),
]


def hf_to_tl_hook(hf_hook: str) -> str | None:
    """TransformerLens hook for a Gemma Scope 2 `hf_hook_point_*` (None when unknown)."""
    for pattern, template in _HF_HOOKS:
        m = pattern.search(hf_hook)
        if m:
            return template.format(L=m.group(1))
    return None


def gs2_config(cfg_path: Path, weights_path: Path, entry: releases.SAEEntry | None = None
               ) -> SAEConfig:
    """The SAEConfig of a Gemma Scope 2 SAE from its config.json and the weights' header.

    Hooks come from `hf_hook_point_in/out` mapped to TransformerLens names, falling back to the
    registry's guess; shapes from the safetensors header (no tensor is read).

    Raises:
        SAEFormatError: invalid JSON, missing keys, a site scope does not know, or a width that
            disagrees with the weights.
    """
    try:
        gcfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({exc}); download it again") from exc
    if not isinstance(gcfg, dict):
        raise SAEFormatError(f"{cfg_path}: expected a JSON object (a Gemma Scope 2 config), got "
                             f"a {type(gcfg).__name__}; download it again")
    shapes = {k: v.shape for k, v in safetensors_info(weights_path).items()}
    missing = [k for k in GS2_KEYS if k != "affine_skip_connection" and k not in shapes]
    if missing:
        raise SAEFormatError(f"{weights_path}: missing key(s) {missing}; found {sorted(shapes)}. "
                             f"A Gemma Scope 2 file holds {sorted(GS2_KEYS)[:5]} (lowercase)")
    w_enc, w_dec = shapes["w_enc"], shapes["w_dec"]
    if len(w_enc) != 2 or len(w_dec) != 2:
        raise SAEFormatError(f"{weights_path}: w_enc {list(w_enc)} / w_dec {list(w_dec)} "
                             "must be 2-D")
    d_in, d_sae, d_out = w_enc[0], w_enc[1], w_dec[1]
    info = entry.info if entry else {}
    hook_in = hf_to_tl_hook(str(gcfg.get("hf_hook_point_in", ""))) or info.get("hook_name")
    if not hook_in:
        raise SAEFormatError(f"{cfg_path}: hf_hook_point_in {gcfg.get('hf_hook_point_in')!r} "
                             "is not a Gemma Scope 2 site (resid_post, mlp_out, attn_out, "
                             "transcoder); load it with hook_name= via a native folder")
    if info.get("hook_name") and info["hook_name"] != hook_in:
        log.warning("%s: config says hook %s, registry says %s; using the config",
                    cfg_path, hook_in, info["hook_name"])
    if info.get("d_in") and info["d_in"] != d_in:
        log.warning("%s: d_in %d in the file differs from the registry's derived %d; "
                    "using the file", weights_path, d_in, info["d_in"])
    kind_raw = str(gcfg.get("type", "")).lower()
    hf_out = str(gcfg.get("hf_hook_point_out", "") or "")
    is_tc = kind_raw == "transcoder" or "affine_skip_connection" in shapes or bool(
        hf_out and hf_out != gcfg.get("hf_hook_point_in"))
    hook_out = (hf_to_tl_hook(hf_out) or info.get("hook_name_out")) if is_tc else None
    if is_tc and not hook_out:
        raise SAEFormatError(f"{cfg_path}: transcoder output hook {hf_out!r} is not a known site")
    width = gcfg.get("width")
    if isinstance(width, int) and width != d_sae:
        raise SAEFormatError(f"{cfg_path}: width {width} disagrees with w_enc's {d_sae} "
                             f"features in {weights_path}; the files are from different SAEs")
    extra = {k: v for k, v in gcfg.items() if k not in {"model_name"}}
    extra.update({"source_format": releases.GS2_FORMAT, "source_file": str(weights_path)})
    if entry:
        extra.update({"repo_id": entry.repo_id, "path": entry.path,
                      "l0_label": info.get("l0_label"), "layer": info.get("layer")})
    return file_config(
        cfg_path, d_in=d_in, d_sae=d_sae, d_out=d_out, hook_name=hook_in, hook_name_out=hook_out,
        model_name=str(gcfg.get("model_name") or (entry.release.model if entry else "")),
        release=entry.release.name if entry else "", sae_id=entry.sae_id if entry else "",
        neuronpedia_id=info.get("neuronpedia"), kind="transcoder" if is_tc else "sae",
        extra=extra)


def read_gs2(cfg_path: Path, weights_path: Path, *, entry: releases.SAEEntry | None = None,
             device=None, dtype=None) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """Config and tensors (scope's names) of a Gemma Scope 2 SAE/transcoder."""
    cfg = gs2_config(cfg_path, weights_path, entry)
    return cfg, read_safetensors(weights_path, device=device, dtype=dtype, rename=GS2_KEYS)
