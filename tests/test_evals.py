"""evaluate(): L0, FVU and delta LM loss against a direct numpy/torch recomputation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from builders import TINY_TEXT, tiny_hooked_model
from test_steer import SITE, random_sae

import scope
from scope.model.activations import capture, to_tokens
from scope.model.hooks import count_hooks
from scope.saes.sae import JumpReLUSAE, SAEConfig


@pytest.fixture(scope="module")
def model():
    return tiny_hooked_model("gemma3")


@pytest.fixture(scope="module")
def tokens(model):
    toks = to_tokens(model, TINY_TEXT * 2)  # padded with pad id where shorter
    return toks


@torch.no_grad()
def reference(model, sae, tokens):
    """Everything recomputed from scratch: numpy JumpReLU, full-sequence CE with hooks."""
    special = {model.tokenizer.bos_token_id, model.tokenizer.eos_token_id,
               model.tokenizer.pad_token_id}
    keep = np.isin(tokens.numpy(), sorted(special), invert=True)
    x = capture(model, tokens, [SITE])[SITE].double().numpy()
    W = {k: getattr(sae, k).detach().double().numpy()
         for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")}
    pre = x @ W["W_enc"] + W["b_enc"]
    f = pre * (pre > W["threshold"])
    x_hat = f @ W["W_dec"] + W["b_dec"]
    xs, errs = x[keep], (x - x_hat)[keep]
    l0 = float((f[keep] != 0).sum(-1).mean())
    fvu = float((errs**2).sum() / ((xs - xs.mean(0)) ** 2).sum())

    def ce(logits):
        logp = torch.log_softmax(logits.double(), -1)[:, :-1]
        nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0].numpy()
        return float(nll[keep[:, 1:]].mean())

    clean = ce(model(tokens))
    replacement = torch.where(torch.from_numpy(keep)[..., None],
                              torch.from_numpy(x_hat).float(), torch.from_numpy(x).float())
    spliced = ce(model.run_with_hooks(tokens, fwd_hooks=[(SITE, lambda a, hook: replacement)]))
    dead = float((f[keep] == 0).all(0).mean())
    return dict(l0=l0, fvu=fvu, clean_loss=clean, spliced_loss=spliced,
                delta_lm_loss=spliced - clean, dead_fraction=dead, n_tokens=int(keep.sum()))


def test_matches_reference_and_is_batch_invariant(model, tokens):
    assert (tokens == model.tokenizer.pad_token_id).any(), "test wants padding to mask"
    sae = random_sae(model.cfg.d_model, d_sae=48)
    ref = reference(model, sae, tokens)
    one = scope.evaluate(model, sae, tokens, batch_size=1, progress=False).as_dict()
    all_at_once = scope.evaluate(model, sae, tokens, batch_size=4, progress=False).as_dict()
    for key, value in ref.items():
        assert one[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        assert all_at_once[key] == pytest.approx(one[key], rel=1e-9, abs=1e-9), key
    assert one["n_sequences"] == tokens.shape[0]
    assert count_hooks(model) == 0


def test_perfect_reconstruction_has_zero_fvu_and_delta(model, tokens):
    """[I, -I] encoder with threshold 0 reconstructs x = relu(x) - relu(-x) exactly."""
    d = model.cfg.d_model
    eye = torch.eye(d)
    cfg = SAEConfig(d_in=d, d_sae=2 * d, hook_name=SITE)
    sae = JumpReLUSAE(cfg, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0),
                      torch.zeros(2 * d), torch.zeros(d), torch.zeros(2 * d))
    report = scope.evaluate(model, sae, tokens, progress=False)
    assert report.fvu < 1e-12
    assert abs(report.delta_lm_loss) < 1e-5
    assert report.l0 == pytest.approx(d, abs=0.5)  # one of the pair fires for every nonzero x


def test_corpus_input_equals_its_token_windows(model):
    from scope.pipeline.corpus import token_windows

    sae = random_sae(model.cfg.d_model, d_sae=48)
    texts = [" ".join(TINY_TEXT * 6)] * 3
    windows = torch.cat(list(token_windows(texts, model.tokenizer, ctx=16, batch_size=4)))
    direct = scope.evaluate(model, sae, windows, batch_size=4, progress=False)
    via_corpus = scope.evaluate(model, sae, texts, ctx=16, max_tokens=None, batch_size=4,
                                progress=False)
    assert via_corpus == direct


def test_reconstruction_stats_match_a_direct_computation_for_any_batching():
    from scope.pipeline.evals import reconstruction_stats

    sae = random_sae(16, 24, "blocks.0.hook_resid_post", seed=2)
    acts = torch.randn(300, 16, generator=torch.Generator().manual_seed(1)).double()
    f = sae.encode(acts.float()).double()
    x_hat = sae.decode(f.float()).double()
    want_fvu = float(((acts - x_hat) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum())
    want_l0 = float((f != 0).sum(-1).double().mean())
    want_dead = float((f == 0).all(0).double().mean())
    for batch in (7, 300, 4096):
        got = reconstruction_stats(sae, acts.float(), batch_size=batch)
        assert got["fvu"] == pytest.approx(want_fvu, rel=1e-6)
        assert got["l0"] == pytest.approx(want_l0, rel=1e-12)
        assert got["dead_fraction"] == want_dead and got["n_tokens"] == 300
