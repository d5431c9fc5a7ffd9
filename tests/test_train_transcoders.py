"""Tests of scope.train's transcoders: one forward pass per batch for every layer, targets equal
to the Hugging Face MLP's own output, FVU that falls, the outlier rule, exact folding, resume,
and the native save/load round trip of a set (scope.saes.bundled)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from scope.saes.outliers import GEMMA_SCOPE_2_IT_PREFIX, outlier_positions, outlier_prefix
from scope.train.config import TrainConfig
from scope.train.transcoder import JumpReLUTrainingTranscoder

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "scope" / "bundled" / "transcoders"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, corpus folder) of the tiny Gemma 3 and a small word corpus."""
    from builders import _cached_dir
    from corpus_helpers import word_corpus

    return _cached_dir("gemma3"), word_corpus(tmp_path_factory.mktemp("tc") / "corpus")


def _cfg(tiny, tmp_path, **over) -> TrainConfig:
    model_dir, corpus = tiny
    flat = {"model": str(model_dir), "kind": "transcoder", "skip": True, "corpus": str(corpus),
            "ctx": 32, "train_tokens": 2400, "eval_tokens": 240, "capture_batch_size": 4,
            "segment_windows": 8, "d_sae": 32, "batch_size": 64, "lr": 3e-3,
            "l0_warmup_steps": 5, "lr_warmup_steps": 2, "checkpoint_every": 1, "log_every": 1,
            "run_dir": str(tmp_path / "run"), "out": str(tmp_path / "tc"),
            "save_dtype": "float16", "eval_lm_windows": 2, "workers": 1}
    flat.update(over)
    return TrainConfig.from_flat(flat)


def _model(tiny):
    from scope.model.load import load_model

    return load_model(tiny[0], device="cpu", dtype=torch.float32)


def _hf_mlp_sites(model_dir: Path, tokens: torch.Tensor) -> dict[int, tuple[torch.Tensor, ...]]:
    """{layer: (MLP input with gain, MLP output after the post-norm)} from Hugging Face itself."""
    from transformers import Gemma3ForCausalLM

    hf = Gemma3ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                           attn_implementation="eager").eval()
    got: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for L, layer in enumerate(hf.model.layers):
        for name in ("pre_feedforward_layernorm", "post_feedforward_layernorm"):
            def hook(mod, inp, out, key=(L, name)):
                got[key] = out.detach()
            handles.append(getattr(layer, name).register_forward_hook(hook))
    with torch.no_grad():
        hf(tokens)
    for h in handles:
        h.remove()
    return {L: (got[(L, "pre_feedforward_layernorm")], got[(L, "post_feedforward_layernorm")])
            for L in range(len(hf.model.layers))}


def test_outlier_rule():
    from scope.saes.sae import SAEConfig

    tokens = torch.tensor([[2, 7, 8, 9, 2, 5], [2, 5, 5, 5, 5, 5]])
    assert outlier_positions(tokens).tolist() == [[True] + [False] * 5] * 2
    mask = outlier_positions(tokens, bos_token_id=2)
    assert mask[0].tolist() == [True, False, False, False, True, False]
    it = SAEConfig(d_in=4, d_sae=4, hook_name="x", release="gemma-scope-2-270m-it-transcoders")
    pt = SAEConfig(d_in=4, d_sae=4, hook_name="x", release="gemma-scope-2-270m-pt-transcoders")
    own = SAEConfig(d_in=4, d_sae=4, hook_name="x", extra={"outlier_prefix": 2})
    assert (outlier_prefix(it), outlier_prefix(pt), outlier_prefix(own), outlier_prefix()) == (
        GEMMA_SCOPE_2_IT_PREFIX, 1, 2, 1)
    assert outlier_positions(tokens, [pt, it])[1].tolist() == [True] * 4 + [False] * 2
    with pytest.raises(ValueError):
        outlier_positions(tokens, prefix=0)


def test_segments_are_the_hf_mlp_sites_without_outlier_positions(tiny, tmp_path):
    """Captured x/y equal HF's pre-FFN norm output and post-FFN norm output, positions >= k."""
    from scope.train import segments as seg

    k = 3
    cfg = _cfg(tiny, tmp_path, outlier_prefix=k)
    model = _model(tiny)
    layers = [0, 1, 2, 3]
    batches = seg.window_batches(model, cfg, "train", 0)
    data, forwards = seg.capture_segment(model, cfg, layers, batches)
    assert forwards == cfg.transcoder.segment_windows // cfg.data.capture_batch_size
    windows = torch.cat(list(seg.window_batches(model, cfg, "train", 0))[:forwards])
    assert not torch.isin(windows[:, k:], torch.tensor([0, 1, 2])).any()  # plain word text
    hf = _hf_mlp_sites(tiny[0], windows)
    for i, L in enumerate(layers):
        x_ref = hf[L][0][:, k:].reshape(-1, 64)
        y_ref = hf[L][1][:, k:].reshape(-1, 64)
        assert data["x"][i].shape == x_ref.shape  # exactly the non-outlier positions
        torch.testing.assert_close(data["x"][i].float(), x_ref, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(data["y"][i].float(), y_ref, rtol=1e-2, atol=1e-2)


def test_folded_transcoder_reads_raw_activations_exactly():
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    gen = torch.Generator().manual_seed(0)
    tc = JumpReLUTrainingTranscoder(8, 16, 6, skip=True, generator=gen)
    with torch.no_grad():
        for p in tc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        tc.threshold.abs_()
        tc.normalize_decoder()
    s_in, s_out = 0.25, 0.04
    r = 3.0 * torch.randn(50, 8, generator=gen)
    out = tc(r * s_in, target=torch.zeros(50, 6))
    cfg = SAEConfig(d_in=8, d_sae=16, d_out=6, hook_name="a", hook_name_out="b", kind="transcoder")
    inf = JumpReLUSAE.from_tensors(cfg, tc.folded_tensors(s_in, s_out))
    f, y = inf.run(r)
    torch.testing.assert_close(y, out.x_hat / s_out, rtol=1e-5, atol=1e-5)
    assert torch.equal(f != 0, out.fired)


def test_training_one_forward_per_batch_reduces_fvu_on_hf_targets(tiny, tmp_path):
    """All layers train from one forward pass per batch; held-out FVU against HF's own MLP
    output (computed here independently) falls far below the mean predictor's 1 and matches
    the report; the saved set loads back exactly as transcoders attribution can splice."""
    import scope.saes.loading as loading
    from scope.model.hooks import attached
    from scope.pipeline.corpus import Corpus, token_windows
    from scope.saes.sae import JumpReLUSAE
    from scope.train.trainer import train
    from scope.train.transcoders import plan

    cfg = _cfg(tiny, tmp_path)
    model = _model(tiny)
    calls = []
    with attached(model, [("hook_embed", lambda a, hook: calls.append(1))]):
        result = train(cfg, model=model, progress=False)
    n_segments, _ = plan(cfg)
    per_segment = cfg.transcoder.segment_windows // cfg.data.capture_batch_size
    report = result.report
    assert report["training"]["forward_passes_this_session"] == n_segments * per_segment
    n_eval = report["heldout"]["windows"]
    ce_forwards = -(-cfg.run.eval_lm_windows // 4) * (1 + 2 * model.cfg.n_layers)
    eval_forwards = -(-(n_eval - cfg.run.eval_lm_windows) // 4) + ce_forwards
    assert len(calls) == n_segments * per_segment + eval_forwards  # never one run per layer

    saes = loading.load_sae(result.out)  # a set folder: one transcoder per layer
    assert [s.cfg.hook_name_out for s in saes] == [f"blocks.{L}.hook_mlp_out" for L in range(4)]
    assert all(s.cfg.kind == "transcoder" and s.affine_skip is not None for s in saes)
    for s, mem in zip(saes, result.sae, strict=True):  # exact round trip of what was saved
        assert s.dtype == mem.dtype == torch.float16  # a local folder loads as stored
        for name, t in mem.state_tensors().items():
            assert torch.equal(getattr(s, name).data, t), name
    assert JumpReLUSAE.load(result.out / "layer_2").cfg.extra["outlier_prefix"] == 1

    windows = torch.stack(list(token_windows(Corpus(source=cfg.data.corpus, split="heldout"),
                                             model.tokenizer, ctx=32, max_tokens=n_eval * 32)))
    hf = _hf_mlp_sites(tiny[0], windows)
    for L, s in enumerate(saes):
        x, y = hf[L][0][:, 1:].reshape(-1, 64), hf[L][1][:, 1:].reshape(-1, 64).double()
        err = (y - s(x).double()).pow(2).sum()
        fvu = float(err / (y - y.mean(0)).pow(2).sum())
        rec = report["layers"][str(L)]
        assert fvu < 0.6, (L, fvu)
        assert fvu == pytest.approx(rec["fvu"], rel=1e-3, abs=1e-4)
        assert rec["ce_clean"] < rec["ce_zero_ablation"] and "ce_loss_score" in rec
    progress = [json.loads(line) for line in (Path(cfg.run.run_dir) / "progress.jsonl").open()]
    first, last = progress[0]["layers"], progress[-1]["layers"]
    assert all(last[str(L)]["fvu"] < first[str(L)]["fvu"] for L in range(4))
    assert json.loads((result.out / "report.json").read_text())["layers"].keys() == {"0", "1", "2", "3"}

    shutil.rmtree(result.out / "layer_2")
    from scope.errors import MissingLayerError

    with pytest.raises(MissingLayerError, match=r"layer\(s\) \[2\]"):
        loading.load_sae(result.out)


def test_interrupted_run_resumes_bit_identical(tiny, tmp_path):
    """A run killed mid-way (the model raises on a forward pass) resumes from its checkpoint
    and ends with exactly the weights of an uninterrupted run."""
    from scope.model.hooks import attached
    from scope.saes.sae import JumpReLUSAE
    from scope.train.trainer import train

    model = _model(tiny)
    whole = train(_cfg(tiny, tmp_path / "a", eval_lm_windows=0), model=model, progress=False)

    class Killed(Exception):
        pass

    calls = []

    def killer(a, hook):
        calls.append(1)
        if len(calls) == 5:  # inside segment 3 (2 forwards per segment)
            raise Killed

    cfg = _cfg(tiny, tmp_path / "b", eval_lm_windows=0)
    with pytest.raises(Killed), attached(model, [("hook_embed", killer)]):
        train(cfg, model=model, progress=False)
    from scope.train.transcoders import finish_from_checkpoint

    early = finish_from_checkpoint(cfg, model=model)  # ship what a stopped run has
    assert early.report["training"]["stopped_early"] and early.report["training"][
        "segments_done"] == 2 and len(early.sae) == 4
    again = train(cfg, model=model, progress=False)
    assert again.report["training"]["forward_passes_this_session"] == (
        whole.report["training"]["forward_passes_this_session"] - 4)
    for L in range(4):
        a = JumpReLUSAE.load(whole.out / f"layer_{L}")
        b = JumpReLUSAE.load(again.out / f"layer_{L}")
        for name, t in a.state_tensors().items():
            assert torch.equal(t, b.state_tensors()[name]), (L, name)


def test_transcoder_config_is_validated():
    from scope.errors import ConfigError

    for bad in ({"layers": "0-x"}, {"kind": "crosscoder"}, {"workers": 3},
                {"hook_out": "blocks.0.hook_mlp_out"}):
        with pytest.raises(ConfigError):
            TrainConfig.from_flat({"kind": "transcoder", **bad})
    cfg = TrainConfig.from_flat({"kind": "transcoder", "layers": "0,2-3"})
    assert cfg.transcoder.layer_list(4) == [0, 2, 3]
    with pytest.raises(ConfigError, match="layers 0..3"):
        TrainConfig.from_flat({"kind": "transcoder", "layers": "7"}).transcoder.layer_list(4)


def test_recipe_is_valid():
    import yaml

    cfg = TrainConfig.from_flat(yaml.safe_load((REPO / "configs/train/transcoders.yaml").read_text()))
    assert cfg.transcoder.kind == "transcoder" and cfg.transcoder.layers == "all"
    assert cfg.run.out == "scope/bundled/transcoders"


def test_recipe_parses_on_the_command_line():
    """`scope train --config configs/train/transcoders.yaml` (the README's command) reads every
    key of the recipe, the transcoder section included, into the same config."""
    import yaml

    from scope.cli.main import parse

    path = REPO / "configs/train/transcoders.yaml"
    cmd, configs, _ = parse(["train", "--config", str(path)])
    got = TrainConfig(*configs)
    assert got == TrainConfig.from_flat(yaml.safe_load(path.read_text()))
    assert got.transcoder.kind == "transcoder" and got.transcoder.skip


def test_quality_verdict_follows_its_stated_rule():
    from scope.train.tc_eval import quality_verdict

    def layers(*scores):
        return {str(i): {"ce_loss_score": s, "ce_tokens": 100} for i, s in enumerate(scores)}

    good = quality_verdict(layers(0.9, 0.6, 0.7, 0.8, 0.5, 0.65, 0.7, -0.1))
    assert good["usable_for_attribution"] is True and good["layers_with_nonpositive_ce_loss_score"] == [7]
    assert good["median_ce_loss_score"] == pytest.approx(0.675)
    assert quality_verdict(layers(0.9, 0.6, 0.0, -0.2))["usable_for_attribution"] is False  # 2 of 4
    assert quality_verdict(layers(0.4, 0.45, 0.3))["usable_for_attribution"] is False  # median 0.4
    assert quality_verdict({"0": {"fvu": 0.1}})["usable_for_attribution"] is None
