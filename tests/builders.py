"""Tiny random Gemma 2 / Gemma 3 checkpoints for tests (shared by every module's tests).

Stable names other test modules rely on:
    tiny_tokenizer()                 a Gemma-style BPE tokenizer (byte fallback, adds BOS), offline
    tiny_gemma2_dir(path) -> Path    HF checkpoint folder: 4 layers, d_model 64, soft-capping
    tiny_gemma3_dir(path) -> Path    HF checkpoint folder: 4 layers, d_model 64, QK-norm, tied
    tiny_gemma3_multimodal_dir(path) model_type "gemma3" (text + tiny vision tower), 2 layers
    tiny_hooked_model(kind="gemma3") a fresh HookedTransformer (CPU, float32) from load_model
    TINY_TEXT                        a few sentences to tokenize

Both checkpoints have a sliding window (8 / 6 tokens) shorter than a typical test sequence, mixed
local/global layers, random non-trivial norm gains, and a vocabulary the tokenizer covers.
"""

from __future__ import annotations

import functools
import string
import tempfile
from pathlib import Path

import torch

TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders find features in the residual stream of Gemma.",
]
D_MODEL = 64
N_LAYERS = 4


def tiny_tokenizer():
    """A GemmaTokenizer over bytes + printable ASCII (~360 ids) that prepends <bos> (id 2)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in ["▁", *(c for c in string.printable if not c.isspace())]:
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("e", "r")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def _vocab_size(tokenizer) -> int:
    return (len(tokenizer) + 63) // 64 * 64  # a few unused rows, as real checkpoints have


def _randomize_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Gemma norms initialise to weight 0 (gain 1); give every norm a random gain instead."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.3 * torch.randn(param.shape, generator=gen))


def _save(model, tokenizer, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def tiny_gemma2_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma 2 checkpoint (config, safetensors, tokenizer) to `path`.

    Soft-caps are set low (attention 5, logits 3) so that they actually bite; the window is 8;
    query_pre_attn_scalar (24) differs from head_dim (16) to exercise the attention scale.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = tiny_tokenizer()
    cfg = Gemma2Config(
        vocab_size=_vocab_size(tok), hidden_size=D_MODEL, intermediate_size=128,
        num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0, max_position_embeddings=256, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        layer_types=["sliding_attention", "full_attention"] * (N_LAYERS // 2),
        pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager",
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(cfg)
    _randomize_norms(model, gen)
    return _save(model, tok, Path(path))


def tiny_gemma3_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma 3 (text) checkpoint to `path`.

    Layers local, local, global, local; window 6; RoPE bases 1e4 local / 1e6 global; QK-norm
    with random gains; tied embeddings; query_pre_attn_scalar 32 with head_dim 16.
    """
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer()
    cfg = Gemma3TextConfig(
        vocab_size=_vocab_size(tok), hidden_size=D_MODEL, intermediate_size=128,
        num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        sliding_window=6, query_pre_attn_scalar=32, max_position_embeddings=256,
        initializer_range=0.2, tie_word_embeddings=True,
        layer_types=["sliding_attention", "sliding_attention", "full_attention",
                     "sliding_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager",
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(cfg)
    _randomize_norms(model, gen)
    return _save(model, tok, Path(path))


def tiny_gemma3_multimodal_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Gemma 3 *multimodal* checkpoint (model_type "gemma3", as 4B-27B are).

    Text tower: 2 layers (local, global), window 6, linear RoPE scaling x8 on the global layer
    (as Gemma 3 4B+); a one-layer SigLIP vision tower that load_model ignores.
    """
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tok = tiny_tokenizer()
    text = Gemma3TextConfig(
        vocab_size=_vocab_size(tok), hidden_size=D_MODEL, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        sliding_window=6, query_pre_attn_scalar=32, initializer_range=0.2,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4, image_token_index=5, boi_token_index=6,
                       eoi_token_index=7)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Gemma3ForConditionalGeneration(cfg)
    _randomize_norms(model, gen)
    return _save(model, tok, Path(path))


@functools.cache
def _cached_dir(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"scope-tiny-{kind}-"))
    return {"gemma2": tiny_gemma2_dir, "gemma3": tiny_gemma3_dir}[kind](root / f"tiny-{kind}")


def tiny_hooked_model(kind: str = "gemma3"):
    """A fresh tiny HookedTransformer ("gemma2" or "gemma3") on CPU in float32.

    The checkpoint folder is written once per test process; each call returns a new model, so a
    test may modify it freely.
    """
    from scope.model.load import load_model

    return load_model(_cached_dir(kind), device="cpu", dtype=torch.float32)
