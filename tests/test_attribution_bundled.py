"""Attribution on the bundled Gemma 3 270M (slow): does the estimate survive a removal check?

For the bundled layer-9 SAE and the two documented prompts, the top-8 features by the default
method are removed one at a time (their decoder contribution subtracted in the unmodified model,
measured here with a hook independent of scope's) and the measured change of the target logit is
compared with the estimate. docs/attribution.md gives the figures these thresholds come from.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*hook_scale/hook_normalized")]

CASES = [("The capital of France is Paris. The capital of Germany is", " Berlin"),
         ("The capital of France is", " Paris")]


@pytest.fixture(scope="module")
def bundled():
    import scope

    model = scope.load_model("bundled")
    return model, scope.load_sae("bundled", model=model)


def _removed(model, sae, tokens, t, p, k, a):
    """The target logit with a_k W_dec[k] subtracted at position p from the site `sae` writes
    (its hook for a residual SAE, the MLP output for a transcoder), by a plain hook."""
    delta = torch.zeros(tokens.shape[1], sae.W_dec.shape[1])
    delta[p] = a * sae.W_dec[k].float()
    site = sae.cfg.hook_name_out or sae.cfg.hook_name
    with torch.no_grad(), model.hooks(fwd_hooks=[(site, lambda x, hook: x - delta.to(x.dtype))]):
        return float(model(tokens)[0, -1, t])


def _pearson(a, b):
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (x.norm() * y.norm()))


def _check_top8(model, saes, prompt, target, method):
    """The default method's top 8 against their measured removal: >= 6/8 signs, r >= 0.8."""
    import scope

    r = scope.attribute(model, saes, prompt, target, ablation_k=8)
    assert r.method == method and r.splice_max_rel_error <= 1e-5
    tokens = model.to_tokens(prompt)
    t = model.tokenizer.encode(target, add_special_tokens=False)[0]
    with torch.no_grad():
        clean = float(model(tokens)[0, -1, t])
    by_name = {s.cfg.name: s for s in saes}
    top = r.features()[:8]
    predicted = [-n.attribution for n in top]
    measured = [_removed(model, by_name[n.sae], tokens, t, n.position, n.feature, n.activation)
                - clean for n in top]
    assert r.ablation_check.measured == pytest.approx(measured, abs=1e-3)
    signs = sum((p > 0) == (m > 0) for p, m in zip(predicted, measured, strict=True))
    assert signs >= 6
    assert _pearson(predicted, measured) >= 0.8
    assert r.ablation_check.agrees
    return r


@pytest.mark.parametrize(("prompt", "target"), CASES)
def test_default_method_agrees_with_measured_removal(bundled, prompt, target):
    model, sae = bundled
    r = _check_top8(model, [sae], prompt, target, "ig")
    # the site's IG sums to the exact effect of removing all its features
    s, exact = r.extra["ig_completeness"][sae.cfg.name]
    assert s == pytest.approx(exact, rel=0.05, abs=0.05)


def test_bundled_multi_layer_graph_of_the_target(bundled, tmp_path):
    """Every shipped demo SAE loads by name; the graph targets the chosen token and exports."""
    import scope
    from scope.attribution.inputs import expand_sae_specs

    model, _ = bundled
    specs = expand_sae_specs(["bundled/all"])
    assert len(specs) >= 4 and specs[0] != "bundled"
    saes = [scope.load_sae(s, model=model) for s in specs]
    prompt = "When Mary and John went to the store, John gave a cold drink to"
    g = scope.attribution_graph(model, saes, prompt, target=" Mary", contrast=" John",
                                max_feature_nodes=96)
    data = g.to_json(str(tmp_path / "g.json"))
    assert g.stats["splice_max_rel_error"] <= 1e-5
    assert g.logit_strings == [" Mary"] and g.contrast_string == " John"
    assert {n["layer"] for n in data["nodes"] if n["feature_type"] == "cross layer transcoder"} \
        <= {str(s.layer) for s in g.sites}
    assert data["links"] and data["metadata"]["prompt_tokens"][-1] == " to"
    assert data["metadata"]["scan"] == "gemma-3-270m"
    assert (tmp_path / "graph-metadata.json").is_file()


@pytest.mark.parametrize(("prompt", "target"), CASES)
def test_transcoders_default_method_agrees_with_measured_removal(bundled, prompt, target):
    """The bundled transcoders (every layer) under the default method (grad for transcoders:
    8/8 signs, r 0.95 and 0.81 measured, docs/attribution.md)."""
    from scope.saes.loading import load_saes

    model, _ = bundled
    tcs = load_saes("bundled/transcoders", model=model)
    assert len(tcs) == model.cfg.n_layers
    _check_top8(model, tcs, prompt, target, "grad")
