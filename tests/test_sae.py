"""JumpReLUSAE: exact JumpReLU against numpy, transcoders, native save/load, SAELens format."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from sae_builders import jumprelu_numpy, jumprelu_weights, write_saelens_folder

from scope.errors import SAEFormatError
from scope.saes.sae import CFG_FILENAME, WEIGHTS_FILENAME, JumpReLUSAE, SAEConfig


def _sae(w, **cfg_kw):
    d_in, d_sae = w["W_enc"].shape
    d_out = w["W_dec"].shape[1]
    kw = {"d_in": d_in, "d_sae": d_sae, "hook_name": "blocks.3.hook_resid_post"}
    if d_out != d_in or "affine_skip" in w:
        kw.update(d_out=d_out, kind="transcoder", hook_name="blocks.3.ln2.hook_normalized",
                  hook_name_out="blocks.3.hook_mlp_out")
    kw.update(cfg_kw)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in w.items()}
    return JumpReLUSAE(SAEConfig(**kw), **tensors)


def test_known_answer_strict_threshold():
    # identity encoder, thresholds hand-set so some pre-activations sit exactly on them
    W_enc = np.eye(4, dtype=np.float32)
    w = {"W_enc": W_enc, "W_dec": np.eye(4, dtype=np.float32),
         "b_enc": np.zeros(4, np.float32), "b_dec": np.array([0, 0, 0, 1], np.float32),
         "threshold": np.array([0.5, 0.5, 1.0, -1.0], np.float32)}
    sae = _sae(w)
    x = torch.tensor([[0.5, 0.6, 1.0, -0.5], [0.4999, 2.0, 1.0001, -1.0]])
    f = sae.encode(x)
    expected = torch.tensor([[0.0, 0.6, 0.0, -0.5], [0.0, 2.0, 1.0001, 0.0]])
    assert torch.equal(f, expected)  # == threshold is off (strict >); negative thresholds pass
    assert torch.equal(sae.decode(f), expected + torch.tensor([0, 0, 0, 1.0]))
    assert torch.equal(sae.encode_pre(x), x)


def test_matches_numpy_and_error():
    w = jumprelu_weights(16, 64, seed=1)
    sae = _sae(w)
    x = np.random.default_rng(2).standard_normal((2, 5, 16)).astype(np.float32)
    f_np, xhat_np = jumprelu_numpy(x, w)
    out = sae.run(torch.from_numpy(x))
    assert out.feature_acts.shape == (2, 5, 64)
    np.testing.assert_allclose(out.feature_acts.numpy(), f_np, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), xhat_np, atol=1e-5)
    np.testing.assert_allclose(sae.error(torch.from_numpy(x)).numpy(), x - xhat_np, atol=1e-5)
    assert (f_np > 0).sum() > 0 and (f_np == 0).sum() > 0  # the test exercises both branches


def test_affine_transcoder():
    w = jumprelu_weights(16, 32, d_out=12, seed=3, affine=True)
    sae = _sae(w)
    x = np.random.default_rng(4).standard_normal((7, 16)).astype(np.float32)
    _, xhat_np = jumprelu_numpy(x, w)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), xhat_np, atol=1e-5)
    # decode alone excludes the skip (it needs x)
    f = sae.encode(torch.from_numpy(x))
    np.testing.assert_allclose(sae.decode(f).numpy(), xhat_np - x @ w["affine_skip"], atol=1e-5)
    with pytest.raises(ValueError, match="target"):
        sae.error(torch.from_numpy(x))
    target = torch.zeros(7, 12)
    np.testing.assert_allclose(sae.error(torch.from_numpy(x), target).numpy(), -xhat_np, atol=1e-5)


@pytest.mark.parametrize("affine", [False, True])
def test_native_save_load_bitwise(tmp_path, affine):
    w = jumprelu_weights(8, 24, d_out=8, seed=5, affine=affine)
    sae = _sae(w, model_name="gemma-2-2b", release="r", sae_id="s", neuronpedia_id="np/1")
    sae.save(tmp_path / "sae")
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == [CFG_FILENAME, WEIGHTS_FILENAME]
    back = JumpReLUSAE.load(tmp_path / "sae")
    for k, v in sae.state_tensors().items():
        got = back.state_tensors()[k]
        assert got.dtype == v.dtype and torch.equal(got.view(torch.int32), v.view(torch.int32))
    assert back.cfg == sae.cfg
    raw = json.loads((tmp_path / "sae" / CFG_FILENAME).read_text())
    assert raw["architecture"] == ("jumprelu_skip_transcoder" if affine else "jumprelu")
    assert raw["metadata"]["hook_name"] == sae.cfg.hook_name and raw["format_version"] == 1
    assert raw["apply_b_dec_to_input"] is False


def test_save_load_bfloat16_and_to(tmp_path):
    sae = _sae(jumprelu_weights(8, 16))
    half = sae.to(torch.bfloat16)
    assert half.W_enc.dtype == torch.bfloat16 and half.cfg.dtype == "bfloat16"
    half.save(tmp_path / "h")
    back = JumpReLUSAE.load(tmp_path / "h")
    assert back.W_dec.dtype == torch.bfloat16 and torch.equal(back.W_dec, half.W_dec)
    assert JumpReLUSAE.load(tmp_path / "h", dtype="float32").W_dec.dtype == torch.float32


@pytest.mark.parametrize("legacy", [False, True])
def test_saelens_folder_loads(tmp_path, legacy):
    w = jumprelu_weights(8, 16, seed=6)
    write_saelens_folder(tmp_path / "sl", w, hook_name="blocks.20.hook_resid_post", legacy=legacy)
    sae = JumpReLUSAE.load(tmp_path / "sl")
    assert sae.cfg.hook_name == "blocks.20.hook_resid_post" and sae.cfg.model_name == "gemma-2-2b"
    assert torch.equal(sae.W_enc, torch.from_numpy(w["W_enc"]))
    if legacy:
        assert sae.cfg.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"


def test_bad_shapes_and_config():
    w = jumprelu_weights(8, 16)
    w["b_enc"] = w["b_enc"][:-1]
    with pytest.raises(SAEFormatError, match="b_enc"):
        _sae(w)
    with pytest.raises(ValueError, match="d_in"):
        SAEConfig(d_in=0, d_sae=4, hook_name="h")
    with pytest.raises(ValueError, match="hook_name"):
        SAEConfig(d_in=4, d_sae=4, hook_name="")
    with pytest.raises(ValueError, match="transcoder"):
        SAEConfig(d_in=4, d_sae=4, d_out=5, hook_name="h")
    cfg = SAEConfig.from_dict({"d_in": 2, "d_sae": 3, "hook_name": "h", "future_field": 1})
    assert cfg.extra["future_field"] == 1 and cfg.name == "h"


def test_non_unit_decoder_warns(caplog):
    w = jumprelu_weights(8, 16)
    w["W_dec"] *= 3
    sae_tensors = {k: torch.from_numpy(v) for k, v in w.items()}
    cfg = SAEConfig(d_in=8, d_sae=16, hook_name="h")
    with caplog.at_level(logging.WARNING, logger="scope.saes.sae"):
        JumpReLUSAE.from_tensors(cfg, sae_tensors)
    assert "unit norm" in caplog.text


def test_nan_rejected_and_truncated_file(tmp_path):
    w = jumprelu_weights(8, 16)
    w["threshold"][3] = np.nan
    with pytest.raises(SAEFormatError, match="threshold"):
        JumpReLUSAE.from_tensors(SAEConfig(d_in=8, d_sae=16, hook_name="h"),
                                 {k: torch.from_numpy(v) for k, v in w.items()})
    sae = _sae(jumprelu_weights(8, 16))
    sae.save(tmp_path / "t")
    f = tmp_path / "t" / WEIGHTS_FILENAME
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SAEFormatError, match="truncated"):
        JumpReLUSAE.load(tmp_path / "t")


# --------------------------------------------------------------------------------------------
# SAELens 6 reads what scope writes (file-based: the checks SAELens's `SAE.load_from_disk`,
# `handle_config_defaulting`, `SAEConfig.from_dict` and `run_evals` / `ActivationsStore.from_sae`
# make, re-implemented from SAELens 6.54's source; sae_lens itself is not imported)
# --------------------------------------------------------------------------------------------

SAELENS_ARCHS = {"jumprelu": (), "jumprelu_transcoder": ("d_out",),
                 "jumprelu_skip_transcoder": ("d_out",)}
SAELENS_NORMS = {"none", "expected_average_only_in", "constant_norm_rescale", "layer_norm",
                 "covariance_whitening"}


def assert_saelens6_reads(folder, *, model_name: str, hook_name: str):
    """What SAELens 6 needs from a folder for `load_from_disk` and for its evals to run."""
    from safetensors import safe_open

    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg["metadata"]
    # handle_config_defaulting: no (or < 6.0) sae_lens_version -> read as a pre-6 flat config,
    # which loses metadata.hook_name / model_name (the bug this guards against)
    version = tuple(int(p) for p in str(meta["sae_lens_version"]).split(".")[:3])
    assert version >= (6, 0, 0)
    assert cfg["architecture"] in SAELENS_ARCHS
    for key in ("d_in", "d_sae", *SAELENS_ARCHS[cfg["architecture"]]):
        assert isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and cfg[key] > 0
    assert cfg["dtype"] in {"float32", "float16", "bfloat16", "float64"}
    assert cfg["apply_b_dec_to_input"] is False and cfg["normalize_activations"] in SAELENS_NORMS
    assert cfg["reshape_activations"] in {"none", "hook_z"}
    # run_evals / ActivationsStore.from_sae / the model loader read these from metadata
    assert meta["hook_name"] == hook_name and meta["model_name"] == model_name
    assert meta["hook_head_index"] is None and meta["prepend_bos"] is True
    assert isinstance(meta["context_size"], int) and meta["context_size"] > 1
    assert meta["model_from_pretrained_kwargs"] == {}  # unpacked with ** by SAELens's evals
    assert meta["seqpos_slice"] == [None]
    d_in, d_sae, d_out = cfg["d_in"], cfg["d_sae"], cfg.get("d_out", cfg["d_in"])
    want = {"W_enc": [d_in, d_sae], "W_dec": [d_sae, d_out], "b_enc": [d_sae],
            "b_dec": [d_out], "threshold": [d_sae]}
    if cfg["architecture"] == "jumprelu_skip_transcoder":
        want["W_skip"] = [d_out, d_in]
    with safe_open(str(folder / "sae_weights.safetensors"), "pt") as fh:
        assert {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()} == want


@pytest.mark.parametrize("affine", [False, True])
def test_saved_folder_carries_what_saelens6_needs(tmp_path, affine):
    w = jumprelu_weights(8, 24, d_out=8, seed=5, affine=affine)
    sae = _sae(w, model_name="gemma-2-2b", extra={"training": {"ctx": 256}})
    sae.save(tmp_path / "sae")
    assert_saelens6_reads(tmp_path / "sae", model_name="google/gemma-2-2b",
                          hook_name=sae.cfg.hook_name)
    meta = json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]
    assert meta["context_size"] == 256 and meta["hook_name_out"] == sae.cfg.hook_name_out
    # a model scope does not know keeps its name; Gemma Scope SAEs say their 1,024-token context
    gs = _sae(jumprelu_weights(8, 16), model_name="my-org/my-gemma",
              extra={"source_format": "gemma-scope-2"})
    gs.save(tmp_path / "gs")
    assert_saelens6_reads(tmp_path / "gs", model_name="my-org/my-gemma",
                          hook_name=gs.cfg.hook_name)
    assert json.loads((tmp_path / "gs" / "cfg.json").read_text())["metadata"]["context_size"] \
        == 1024


@pytest.mark.parametrize("name", ["demo_sae", "layer_3", "layer_6", "layer_12"])
def test_bundled_folders_carry_what_saelens6_needs(name):
    from scope.saes.loading import BUNDLED_ROOT

    folder = BUNDLED_ROOT / name
    cfg = json.loads((folder / "cfg.json").read_text())
    assert_saelens6_reads(folder, model_name="google/gemma-3-270m",
                          hook_name=cfg["scope"]["hook_name"])
    assert cfg["metadata"]["context_size"] == cfg["scope"]["extra"]["training"]["ctx"] == 128
    assert cfg["dtype"] == "float16"  # the shipped weights' dtype (load_sae casts to float32)
