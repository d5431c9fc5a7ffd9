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


@torch.no_grad()
def losses_reference(model, sae, tokens):
    """Clean / spliced / zero-ablated CE and KL, recomputed in float64 under both conventions."""
    special = sorted({model.tokenizer.bos_token_id, model.tokenizer.eos_token_id,
                      model.tokenizer.pad_token_id})
    keep = torch.from_numpy(np.isin(tokens.numpy(), special, invert=True))
    x = capture(model, tokens, [SITE])[SITE]
    x_hat = sae(x)
    spliced_hook = [(SITE, lambda a, hook: torch.where(keep[..., None], x_hat, a))]
    ablated_hook = [(SITE, lambda a, hook: torch.zeros_like(a))]
    logp = {name: torch.log_softmax(logits.double(), -1) for name, logits in (
        ("clean", model(tokens)), ("spliced", model.run_with_hooks(tokens, fwd_hooks=spliced_hook)),
        ("ablated", model.run_with_hooks(tokens, fwd_hooks=ablated_hook)))}
    nll = {k: -v[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0] for k, v in logp.items()}
    kl = {k: (logp["clean"].exp() * (logp["clean"] - logp[k])).sum(-1) for k in ("spliced", "ablated")}
    out = {}
    for conv, ce_mask, kl_mask in (("scope", keep[:, 1:], keep[:, 1:]),
                                   ("saebench", keep[:, :-1], keep)):
        kl_of = {k: v[:, :-1][kl_mask] if conv == "scope" else v[kl_mask] for k, v in kl.items()}
        c, s, a = (float(nll[k][ce_mask].mean()) for k in ("clean", "spliced", "ablated"))
        ks, ka = float(kl_of["spliced"].mean()), float(kl_of["ablated"].mean())
        out[conv] = dict(clean_loss=c, spliced_loss=s, ablated_loss=a, kl_div=ks,
                         kl_div_ablated=ka, ce_loss_score=(a - s) / (a - c),
                         kl_div_score=(ka - ks) / ka)
    return out


def test_ce_score_kl_and_both_position_conventions(model, tokens):
    sae = random_sae(model.cfg.d_model, d_sae=48)
    ref = losses_reference(model, sae, tokens)
    for batch_size in (1, 4):
        rep = scope.evaluate(model, sae, tokens, batch_size=batch_size, progress=False)
        for key, value in ref["scope"].items():
            assert getattr(rep, key) == pytest.approx(value, rel=1e-5, abs=1e-7), key
        for key, value in ref["saebench"].items():
            assert rep.saebench[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert 0 < rep.kl_div < rep.kl_div_ablated and rep.ce_loss_score < 1
    assert "saebench" not in rep.as_dict() and count_hooks(model) == 0


def test_delta_lm_relation_between_conventions(model):
    """Unpadded windows of length ctx: the BOS -> first-token prediction that scope counts is
    unchanged by the splice (BOS keeps its activation), so scope's delta LM loss is SAELens's
    times (ctx - 2) / (ctx - 1) exactly (docs/saes.md, "Positions")."""
    from scope.pipeline.corpus import token_windows

    ctx = 12
    windows = torch.cat(list(token_windows([" ".join(TINY_TEXT * 8)], model.tokenizer, ctx=ctx,
                                           batch_size=4)))
    sae = random_sae(model.cfg.d_model, d_sae=48)
    rep = scope.evaluate(model, sae, windows, progress=False, ablation=False)
    b = rep.saebench
    theirs = b["spliced_loss"] - b["clean_loss"]
    assert rep.delta_lm_loss == pytest.approx(theirs * (ctx - 2) / (ctx - 1), rel=1e-6)
    assert np.isnan(rep.ce_loss_score) and np.isnan(b["ce_loss_score"])  # no ablation run


def test_saebench_json_layout_and_values(model, tokens, tmp_path):
    """The core eval layout SAEBench 0.6 writes (`sae_bench.evals.core.eval_output`), field by
    field, with scope's report values; a folder as the path is refused before anything runs."""
    import json

    from scope.errors import SAEBenchPathError
    from scope.pipeline.saebench import check_path, write_saebench_json

    sae = random_sae(model.cfg.d_model, d_sae=48)
    rep = scope.evaluate(model, sae, tokens, batch_size=2, progress=False)
    path = write_saebench_json(rep, sae, tmp_path / "out" / "core.json", dataset="tiny",
                               llm_dtype="float32")
    got = json.loads(path.read_text())
    assert set(got) == {"eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis",
                        "eval_result_metrics", "eval_result_details", "sae_bench_commit_hash",
                        "sae_lens_id", "sae_lens_release_id", "sae_lens_version",
                        "sae_cfg_dict", "eval_result_unstructured"}
    assert got["eval_type_id"] == "core" and got["datetime_epoch_millis"] > 0
    m = got["eval_result_metrics"]
    assert {k: set(v) for k, v in m.items()} == {
        "model_behavior_preservation": {"kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"},
        "model_performance_preservation": {"ce_loss_score", "ce_loss_with_ablation",
                                           "ce_loss_with_sae", "ce_loss_without_sae"},
        "reconstruction_quality": {"explained_variance", "explained_variance_legacy", "mse",
                                   "cossim"},
        "shrinkage": {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"},
        "sparsity": {"l0", "l1"},
        "token_stats": {"total_tokens_eval_reconstruction", "total_tokens_eval_sparsity_variance"},
        "misc_metrics": {"freq_over_1_percent", "freq_over_10_percent",
                         "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                         "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
                         "frac_alive"}}
    b = rep.saebench
    assert m["sparsity"]["l0"] == rep.l0
    assert m["reconstruction_quality"]["explained_variance"] == 1 - rep.fvu
    assert m["model_performance_preservation"] == {
        "ce_loss_score": b["ce_loss_score"], "ce_loss_with_ablation": b["ablated_loss"],
        "ce_loss_with_sae": b["spliced_loss"], "ce_loss_without_sae": b["clean_loss"]}
    assert m["model_behavior_preservation"]["kl_div_with_sae"] == b["kl_div"]
    assert m["token_stats"]["total_tokens_eval_reconstruction"] == tokens.numel()
    assert m["misc_metrics"]["frac_alive"] == 1 - rep.dead_fraction
    # independent per-token figures: SAELens's definitions over the non-special positions
    special = sorted({model.tokenizer.bos_token_id, model.tokenizer.eos_token_id,
                      model.tokenizer.pad_token_id})
    keep = torch.from_numpy(np.isin(tokens.numpy(), special, invert=True))
    x = capture(model, tokens, [SITE])[SITE][keep].double()
    f = sae.encode(x.float()).double()
    x_hat = sae(x.float()).double()
    assert m["sparsity"]["l1"] == pytest.approx(float(f.abs().sum(-1).mean()), rel=1e-6)
    assert m["reconstruction_quality"]["mse"] == pytest.approx(
        float((x - x_hat).pow(2).sum(-1).mean()), rel=1e-6)
    assert m["reconstruction_quality"]["cossim"] == pytest.approx(
        float(torch.nn.functional.cosine_similarity(x, x_hat).mean()), rel=1e-6)
    assert m["shrinkage"]["l2_ratio"] == pytest.approx(
        float((x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()), rel=1e-6)
    density = (f != 0).double().mean(0)
    rows = got["eval_result_details"]
    assert [r["index"] for r in rows] == list(range(48))
    assert [r["feature_density"] for r in rows] == pytest.approx(density.tolist(), abs=1e-12)
    fires, seqs = (f != 0).sum(0), torch.zeros(48)
    for row, k in zip(capture(model, tokens, [SITE])[SITE], keep, strict=True):
        seqs += (sae.encode(row[k]) != 0).any(0)
    want_cah = torch.where(seqs > 0, fires / seqs.clamp(min=1), 0.0)  # 0 for never-fired (schema)
    assert [r["consistent_activation_heuristic"] for r in rows] == pytest.approx(
        want_cah.tolist(), rel=1e-9)
    unit = torch.nn.functional.normalize(sae.W_dec.double(), dim=-1)
    sims = unit @ unit.T - 3 * torch.eye(48, dtype=torch.float64)
    assert [r["max_decoder_cosine_sim"] for r in rows] == pytest.approx(
        sims.max(-1).values.tolist(), rel=1e-9)
    assert got["sae_cfg_dict"]["metadata"]["hook_name"] == SITE
    assert got["eval_result_unstructured"]["scope_report"]["delta_lm_loss"] == rep.delta_lm_loss
    with pytest.raises(SAEBenchPathError, match="is a folder"):
        check_path(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(SAEBenchPathError, match="is a file"):
        write_saebench_json(rep, sae, tmp_path / "f" / "core.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "out"]
