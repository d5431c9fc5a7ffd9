"""Integrated gradients and the removal effect, against independent computations on tiny models.

The reference is written here: the unmodified model with a hook that subtracts (a share of) a
feature's decoder contribution `a_k W_dec[k]` at the site its SAE writes.
"""

from __future__ import annotations

import pytest
import torch
from builders import tiny_hooked_model
from sae_builders import jumprelu_weights

from scope.attribution import attribute, intervene
from scope.saes.sae import JumpReLUSAE, SAEConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*hook_scale/hook_normalized")

PROMPT = "the cat sat on"
TARGET = " "


def _sae(model, read, write=None, seed=3, d_sae=48):
    d = model.cfg.d_model
    w = {k: torch.tensor(v) for k, v in jumprelu_weights(d, d_sae, seed=seed).items()}
    w["threshold"] = w["threshold"] * 0.3
    cfg = SAEConfig(d_in=d, d_sae=d_sae, hook_name=read, hook_name_out=write,
                    kind="transcoder" if write else "sae", sae_id=f"{read}-{seed}")
    return JumpReLUSAE(cfg, **w)


def _clean(model, sae, tokens):
    """Feature activations (BOS zeroed) of the SAE on the unmodified model."""
    got = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(sae.cfg.hook_name, lambda a, hook: got.update(
            x=a.detach().clone()))]):
        model(tokens)
    f = sae.encode(got["x"][0]).float()
    f[0] = 0
    return f


def _metric_removed(model, sae, tokens, t, removed: dict[tuple[int, int], float]):
    """Target logit with sum_(p,k) share * a_k W_dec[k] subtracted at the SAE's write site."""
    f = _clean(model, sae, tokens)
    delta = torch.zeros(tokens.shape[1], sae.W_dec.shape[1])
    for (p, k), share in removed.items():
        delta[p] += share * f[p, k] * sae.W_dec[k].float()
    site = sae.cfg.hook_name_out or sae.cfg.hook_name
    with torch.no_grad(), model.hooks(fwd_hooks=[(site, lambda a, hook: a - delta.to(a.dtype))]):
        return float(model(tokens)[0, -1, t])


def _one_feature_sae(model, tokens):
    """A residual SAE with exactly one active feature at one non-BOS position."""
    sae = _sae(model, "blocks.0.hook_resid_post")
    got = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda a, hook:
                                                  got.update(x=a.detach().clone()))]):
        model(tokens)
    pre = (got["x"][0] @ sae.W_enc + sae.b_enc)[1:]  # [pos-1, d_sae]
    k = int(pre.max(0).values.argmax())
    vals = torch.sort(pre[:, k], descending=True).values
    thr = torch.full_like(sae.threshold, 1e9)
    thr[k] = float((vals[0] + vals[1]) / 2)
    # a large activation, so the removal is far from linear
    sae.W_dec.data[k] *= 8.0
    return JumpReLUSAE(sae.cfg, W_enc=sae.W_enc.data, W_dec=sae.W_dec.data, b_enc=sae.b_enc.data,
                       b_dec=sae.b_dec.data, threshold=thr)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_ig_converges_to_the_exact_removal_of_a_lone_feature(kind):
    """One active feature: IG's path is that feature's own, so it integrates to its removal."""
    model = tiny_hooked_model(kind)
    tokens = model.to_tokens(PROMPT)
    sae = _one_feature_sae(model, tokens)
    t = model.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    f = _clean(model, sae, tokens)
    (p, k), = torch.nonzero(f).tolist()
    exact = _metric_removed(model, sae, tokens, t, {}) - _metric_removed(model, sae, tokens, t,
                                                                          {(p, k): 1.0})
    assert abs(exact) > 1e-3
    errs = {}
    for steps in (16, 128):
        r = attribute(model, sae, tokens, TARGET, method="ig", steps=steps, ablation_k=1)
        (node,) = r.features()
        assert (node.position, node.feature) == (p, k)
        errs[steps] = abs(node.attribution - exact)
        ab = r.ablation_check  # the check measures exactly the removal
        assert ab.measured[0] == pytest.approx(-exact, rel=1e-4, abs=1e-5)
    grad = attribute(model, sae, tokens, TARGET, method="grad", ablation_k=0).features()[0]
    # the midpoint rule converges (error ~ 1/steps^2 once past the path's curvature)
    assert errs[128] <= 2e-3 * abs(exact) + 1e-5
    assert errs[128] < errs[16] or errs[16] <= 1e-5
    assert errs[128] < abs(grad.attribution - exact)


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_ig_of_a_site_sums_to_removing_all_its_features(kind):
    model = tiny_hooked_model(kind)
    tokens = model.to_tokens(PROMPT)
    saes = [_sae(model, "blocks.0.hook_resid_post", seed=4),
            _sae(model, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", seed=5)]
    t = model.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    r = attribute(model, saes, tokens, TARGET, method="ig", steps=64, ablation_k=0)
    clean = _metric_removed(model, saes[0], tokens, t, {})
    for i, sae in enumerate(saes):
        f = _clean(model, sae, tokens)
        everything = {(p, k): 1.0 for p, k in torch.nonzero(f).tolist()}
        exact = clean - _metric_removed(model, sae, tokens, t, everything)
        total = sum(n.attribution for n in r.features() if n.sae_index == i)
        assert total == pytest.approx(exact, rel=1e-3, abs=1e-4)
        s, e = r.extra["ig_completeness"][sae.cfg.name]
        assert s == pytest.approx(total, rel=1e-5, abs=1e-6) and e == pytest.approx(exact, rel=1e-4,
                                                                                    abs=1e-5)


def test_grad_is_the_derivative_of_the_removal_and_intervene_matches():
    model = tiny_hooked_model("gemma3")
    tokens = model.to_tokens(PROMPT)
    saes = [_sae(model, "blocks.0.hook_resid_post", seed=6),
            _sae(model, "blocks.1.hook_resid_post", seed=7)]
    t = model.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    r = attribute(model, saes, tokens, TARGET, method="grad", ablation_k=3)
    assert r.method == "grad" and r.mode == "total"
    eps = 1e-3
    for n in r.features()[:4]:
        sae = saes[n.sae_index]
        up = _metric_removed(model, sae, tokens, t, {(n.position, n.feature): -eps})
        down = _metric_removed(model, sae, tokens, t, {(n.position, n.feature): eps})
        assert n.attribution == pytest.approx((up - down) / (2 * eps), rel=2e-2, abs=1e-4)
        iv = intervene(model, saes, tokens, n.sae_index, n.feature, n.position, 0.0, TARGET)
        removed = _metric_removed(model, sae, tokens, t, {(n.position, n.feature): 1.0})
        assert iv.metric_after - iv.metric_before == pytest.approx(
            removed - iv.metric_before, abs=1e-4)
        assert 0.0 <= iv.prob_after <= 1.0
    ab = r.ablation_check
    for n, meas in zip(ab.nodes, ab.measured, strict=True):
        removed = _metric_removed(model, saes[n.sae_index], tokens, t,
                                  {(n.position, n.feature): 1.0})
        assert meas == pytest.approx(removed - r.metric, abs=1e-4)
