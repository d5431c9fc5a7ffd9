"""load_sae through the real hf_hub_download path on a synthetic offline HF cache."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sae_builders import (
    add_gs1,
    add_gs2,
    gs2_config,
    jumprelu_numpy,
    jumprelu_weights,
    offline_hub,
    tiny_registry,
    write_gs2,
    write_npz,
    write_saelens_folder,
)

import scope
from scope.errors import HubUnavailableError, SAEFormatError, ShapeMismatchError, UnknownSAEError
from scope.saes import loading

RES = "gemma-scope-2b-pt-res"
RES_ID = "layer_20/width_16k/average_l0_71"
GS2_RES = "gemma-scope-2-270m-pt-res"
GS2_TC = "gemma-scope-2-270m-pt-transcoders"
GS2_TC_ID = "transcoder/layer_9_width_16k_l0_small_affine"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    hub = offline_hub(tmp_path, monkeypatch)
    tiny_registry(tmp_path, monkeypatch, [RES, RES + "-canonical", "gemma-scope-2b-pt-att",
                                          "gemma-scope-2b-pt-transcoders"], d_in=16, d_sae=32,
                  d_att=24)
    return hub


def _assert_weights(sae, w):
    for k, v in w.items():
        assert torch.equal(getattr(sae, k).detach(), torch.from_numpy(v)), k


@pytest.mark.parametrize("compressed", [False, True])
def test_gs1_by_release_name(hub, compressed):
    w = jumprelu_weights(16, 32, seed=1)
    add_gs1(hub, RES, RES_ID, w, compressed=compressed)
    sae = scope.load_sae(RES, RES_ID)
    _assert_weights(sae, w)
    cfg = sae.cfg
    assert (cfg.hook_name, cfg.d_in, cfg.d_sae, cfg.model_name) == (
        "blocks.20.hook_resid_post", 16, 32, "gemma-2-2b")
    assert cfg.release == RES and cfg.sae_id == RES_ID and cfg.name == f"{RES}/{RES_ID}"
    assert cfg.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    f_np, xhat_np = jumprelu_numpy(x, w)
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), f_np, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), xhat_np, atol=1e-5)
    # one-string spec
    assert torch.equal(scope.load_sae(f"{RES}/{RES_ID}").W_enc, sae.W_enc)


def test_gs1_canonical_and_sites(hub):
    w = jumprelu_weights(16, 32, seed=2)
    add_gs1(hub, RES, RES_ID, w)
    sae = scope.load_sae(RES + "-canonical", "layer_20/width_16k/canonical")
    _assert_weights(sae, w)
    assert sae.cfg.sae_id == "layer_20/width_16k/canonical"
    assert sae.cfg.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    # attention SAE reads flattened hook_z; transcoder reads ln2.hook_normalized -> hook_mlp_out
    wa = jumprelu_weights(24, 32, seed=3)
    add_gs1(hub, "gemma-scope-2b-pt-att", "layer_5/width_16k/average_l0_135", wa)
    att = scope.load_sae("gemma-scope-2b-pt-att", "layer_5/width_16k/average_l0_135")
    assert att.cfg.hook_name == "blocks.5.attn.hook_z" and att.d_in == 24
    wt = jumprelu_weights(16, 32, seed=4)
    add_gs1(hub, "gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_54", wt)
    tc = scope.load_sae("gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_54")
    assert (tc.cfg.kind, tc.cfg.hook_name, tc.cfg.hook_name_out) == (
        "transcoder", "blocks.3.ln2.hook_normalized", "blocks.3.hook_mlp_out")


def test_gs1_cache_second_load_equal(hub, tmp_path):
    w = jumprelu_weights(16, 32, seed=5)
    npz = add_gs1(hub, RES, RES_ID, w)
    first = scope.load_sae(RES, RES_ID)
    cached = list((tmp_path / "scope_cache" / "saes").rglob("sae_weights.safetensors"))
    assert len(cached) == 1
    npz.unlink()  # the second load must come from the native cache alone
    second = scope.load_sae(RES, RES_ID)
    for k, v in first.state_tensors().items():
        assert torch.equal(second.state_tensors()[k], v)
    assert second.cfg.hook_name == first.cfg.hook_name and second.cfg.release == RES


def test_dtype_bfloat16(hub):
    w = jumprelu_weights(16, 32, seed=6)
    add_gs1(hub, RES, RES_ID, w)
    for _ in range(2):  # first (from npz) and second (from cache)
        sae = scope.load_sae(RES, RES_ID, dtype=torch.bfloat16)
        assert {p.dtype for p in sae.parameters()} == {torch.bfloat16}
        assert sae.cfg.dtype == "bfloat16"
        assert torch.equal(sae.W_enc, torch.from_numpy(w["W_enc"]).to(torch.bfloat16))
    assert scope.load_sae(RES, RES_ID).W_enc.dtype == torch.float32


def test_gs2_sae_and_affine_transcoder(hub):
    w = jumprelu_weights(20, 32, seed=7)
    add_gs2(hub, GS2_RES, "layer_12_width_16k_l0_medium", w)
    sae = scope.load_sae(GS2_RES, "layer_12_width_16k_l0_medium")
    _assert_weights(sae, w)
    assert sae.cfg.hook_name == "blocks.12.hook_resid_post" and sae.d_in == 20
    assert sae.cfg.neuronpedia_id == "gemma-3-270m/12-gemmascope-2-res-16k"
    wt = jumprelu_weights(20, 32, seed=8, affine=True)
    add_gs2(hub, GS2_TC, GS2_TC_ID, wt)
    tc = scope.load_sae(GS2_TC, GS2_TC_ID)
    _assert_weights(tc, wt)
    assert (tc.cfg.kind, tc.cfg.hook_name, tc.cfg.hook_name_out) == (
        "transcoder", "blocks.9.ln2.hook_normalized_with_gain", "blocks.9.hook_mlp_out")
    x = np.random.default_rng(1).standard_normal((4, 20)).astype(np.float32)
    np.testing.assert_allclose(tc(torch.from_numpy(x)).numpy(), jumprelu_numpy(x, wt)[1], atol=1e-5)
    att = jumprelu_weights(24, 32, seed=9)
    add_gs2(hub, "gemma-scope-2-270m-pt-att", "layer_5_width_16k_l0_small", att)
    assert scope.load_sae("gemma-scope-2-270m-pt-att",
                          "layer_5_width_16k_l0_small").cfg.hook_name == "blocks.5.attn.hook_z"


def test_local_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "cache"))
    w = jumprelu_weights(8, 16, seed=10)
    gs_like = write_npz(tmp_path / "gemma-scope-9b-pt-mlp" / "layer_7" / "width_16k"
                        / "average_l0_50" / "params.npz", w)
    sae = scope.load_sae(gs_like)
    assert sae.cfg.hook_name == "blocks.7.hook_mlp_out" and sae.cfg.model_name == "gemma-2-9b"
    _assert_weights(sae, w)
    plain = write_npz(tmp_path / "x" / "params.npz", w)
    with pytest.raises(UnknownSAEError, match="hook_name="):
        scope.load_sae(plain)
    assert scope.load_sae(plain, hook_name="blocks.1.hook_resid_post").cfg.hook_name == \
        "blocks.1.hook_resid_post"
    assert scope.load_sae(str(plain.parent), hook_name="hook_embed").d_sae == 16
    gs2 = write_gs2(tmp_path / "gs2", w, gs2_config("model.layers.3.output", "model.layers.3.output",
                                                    width=16, model_name="google/gemma-3-1b-pt"))
    assert scope.load_sae(gs2).cfg.hook_name == "blocks.3.hook_resid_post"
    sl = write_saelens_folder(tmp_path / "sl", w, hook_name="blocks.2.hook_resid_post")
    assert scope.load_sae(sl).cfg.hook_name == "blocks.2.hook_resid_post"
    sae.save(tmp_path / "native")
    _assert_weights(scope.load_sae(tmp_path / "native"), w)


def test_bundled_missing_is_clear(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tmp_path / "nope")
    with pytest.raises(UnknownSAEError, match="scope train"):
        scope.load_sae("bundled")


def test_unknown_release_and_id(hub):
    with pytest.raises(UnknownSAEError, match="gemma-scope-2b-pt-res"):
        scope.load_sae("gemma-scope-2b-pt-rs", RES_ID)
    with pytest.raises(UnknownSAEError, match="average_l0_71"):
        scope.load_sae(RES, "layer_20/width_16k/average_l0_70")
    with pytest.raises(UnknownSAEError, match="needs an SAE id"):
        scope.load_sae(RES)
    with pytest.raises(UnknownSAEError, match="neither a local file"):
        scope.load_sae("gemma-scope-2b-pt-rez/layer_1")


def test_hub_unavailable_nothing_cached(hub):
    with pytest.raises(HubUnavailableError, match="not in the local cache"):
        scope.load_sae(RES, RES_ID)
    with pytest.raises(HubUnavailableError):
        scope.load_sae(GS2_RES, "layer_12_width_16k_l0_medium")


def test_bad_files(hub):
    w = jumprelu_weights(16, 32, seed=11)
    npz = add_gs1(hub, RES, RES_ID, w)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(SAEFormatError, match="params.npz.*(truncated|corrupt)"):
        scope.load_sae(RES, RES_ID)
    bad = dict(w)
    del bad["threshold"]
    add_gs1(hub, RES, RES_ID, bad)
    with pytest.raises(SAEFormatError, match="missing key.*threshold"):
        scope.load_sae(RES, RES_ID)
    bad = dict(w, b_dec=np.zeros(15, np.float32))
    add_gs1(hub, RES, RES_ID, bad)
    with pytest.raises(SAEFormatError, match="'b_dec' has shape \\[15\\], expected \\[16\\]"):
        scope.load_sae(RES, RES_ID)
    nan = {k: v.copy() for k, v in w.items()}
    nan["W_dec"][2, 3] = np.nan
    add_gs1(hub, RES, RES_ID, nan, compressed=True)
    with pytest.raises(SAEFormatError, match="'W_dec' holds NaN"):
        scope.load_sae(RES, RES_ID)
    folder = add_gs2(hub, GS2_RES, "layer_12_width_16k_l0_medium", w)
    st = folder / "params.safetensors"
    st.write_bytes(st.read_bytes()[:50])
    with pytest.raises(SAEFormatError, match="params.safetensors"):
        scope.load_sae(GS2_RES, "layer_12_width_16k_l0_medium")


def test_d_in_mismatch_with_model(tmp_path, caplog):
    from builders import tiny_hooked_model

    model = tiny_hooked_model("gemma3")  # d_model 64
    w = jumprelu_weights(16, 32, seed=12)
    write_saelens_folder(tmp_path / "s", w, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ShapeMismatchError, match="d_in=16.*64"):
        scope.load_sae(tmp_path / "s", model=model)
    ok = jumprelu_weights(model.cfg.d_model, 8, seed=13)
    write_saelens_folder(tmp_path / "ok", ok, hook_name="blocks.1.hook_resid_post")
    with caplog.at_level(logging.WARNING):
        assert scope.load_sae(tmp_path / "ok", model=model).d_in == model.cfg.d_model


def test_bundled_sae_computes_in_float32_even_at_bos_scale():
    """Stored in float16, but Gemma's BOS residual (~1e5) would overflow float16 pre-acts."""
    from scope.saes.loading import load_sae

    sae = load_sae("bundled")
    assert sae.dtype == torch.float32 and sae.scope_spec == "bundled"
    x = torch.randn(2, sae.d_in, generator=torch.Generator().manual_seed(0)) * 1e5
    assert torch.isfinite(sae.encode(x)).all()
    assert load_sae("bundled", dtype="float16").dtype == torch.float16


# ------------------------------------------------------------------------------------------------
# dictionary sets: bundled/transcoders and folders of layer_L/ (scope.saes.bundled)
# ------------------------------------------------------------------------------------------------


def _write_set(root, layers, *, report=True):
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    saes = []
    for L in layers:
        w = {k: torch.from_numpy(v) for k, v in jumprelu_weights(8, 16, seed=L).items()}
        cfg = SAEConfig(d_in=8, d_sae=16, hook_name=f"blocks.{L}.ln2.hook_normalized_with_gain",
                        hook_name_out=f"blocks.{L}.hook_mlp_out", d_out=8, kind="transcoder")
        sae = JumpReLUSAE.from_tensors(cfg, {**w, "affine_skip": torch.eye(8)})
        sae.save(root / f"layer_{L}")
        saes.append(sae)
    if report:
        (root / "report.json").write_text(json.dumps({"layers": {str(L): {} for L in layers}}))
    return saes


def test_a_set_folder_loads_one_dictionary_per_layer_shallowest_first(tmp_path):
    from scope.saes.bundled import expand_sae_specs

    written = _write_set(tmp_path / "tc", [2, 0, 1, 10, 3, 4, 5, 6, 7, 8, 9])
    got = loading.load_sae(tmp_path / "tc")
    assert [s.cfg.hook_name_out for s in got] == [f"blocks.{L}.hook_mlp_out" for L in range(11)]
    by_layer = {int(s.cfg.hook_name.split(".")[1]): s for s in written}
    for L, s in enumerate(got):
        for name, t in by_layer[L].state_tensors().items():
            assert torch.equal(getattr(s, name).data, t), (L, name)
    assert [s.cfg.hook_name for s in loading.load_saes([str(tmp_path / "tc")])] == [
        s.cfg.hook_name for s in got]
    specs = expand_sae_specs(["bundled", str(tmp_path / "tc")])
    assert specs[0] == "bundled" and specs[1:] == [str(tmp_path / "tc" / f"layer_{L}")
                                                  for L in range(11)]
    one = loading.load_sae(tmp_path / "tc" / "layer_3")  # a member alone is one dictionary
    assert one.cfg.hook_name == "blocks.3.ln2.hook_normalized_with_gain"


def test_a_set_missing_a_layer_is_a_named_error(tmp_path):
    from scope.errors import MissingLayerError

    _write_set(tmp_path / "a", [0, 1, 3], report=False)  # no report: 0..3 expected
    with pytest.raises(MissingLayerError, match=r"layer\(s\) \[2\]") as err:
        loading.load_sae(tmp_path / "a")
    assert isinstance(err.value, SAEFormatError) and "has: layer_0, layer_1, layer_3" in str(err.value)
    _write_set(tmp_path / "b", [0, 1, 2])
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    report["layers"]["3"] = {}  # the report names a layer the folder lacks
    (tmp_path / "b" / "report.json").write_text(json.dumps(report))
    with pytest.raises(MissingLayerError, match=r"\[3\]"):
        loading.load_saes(str(tmp_path / "b"))


def test_unknown_bundled_transcoder_is_named():
    with pytest.raises(UnknownSAEError, match="bundled/transcoders/layer_99"):
        loading.load_sae("bundled/transcoders/layer_99")


SHIPPED_TC = loading.BUNDLED_ROOT / "transcoders"


@pytest.mark.skipif(not (SHIPPED_TC / "report.json").is_file(), reason="transcoders not shipped")
def test_bundled_transcoders_every_layer_with_its_report():
    """`bundled/transcoders`: the 18 layers of Gemma 3 270M, float32, skip transcoders at the
    Gemma Scope 2 sites, each with held-out FVU and CE loss score in report.json."""
    from scope.attribution.attribute import expand_sae_specs as attribution_expand
    from scope.saes.bundled import expand_sae_specs

    tcs = scope.load_sae("bundled/transcoders")
    assert len(tcs) == 18
    for L, tc in enumerate(tcs):
        assert tc.cfg.hook_name == f"blocks.{L}.ln2.hook_normalized_with_gain"
        assert tc.cfg.hook_name_out == f"blocks.{L}.hook_mlp_out"
        assert tc.cfg.kind == "transcoder" and tc.affine_skip is not None
        assert tc.dtype == torch.float32 and tc.d_in == tc.d_out == 640
    assert expand_sae_specs(["bundled/transcoders"]) == [
        f"bundled/transcoders/layer_{L}" for L in range(18)]
    assert attribution_expand(["bundled/all"]) == expand_sae_specs(["bundled/all"])
    report = json.loads((SHIPPED_TC / "report.json").read_text())
    assert set(report["layers"]) == {str(L) for L in range(18)}
    for rec in report["layers"].values():  # the score is the documented ratio of its CEs
        assert 0 <= rec["fvu"] < 1 and rec["ce_clean"] < rec["ce_zero_ablation"]
        assert rec["ce_loss_score"] == pytest.approx(
            (rec["ce_zero_ablation"] - rec["ce_spliced"]) / (rec["ce_zero_ablation"] - rec["ce_clean"]))
    from scope.train.tc_eval import quality_verdict

    assert report["quality"] == quality_verdict(report["layers"])  # a reader sees the verdict
    assert report["quality"]["usable_for_attribution"] is True
    size = sum(p.stat().st_size for p in SHIPPED_TC.rglob("*") if p.is_file())
    assert size < 70 * 2**20
