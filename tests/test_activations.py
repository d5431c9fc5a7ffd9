"""scope.model.activations: capture vs run_with_cache and vs Hugging Face module outputs, early stop,
no hook left behind, the flattened hook_z and virtual gain sites, splicing, bad names."""

from __future__ import annotations

import pytest
import torch
from builders import TINY_TEXT, tiny_gemma3_dir

from scope.errors import HookNameError
from scope.model.activations import (
    capture,
    hook_layer,
    norm_gain,
    site_width,
    splice_hooks,
    to_tokens,
    validate_hook_names,
)
from scope.model.hooks import attached, count_hooks
from scope.model.load import load_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The tiny Gemma 3 from load_model and the Hugging Face model it came from."""
    from transformers import AutoModelForCausalLM

    path = tiny_gemma3_dir(tmp_path_factory.mktemp("act") / "tiny-gemma3")
    model = load_model(path, device="cpu", dtype=torch.float32)
    hf = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return model, hf


@pytest.fixture(scope="module")
def tokens(pair):
    return to_tokens(pair[0], TINY_TEXT)  # [2, pos], BOS first, right-padded


SITES = [
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.1.hook_resid_post",
    "blocks.1.hook_mlp_out",
    "blocks.2.hook_attn_out",
    "blocks.2.ln2.hook_normalized",
    "blocks.0.mlp.hook_post",
]


def test_capture_matches_run_with_cache(pair, tokens):
    model, _ = pair
    _, cache = model.run_with_cache(tokens)
    acts = capture(model, tokens, SITES)
    for name in SITES:
        assert acts[name].shape == cache[name].shape
        assert acts[name].shape[-1] == site_width(model, name)
        assert torch.equal(acts[name], cache[name]), name
    batched = capture(model, tokens, SITES, batch_size=1)
    for name in SITES:
        torch.testing.assert_close(batched[name], acts[name], rtol=0, atol=1e-5)
    assert count_hooks(model) == 0


def test_capture_stops_after_deepest_layer(pair, tokens):
    model, _ = pair
    ran = []
    handles = [
        block.attn.register_forward_pre_hook(lambda *a, i=i: ran.append(i))
        for i, block in enumerate(model.blocks)
    ]
    handles.append(model.ln_final.register_forward_pre_hook(lambda *a: ran.append("ln_final")))
    try:
        capture(model, tokens, ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"])
        assert ran == [0, 1]
        ran.clear()
        capture(model, tokens, ["hook_embed"])
        assert ran == []
        ran.clear()
        capture(model, tokens, ["blocks.3.hook_resid_post"])  # last block: no final norm
        assert ran == [0, 1, 2, 3]
        ran.clear()
        capture(model, tokens, ["ln_final.hook_normalized"])  # needs the whole stack
        assert ran == [0, 1, 2, 3, "ln_final"]
    finally:
        for h in handles:
            h.remove()
    assert count_hooks(model) == 0


def test_no_hook_left_on_error(pair, tokens):
    model, _ = pair
    bad = tokens.clone()
    bad[0, 1] = model.cfg.d_vocab + 5  # out of range: the embedding lookup fails mid-forward
    with pytest.raises(IndexError):
        capture(model, bad, ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z"])
    assert count_hooks(model) == 0
    with pytest.raises(HookNameError):
        capture(model, tokens, ["blocks.0.hook_resid_post", "blocks.0.hook_resdi_post"])
    assert count_hooks(model) == 0
    with pytest.raises(ValueError, match="tokens"):
        capture(model, tokens.float(), ["blocks.0.hook_resid_post"])

    def boom(a):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with attached(model, splice_hooks(model, "blocks.0.hook_resid_post", boom)):
            model(tokens)
    assert count_hooks(model) == 0
    site_width(model, "blocks.0.attn.hook_pattern")  # measured with a tiny forward pass
    assert count_hooks(model) == 0


def _hf_module_io(hf, tokens, layer):
    """Inputs/outputs of the HF modules the Gemma Scope 2 sites name, for one layer."""
    got = {}
    mods = hf.model.layers[layer]
    handles = [
        mods.self_attn.o_proj.register_forward_pre_hook(
            lambda m, inp: got.__setitem__("o_proj_in", inp[0])
        ),
        mods.pre_feedforward_layernorm.register_forward_hook(
            lambda m, i, out: got.__setitem__("pre_ff_out", out)
        ),
        mods.post_feedforward_layernorm.register_forward_hook(
            lambda m, i, out: got.__setitem__("post_ff_out", out)
        ),
    ]
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("layer", [0, 2])
def test_sites_match_hf_modules(pair, tokens, layer):
    model, hf = pair
    names = [
        f"blocks.{layer}.attn.hook_z",
        f"blocks.{layer}.ln2.hook_normalized_with_gain",
        f"blocks.{layer}.ln2.hook_normalized",
        f"blocks.{layer}.hook_mlp_out",
    ]
    acts = capture(model, tokens, names)
    ref = _hf_module_io(hf, tokens, layer)
    z = acts[names[0]]
    assert z.shape == (*tokens.shape, model.cfg.n_heads * model.cfg.d_head)
    assert site_width(model, names[0]) == z.shape[-1] == 64
    assert torch.equal(z, ref["o_proj_in"])  # head-major order
    gain = acts[names[1]]
    assert torch.equal(gain, acts[names[2]] * norm_gain(model, f"blocks.{layer}.ln2"))
    assert torch.equal(gain, ref["pre_ff_out"])
    assert torch.equal(acts[names[3]], ref["post_ff_out"])


def test_typo_suggestion(pair):
    model, _ = pair
    with pytest.raises(HookNameError) as err:
        validate_hook_names(model, ["blocks.1.hook_resid_psot"])
    assert "blocks.1.hook_resid_post" in str(err.value)
    with pytest.raises(HookNameError, match="layers 0..3"):
        validate_hook_names(model, "blocks.20.hook_resid_post")
    with pytest.raises(HookNameError, match="ln2.hook_normalized_with_gain"):
        validate_hook_names(model, "blocks.1.ln2.hook_normalised_with_gain")
    assert validate_hook_names(model, "blocks.3.ln2.hook_normalized_with_gain") == [
        "blocks.3.ln2.hook_normalized_with_gain"
    ]


@pytest.mark.parametrize(
    "site",
    ["blocks.1.hook_resid_post", "blocks.2.attn.hook_z", "blocks.1.ln2.hook_normalized_with_gain"],
)
def test_splice_identity_keeps_logits(pair, tokens, site):
    model, _ = pair
    clean = model(tokens)
    seen = []

    def identity(a):
        seen.append(a.shape)
        return a

    with attached(model, splice_hooks(model, site, identity)):
        spliced = model(tokens)
    assert torch.equal(spliced, clean)
    assert seen == [(*tokens.shape, site_width(model, site))]
    with model.hooks(fwd_hooks=splice_hooks(model, site, lambda a: a.clone())):
        torch.testing.assert_close(model(tokens), clean, rtol=0, atol=1e-5)
    assert count_hooks(model) == 0


def test_splice_replaces_what_downstream_reads(pair, tokens):
    model, _ = pair
    d_head = model.cfg.d_head

    def drop_head_1(a):  # a: [batch, pos, n_heads*d_head]
        a = a.clone()
        a[..., d_head : 2 * d_head] = 0
        return a

    def direct(z, hook):  # the same edit in TransformerLens's own [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, 1] = 0
        return z

    with attached(model, splice_hooks(model, "blocks.2.attn.hook_z", drop_head_1)):
        ours = model(tokens)
    with attached(model, [("blocks.2.attn.hook_z", direct)]):
        ref = model(tokens)
    assert torch.equal(ours, ref) and not torch.allclose(ours, model(tokens))
    # the gain site: the MLP then reads fn(a), which capture sees too
    site = "blocks.1.ln2.hook_normalized_with_gain"
    before = capture(model, tokens, [site])[site]
    with attached(model, splice_hooks(model, site, lambda a: 2 * a)):
        after = capture(model, tokens, [site])[site]
    assert torch.equal(after, 2 * before)
    assert count_hooks(model) == 0


def test_hook_layer_and_widths(pair):
    model, _ = pair
    assert hook_layer("blocks.12.hook_resid_post") == 12
    assert hook_layer("blocks.3.ln2.hook_normalized_with_gain") == 3
    assert hook_layer("hook_embed") is None and hook_layer("ln_final.hook_normalized") is None
    assert site_width(model, "blocks.0.hook_resid_post") == model.cfg.d_model
    assert site_width(model, "blocks.0.mlp.hook_post") == model.cfg.d_mlp
    assert site_width(model, "blocks.0.attn.hook_q") == model.cfg.d_head  # head-shaped site
    assert site_width(model, "blocks.0.ln2.hook_normalized_with_gain") == model.cfg.d_model


def test_to_tokens_prepends_bos(pair):
    model, _ = pair
    toks = to_tokens(model, ["a b", "a much longer text"], max_len=5)
    assert toks.shape == (2, 5) and (toks[:, 0] == model.tokenizer.bos_token_id).all()
