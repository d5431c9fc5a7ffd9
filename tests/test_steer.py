"""Steering and generation on a tiny random Gemma 3, checked against direct computations."""

from __future__ import annotations

import pytest
import torch
from builders import TINY_TEXT, tiny_hooked_model

import scope
from scope.errors import SteeringError
from scope.model.activations import capture
from scope.model.hooks import attached, count_hooks
from scope.saes.sae import JumpReLUSAE, SAEConfig

SITE = "blocks.1.hook_resid_post"


def random_sae(d_in: int, d_sae: int = 32, site: str = SITE, seed: int = 0) -> JumpReLUSAE:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=site, model_name="tiny")
    return JumpReLUSAE(
        cfg, W_dec.T.clone(), W_dec, torch.zeros(d_sae), torch.zeros(d_in),
        torch.full((d_sae,), 0.1),
    )


def orthonormal_sae(d_in: int, d_sae: int = 16, site: str = SITE) -> JumpReLUSAE:
    """W_enc = W_dec^T with orthonormal rows, zero biases: encoding a decoded change is exact."""
    q, _ = torch.linalg.qr(torch.randn(d_in, d_sae, generator=torch.Generator().manual_seed(1)))
    W_dec = q.T.contiguous()  # [d_sae, d_in], orthonormal rows
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=site, model_name="tiny")
    return JumpReLUSAE(cfg, W_dec.T.clone(), W_dec, torch.zeros(d_sae), torch.zeros(d_in),
                       torch.zeros(d_sae))


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model("gemma3")


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens(TINY_TEXT[0])


def resid(model, tokens):
    return capture(model, tokens, [SITE])[SITE]


def test_add_equals_direct_sum_from_position(model, tokens):
    sae = random_sae(model.cfg.d_model)
    clean = resid(model, tokens)
    with scope.steering(model, sae, {3: 2.5, 7: -1.0}, from_pos=4):
        steered = resid(model, tokens)
    delta = 2.5 * sae.W_dec[3] + -1.0 * sae.W_dec[7]
    torch.testing.assert_close(steered[:, 4:], clean[:, 4:] + delta, rtol=0, atol=1e-6)
    assert torch.equal(steered[:, :4], clean[:, :4])
    assert count_hooks(model) == 0


def test_zero_strength_and_self_clamp_are_bit_identical(model, tokens):
    sae = random_sae(model.cfg.d_model)
    clean_logits = model(tokens)
    with scope.steering(model, sae, {5: 0.0}):
        assert torch.equal(model(tokens), clean_logits)
    clean = resid(model, tokens)
    last = clean.shape[1] - 1
    current = sae.encode(clean[:, last:])  # what the hook sees when steering from `last` on
    firing = int(current[0, 0].argmax())
    assert current[0, 0, firing] > 0
    value = float(current[0, 0, firing])
    with scope.steering(model, sae, {firing: value}, mode="clamp", from_pos=last):
        assert torch.equal(model(tokens), clean_logits)
    with scope.steering(model, sae, {firing: 0.0}, mode="clamp", from_pos=last):
        assert not torch.equal(model(tokens), clean_logits)


def test_clamp_matches_decode_plus_error_and_ablation_reads_zero(model, tokens):
    sae = orthonormal_sae(model.cfg.d_model)
    clean = resid(model, tokens)
    f = sae.encode(clean)
    target = int(f[0].abs().sum(0).argmax())
    with scope.steering(model, sae, {target: 0.0}, mode="clamp"):
        ablated = resid(model, tokens)
    # the definition: decode the clamped features, add back the SAE's error term
    clamped = f.clone()
    clamped[..., target] = 0.0
    expected = sae.decode(clamped) + (clean - sae.decode(f))
    torch.testing.assert_close(ablated, expected, rtol=0, atol=1e-5)
    assert sae.encode(ablated)[..., target].abs().max() < 1e-5
    with scope.steering(model, sae, {target: 3.0}, mode="clamp"):
        raised = sae.encode(resid(model, tokens))[..., target]
    # where the feature fired, encoder and decoder are exact inverses here, so it reads 3 again
    # (where it did not fire, its negative pre-activation stays in the error term)
    active = f[..., target] > 0
    assert active.any()
    torch.testing.assert_close(raised[active], torch.full_like(raised[active], 3.0))


def test_hooks_removed_on_error_and_nesting_keeps_outer(model, tokens):
    a, b = random_sae(model.cfg.d_model, seed=1), random_sae(model.cfg.d_model, seed=2)
    with pytest.raises(RuntimeError, match="boom"):
        with scope.steering(model, a, {1: 4.0}):
            assert count_hooks(model) > 0
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    clean = resid(model, tokens)
    with scope.steering(model, a, {1: 4.0}):
        with scope.steering(model, b, {2: 3.0}):
            pass
        outer_only = resid(model, tokens)
    torch.testing.assert_close(outer_only, clean + 4.0 * a.W_dec[1], rtol=0, atol=1e-6)
    assert count_hooks(model) == 0


def test_several_saes_at_once(model, tokens):
    first = random_sae(model.cfg.d_model, site="blocks.0.hook_resid_post", seed=3)
    second = random_sae(model.cfg.d_model, seed=4)
    clean = capture(model, tokens, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"]
    with scope.steering(model, [(first, {0: 1.5}), (second, {1: 2.0}, "add")]):
        got = capture(model, tokens, ["blocks.0.hook_resid_post", SITE])
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], clean + 1.5 * first.W_dec[0],
                               rtol=0, atol=1e-6)
    assert not torch.equal(got[SITE], resid(model, tokens))


def test_generate_is_seeded_uses_cache_and_matches_full_forward(model):
    prompt = "The quick brown"
    a = scope.generate(model, prompt, max_new_tokens=12, temperature=1.0, seed=7)
    b = scope.generate(model, prompt, max_new_tokens=12, temperature=1.0, seed=7)
    assert a == b
    # greedy with the KV cache equals greedy re-running the whole sequence each step
    greedy = scope.generate(model, prompt, max_new_tokens=8, temperature=0, stop_at_eos=False)
    toks = model.to_tokens(prompt)
    for _ in range(8):
        nxt = model(toks)[0, -1].argmax()
        toks = torch.cat([toks, nxt.view(1, 1)], dim=1)
    n_prompt = model.to_tokens(prompt).shape[1]
    assert greedy == model.tokenizer.decode(toks[0, n_prompt:].tolist())
    assert count_hooks(model) == 0


def test_generation_steering_zero_identical_strong_changes(model):
    sae = random_sae(model.cfg.d_model)
    kw = dict(max_new_tokens=10, temperature=0.8, seed=3)
    plain = scope.generate(model, "Sparse autoencoders", **kw)
    with scope.steering(model, sae, {2: 0.0}):
        assert scope.generate(model, "Sparse autoencoders", **kw) == plain
    with scope.steering(model, sae, {2: 60.0}):
        assert scope.generate(model, "Sparse autoencoders", **kw) != plain


def test_bad_requests_are_clear(model):
    sae = random_sae(model.cfg.d_model)
    with pytest.raises(SteeringError, match="indices run 0..31"):
        with scope.steering(model, sae, {32: 1.0}):
            pass
    with pytest.raises(SteeringError, match="finite"):
        with scope.steering(model, sae, {1: float("nan")}):
            pass
    with pytest.raises(SteeringError, match="mode"):
        with scope.steering(model, sae, {1: 1.0}, mode="multiply"):
            pass
    wide = random_sae(model.cfg.d_model * 2)
    with pytest.raises(SteeringError, match="another model"):
        with scope.steering(model, wide, {1: 1.0}):
            pass
    elsewhere = random_sae(model.cfg.d_model, site="blocks.40.hook_resid_post")
    with pytest.raises(SteeringError, match="not attached"):
        with scope.steering(model, elsewhere, {1: 1.0}):
            pass
    assert count_hooks(model) == 0


def test_generation_attention_paths_agree(model):
    """generate runs attention through transformers' module (hf_fast_path); a hook on an
    attention internal such as hook_pattern brings back the re-implementation, same text."""
    kw = dict(max_new_tokens=10, temperature=0, stop_at_eos=False)
    fast = scope.generate(model, "Sparse autoencoders", **kw)
    seen = []
    hooks = [(f"blocks.{L}.attn.hook_pattern", lambda p, hook: seen.append(p.shape))
             for L in range(model.cfg.n_layers)]
    with attached(model, hooks):
        eager = scope.generate(model, "Sparse autoencoders", **kw)
    assert len(seen) == 10 * model.cfg.n_layers  # fired on every step and layer
    assert eager == fast
    assert count_hooks(model) == 0


def test_attention_site_steering_on_both_attention_paths(model, tokens):
    """An edit at hook_z reaches the output the same way through transformers' attention module
    (hf_fast_path, used by generate) as through TransformerLens's re-implementation."""
    from scope.model.load import hf_fast_path

    site = "blocks.1.attn.hook_z"
    sae = random_sae(model.cfg.n_heads * model.cfg.d_head, site=site)
    clean = model(tokens)
    with scope.steering(model, sae, {2: 5.0}):
        eager = model(tokens)
        with hf_fast_path(model):
            fast = model(tokens)
    assert not torch.allclose(eager, clean, atol=1e-3)
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)
    assert count_hooks(model) == 0


def test_relative_strengths_scale_by_the_store_max_and_refuse_another_sae(model, tmp_path):
    sae = random_sae(model.cfg.d_model)
    store = scope.extract(model, [sae], TINY_TEXT, tmp_path / "store", tokens=64, ctx=16,
                          batch_size=2, top_k=2, progress=False)
    peak = store.max_activations(sae.cfg.name)
    tokens = model.to_tokens(TINY_TEXT[0])
    i = int(peak.argmax())
    assert peak[i] > 0
    with scope.steering(model, sae, {i: 0.5}, relative_to=store):
        relative = resid(model, tokens)
    with scope.steering(model, sae, {i: 0.5 * float(peak[i])}):
        absolute = resid(model, tokens)
    assert torch.equal(relative, absolute)
    wider = random_sae(model.cfg.d_model, d_sae=64)  # same name (the hook), another SAE
    with pytest.raises(SteeringError, match="is not the SAE you loaded .d_sae"):
        with scope.steering(model, wider, {1: 1.0}, relative_to=store):
            pass
    assert count_hooks(model) == 0


# -- defaults and drift: the rule behind the default strength --------------------------------


def test_greedy_rows_equal_generate_under_steering(model):
    """The sweep's batched generation is the twin of `generate` under one-feature steering."""
    from scope.steer.drift import greedy_rows

    sae = random_sae(model.cfg.d_model)
    prompt = "Sparse autoencoders"
    pairs = [(2, 0.0), (2, 30.0), (5, -20.0), (9, 60.0)]
    deltas = torch.stack([s * sae.W_dec[f].detach() for f, s in pairs])
    rows = greedy_rows(model, prompt, SITE, deltas, 8)
    for (f, s), text in zip(pairs, rows, strict=True):
        with scope.steering(model, sae, {f: s}):
            assert text == scope.generate(model, prompt, max_new_tokens=8, temperature=0.0)
    assert count_hooks(model) == 0


def test_continuation_losses_are_the_mean_nll_of_each_continuation(model):
    from scope.steer.drift import continuation_losses

    prompt, texts = "Sparse autoencoders", [" find features", " are", ""]
    losses = continuation_losses(model, prompt, texts)
    n = model.to_tokens(prompt).shape[1]
    for text, loss in zip(texts, losses, strict=True):
        toks = model.to_tokens(prompt + text)
        if toks.shape[1] == n:
            assert loss == 0.0
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(toks, return_type="logits")[0].float(), -1)
        nll = [-float(logp[p - 1, toks[0, p]]) for p in range(n, toks.shape[1])]
        assert loss == pytest.approx(sum(nll) / len(nll), abs=1e-4)


def test_sweep_rows_shares_and_the_chosen_multiple(model):
    from scope.steer.drift import continuation_losses, sweep

    sae = random_sae(model.cfg.d_model)
    peak = torch.linspace(1.0, 4.0, sae.cfg.d_sae)
    res = sweep(model, sae, peak, [1, 4], [0.0, 5.0, 40.0], "Sparse autoencoders",
                max_new_tokens=6)
    assert [(r.feature, r.multiple) for r in res.rows] == [(1, 0.0), (1, 5.0), (1, 40.0),
                                                             (4, 0.0), (4, 5.0), (4, 40.0)]
    for r in res.rows:
        with scope.steering(model, sae, {r.feature: r.multiple * float(peak[r.feature])}):
            assert r.text == scope.generate(model, "Sparse autoencoders", max_new_tokens=6,
                                            temperature=0.0)
    assert [r.text for r in res.rows if r.multiple == 0.0] == [res.default] * 2
    drift = continuation_losses(model, "Sparse autoencoders", [r.text for r in res.rows])
    assert [r.drift for r in res.rows] == pytest.approx(drift, abs=1e-4)
    within = res.within(0.5)
    for m in (0.0, 5.0, 40.0):
        ok = [r.drift <= res.base + 0.5 for r in res.rows if r.multiple == m]
        assert within[m] == sum(ok) / len(ok)
    assert within[0.0] == 1.0 and res.changed()[0.0] == 0.0
    from scope.steer.drift import distinct_share

    fluent = res.fluent(0.5, 0.5)
    for m in (0.0, 5.0, 40.0):
        ok = [r.drift <= res.base + 0.5 and distinct_share(r.text) >= 0.5
              for r in res.rows if r.multiple == m]
        assert fluent[m] == sum(ok) / len(ok)
    assert distinct_share("I was not. I was not. I was not.") == pytest.approx(3 / 9)


def test_choose_multiple_takes_the_largest_before_the_first_failure():
    from scope.steer.defaults import choose_multiple

    assert choose_multiple({0.5: 1.0, 1.0: 0.8, 2.0: 0.5, 4.0: 0.9}, most=0.75) == 1.0
    assert choose_multiple({0.5: 0.7, 1.0: 1.0}, most=0.75) is None
    assert choose_multiple({0.25: 1.0, 0.5: 0.75}, most=0.75) == 0.25  # "more than", not equal
    assert choose_multiple({0.5: 0.6, 1.0: 0.56, 1.5: 0.5}) == 1.0  # default: a majority


def test_scale_by_max_and_tiny_strengths():
    from scope.steer.defaults import scale_by_max, tiny_strengths

    peak = [0.0, 2.0, 500.0, 80.0]
    assert scale_by_max({1: 1.5, 2: -0.5}, peak) == {1: 3.0, 2: -250.0}
    # 8 against a max of 500 is tiny; 8 against 80 is exactly 10%, not below it; 0 is deliberate
    assert tiny_strengths({2: 8.0, 3: 8.0, 1: 0.0, 0: 5.0}, peak) == [(2, 8.0, 500.0)]
    assert tiny_strengths({3: 7.9}, peak) == [(3, 7.9, 80.0)]


def test_prompt_scale_is_the_peak_over_the_prompt_or_the_threshold(model):
    from scope.steer.defaults import prompt_scale

    sae = random_sae(model.cfg.d_model)
    prompt = TINY_TEXT[0]
    f = sae.encode(resid(model, model.to_tokens(prompt)))[0, 1:]
    silent = int((f.amax(0) == 0).nonzero()[0]) if (f.amax(0) == 0).any() else None
    live = int(f.amax(0).argmax())
    scale = prompt_scale(model, sae, prompt, [live] + ([silent] if silent is not None else []))
    assert scale[live] == pytest.approx(float(f[:, live].max()))
    if silent is not None:
        assert scale[silent] == pytest.approx(float(sae.threshold[silent]))
    assert count_hooks(model) == 0


def test_tiny_warnings_name_the_scale_and_a_strength_that_matters():
    from scope.steer.defaults import STRENGTH_X_MAX, tiny_warnings

    (line,) = tiny_warnings({749: 8.0, 3: 900.0}, {749: 2031.0, 3: 1000.0}, "its peak on the prompt")
    assert line.startswith("feature 749: strength 8 is 0.4% of its scale (2,031, its peak on "
                           "the prompt)")
    assert f"749:{STRENGTH_X_MAX * 2031:.4g}" in line


def test_scope_steer_warns_when_a_raw_strength_is_tiny(tmp_path, caplog, capsys):
    """`scope steer` without a store: a strength far below the feature's scale is named, with
    one that would matter; a strong one is not."""
    import logging

    from builders import _cached_dir

    from scope.cli.main import main
    from scope.steer.defaults import prompt_scale

    model = tiny_hooked_model("gemma3")
    sae = random_sae(model.cfg.d_model)
    sae.save(tmp_path / "sae")
    prompt = TINY_TEXT[0]
    f = int(sae.encode(resid(model, model.to_tokens(prompt)))[0, 1:].amax(0).argmax())
    peak = prompt_scale(model, sae, prompt, [f])[f]
    argv = ["steer", "--model", str(_cached_dir("gemma3")), "--sae", str(tmp_path / "sae"),
            "--prompt", prompt, "--max-new-tokens", "2"]
    with caplog.at_level(logging.WARNING, logger="scope"):
        assert main([*argv, "--feature", f"{f}:{0.01 * peak}"]) == 0
    (line,) = [r.getMessage() for r in caplog.records if "barely change" in r.getMessage()]
    assert line.startswith(f"feature {f}: strength") and f"{peak:,.4g}" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="scope"):
        assert main([*argv, "--feature", f"{f}:{peak}"]) == 0
    assert not [r for r in caplog.records if "barely change" in r.getMessage()]
