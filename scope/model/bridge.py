"""A loaded Hugging Face Gemma, wrapped as a TransformerLens `TransformerBridge`.

No weight processing: every hook sees exactly what the Hugging Face modules compute. Also owns
the check that a checkpoint is a Gemma 2 / Gemma 3 text model, the text tower of a multimodal
Gemma 3, and the corrections of bridge defects TransformerLens 4.3 still has (docs/models.md):
the KV-cache keyword and the tokenizer's padding side.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import torch

from scope.errors import UnknownModelError
from scope.model.fast_path import install_fast_path

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

# model_type in config.json -> the Hugging Face causal-LM class the bridge adapts
ARCHITECTURES = {
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",  # multimodal checkpoint: only the text tower is converted
}


def check_config(hf_config: Any, where: str = "config.json") -> str:
    """Check that a checkpoint is a Gemma 2 / Gemma 3 text model; return its causal-LM class name.

    Args:
        hf_config: a transformers `PretrainedConfig` (model_type gemma2, gemma3_text or gemma3).
        where: how to name the checkpoint in error messages.

    Returns:
        "Gemma2ForCausalLM" or "Gemma3ForCausalLM" (a multimodal Gemma 3 is loaded as its text
        tower).

    Raises:
        UnknownModelError: any other model type, or a bidirectional Gemma (EmbeddingGemma).
    """
    model_type = getattr(hf_config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnknownModelError(
            f"{where}: model_type {model_type!r} is not a Gemma 2 / Gemma 3 text model; scope "
            f"loads model_type {', '.join(sorted(ARCHITECTURES))}. Point load_model at a Gemma "
            "checkpoint (or use 'bundled')."
        )
    text = hf_config.get_text_config() if model_type == "gemma3" else hf_config
    if getattr(text, "use_bidirectional_attention", False):
        raise UnknownModelError(f"{where}: bidirectional attention (EmbeddingGemma) is not supported")
    return arch


def _text_tower(hf_model: Any) -> Any:
    """A `Gemma3ForCausalLM` sharing the text weights of a multimodal Gemma 3 (vision dropped)."""
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):  # no allocation: both submodules are replaced right away
        causal = Gemma3ForCausalLM(hf_model.config.get_text_config())
    causal.model = hf_model.model.language_model
    causal.lm_head = hf_model.lm_head
    causal.generation_config = hf_model.generation_config
    placed = getattr(hf_model, "hf_device_map", None)
    if placed:  # the same placement, under the text tower's module names (vision dropped)
        causal.hf_device_map = {k.replace("model.language_model", "model", 1): v
                                for k, v in placed.items()
                                if k.startswith(("model.language_model", "lm_head"))}
    return causal


def make_bridge(hf_model: Any, tokenizer: Any, model_name: str, spec: str, device: Any,
                where: str) -> TransformerBridge:
    """Wrap a loaded Hugging Face Gemma in a TransformerLens `TransformerBridge`.

    Args:
        hf_model: the transformers model, eager attention; placed by accelerate already when it
            has an `hf_device_map` (then `device` is not applied, and the bridge reads its
            `cfg.device` / `cfg.n_devices` from the map).
        tokenizer: the checkpoint's tokenizer (with none, the bridge would build its own).
        model_name: `model.cfg.model_name`.
        spec: what `load_model` accepts to rebuild this model (`model.scope_spec`).
        device: where to move a model that is not dispatched.
        where: the checkpoint, for messages.
    """
    from transformer_lens.model_bridge import TransformerBridge

    arch = check_config(hf_model.config, where)
    if hf_model.config.model_type == "gemma3":
        hf_model = _text_tower(hf_model)
    dispatched = bool(getattr(hf_model, "hf_device_map", None))
    if not dispatched:
        hf_model.to(device)
    hf_model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # `where` (a path), not the short name: TransformerLens rewrites names it knows as
        # aliases ("gemma-3-270m") with a deprecation warning; with hf_model given it loads nothing
        model = TransformerBridge.boot_transformers(
            where, hf_model=hf_model, tokenizer=tokenizer,
            device=None if dispatched else device,
            dtype=next(hf_model.parameters()).dtype,
            hf_config_overrides={"architectures": [arch]},
        )
        model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    model.cfg.model_name = model_name
    model.tokenizer.padding_side = "right"  # the bridge's Gemma default is left (see to_tokens)
    fix_kv_cache_kwarg(model)
    if not dispatched:
        # accelerate's hooks live on the HF modules' instance forwards, which the fast path's
        # direct attention call would skip: a dispatched model keeps the bridge path
        install_fast_path(model)
    if not model.cfg.tokenizer_prepends_bos:
        log.warning("tokenizer of %s does not add BOS; model.to_tokens prepends it instead", spec)
    model.scope_spec = spec  # what load_model accepts to rebuild this model (stores record it)
    return model


def fix_kv_cache_kwarg(model: TransformerBridge) -> None:
    """Make the bridge's attention read the KV cache under transformers' new keyword.

    transformers >= 5.2x passes the cache to attention modules as `cache=` (it deprecated
    `past_key_values`), while TransformerLens's attention bridge (3.9, and still 4.3:
    `AttentionBridge._update_kv_cache`) looks only at `past_key_values`/`layer_past`. Without
    this every cached decoding step attends to itself alone and generation goes wrong after the
    first token, silently. The fix renames the keyword for the cache lookup only, per attention
    module of this model.
    """
    for block in model.blocks:
        attn = block.attn
        original = attn._update_kv_cache

        def update(k, v, _original=original, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _original(k, v, **kwargs)

        attn.__dict__["_update_kv_cache"] = update
