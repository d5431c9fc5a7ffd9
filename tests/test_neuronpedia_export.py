"""`scope export neuronpedia`: checked the way Neuronpedia's own tools read it.

`converter_check` reimplements, from its published source (hijohnnylin/neuronpedia,
utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py), every
access the converter makes on a SAEDashboard output folder: it lists the files starting with
`batch-`, reads `sae_id_suffix`, `layer` and `features`, builds a `Feature` row from 25 named
fields of each feature, and an `Activation` row from each activation (`max(values)`,
`values.index(max)`, `min(values)`, `bin_*`, `qualifying_token_index`). The field sets of
SAEDashboard 0.8.0's writer (`NeuronpediaDashboardFeature.to_dict`, `...Activation.to_dict`,
`...Batch.to_dict`, `record_skipped_features`, `NeuronpediaRunnerConfig`) are listed from its
source too. Values are compared with the store read through its own API.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scope  # noqa: E402
from scope.errors import ExportError, StoreCorruptError  # noqa: E402
from scope.explore import np_format as F  # noqa: E402
from scope.explore.neuronpedia import export_neuronpedia, read_export  # noqa: E402

# SAEDashboard 0.8.0, sae_dashboard/neuronpedia/neuronpedia_dashboard.py, the to_dict methods
FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values",
    "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_l1",
    "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1",
    "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
    "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "n_prompts_total",
    "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector"}
ACTIVATION_KEYS = {"bin_min", "bin_max", "bin_contains", "tokens", "values",
                   "qualifying_token_index"}
BATCH_KEYS = {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
SKIPPED_KEYS = {"model_id", "layer", "sae_set", "log_sparsity", "skipped_indexes"}
# neuronpedia_runner_config.py, NeuronpediaRunnerConfig's fields (run_settings.json = its __dict__)
RUNNER_FIELDS = {
    "sae_set", "sae_path", "outputs_dir", "np_sae_id_suffix", "np_set_name", "from_local_sae",
    "sparsity_threshold", "huggingface_dataset_path", "n_prompts_total", "n_tokens_in_prompt",
    "n_prompts_in_forward_pass", "n_features_at_a_time", "quantile_feature_batch_size",
    "start_batch", "end_batch", "n_quantiles", "top_acts_group_size", "quantile_group_size",
    "use_dfa", "model_dtype", "sae_dtype", "model_id", "layer", "sae_device",
    "activation_store_device", "model_device", "model_n_devices", "use_wandb", "shuffle_tokens",
    "prefix_str", "suffix_str", "ignore_positions", "prepend_bos",
    "ignore_high_activation_norm_multiple", "hf_model_path", "use_transcoder",
    "use_skip_transcoder", "use_clt", "clt_layer_idx", "clt_dtype", "clt_weights_filename",
    "sae_converter_name"}
# the converter's Feature(...) call reads these keys of each feature
CONVERTER_FEATURE_READS = (
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values",
    "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson",
    "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "decoder_weights_dist", "activations")
CONVERTER_ACTIVATION_READS = ("tokens", "values", "bin_contains", "bin_max", "bin_min",
                              "qualifying_token_index")


def converter_check(folder: Path, source_set: str, model_name: str) -> tuple[list, list]:
    """What convert-saedashboard-to-neuronpedia-export.py does with `folder`, minus the writes:
    the (features, activations) rows it would emit. Raises KeyError/ValueError where it would."""
    features, activations = [], []
    for file in sorted(f for f in (p.name for p in folder.iterdir()) if f.startswith("batch-")):
        batch = json.loads((folder / file).read_bytes())
        suffix = batch["sae_id_suffix"]
        source_id = str(batch["layer"]) + "-" + source_set + ("__" + suffix if suffix else "")
        for fd in batch["features"]:
            row = {k: fd[k] for k in CONVERTER_FEATURE_READS if k != "activations"}
            row.update(modelId=model_name, layer=source_id, index=fd["feature_index"],
                       hasVector="vector" in fd and len(fd["vector"]) > 0,
                       hookName=f"blocks.{batch['layer']}.<hook>" if "vector" in fd else None)
            max_act = 0
            for a in fd["activations"]:
                assert all(k in a for k in CONVERTER_ACTIVATION_READS)
                mv = max(a["values"])  # ValueError on an empty list, as the converter
                act = {"tokens": a["tokens"], "maxValue": mv,
                       "maxValueTokenIndex": a["values"].index(mv), "minValue": min(a["values"]),
                       "values": a["values"], "binContains": a["bin_contains"],
                       "binMax": a["bin_max"], "binMin": a["bin_min"],
                       "qualifyingTokenIndex": a["qualifying_token_index"],
                       "index": fd["feature_index"], "layer": source_id}
                max_act = max(max_act, mv)
                activations.append(act)
            row["maxActApprox"] = max_act
            features.append(row)
    return features, activations


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    from explorer_helpers import build_store

    return build_store(tmp_path_factory.mktemp("npexport"))


@pytest.fixture(scope="module")
def exported(store_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("npout") / "np"
    export_neuronpedia(scope.open_store(store_path), out, batch_size=16, progress=False)
    return out


def _folder(out: Path) -> Path:
    (folder,) = list(out.iterdir())
    return folder


def test_layout_is_saedashboard_080s_and_the_converter_takes_it(store_path, exported):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    folder = _folder(exported)
    assert folder.name == "tiny-gemma3_test-res-96_blocks.2.hook_resid_post_96"
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"batch-{b}.json" for b in range(6)]
                           + [F.SKIPPED_FILE, F.RUN_SETTINGS_FILE])
    for b in range(6):
        batch = json.loads((folder / f"batch-{b}.json").read_text())
        assert set(batch) == BATCH_KEYS
        assert (batch["model_id"], batch["layer"], batch["sae_set"], batch["sae_id_suffix"]) == (
            "tiny-gemma3", 2, "test-res-96", None)
        for f in batch["features"]:
            assert set(f) == FEATURE_KEYS
            assert all(set(a) == ACTIVATION_KEYS for a in f["activations"])
    skipped = json.loads((folder / F.SKIPPED_FILE).read_text())
    assert set(skipped) == SKIPPED_KEYS and skipped["skipped_indexes"] == []
    settings = json.loads((folder / F.RUN_SETTINGS_FILE).read_text())
    assert RUNNER_FIELDS <= set(settings)
    feats, acts = converter_check(folder, "test-res-96", "tiny-gemma3")
    d_sae = store.n_features(sae)
    assert sorted(f["index"] for f in feats) == list(range(d_sae))  # dead features too
    dead = np.flatnonzero(store.firing_counts(sae) == 0)
    assert len(dead) == 4
    for f in feats:
        feat = store.feature(sae, f["index"])
        assert f["layer"] == "2-test-res-96"
        if f["index"] in dead:
            assert f["maxActApprox"] == 0 and f["frac_nonzero"] == 0
        else:
            assert f["maxActApprox"] == pytest.approx(feat.max_activation, abs=6e-3)
    for a in acts:
        # the qualifying token lies in its bin (top group: any token); values are the store's
        q = a["values"][a["qualifyingTokenIndex"]]
        if a["binMin"] != -1:
            assert a["binMin"] - 1e-3 <= q <= a["binMax"] + 1e-3


def test_values_match_the_store(store_path, exported):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    got = read_export(_folder(exported))
    total = int(store.manifest["tokens"])
    for i, e in got.items():
        f = store.feature(sae, i)
        assert e["frac_nonzero"] == pytest.approx(f.density, abs=5e-6)
        assert e["pos_str"] == [t for t, _ in f.top_logits]
        assert e["neg_str"] == [t for t, _ in f.bottom_logits]
        assert e["pos_values"] == pytest.approx([v for _, v in f.top_logits], abs=6e-4)
        assert e["n_tokens_in_prompt"] == 32 and e["n_prompts_total"] == total // 32
        if f.firing_count == 0:
            assert e["activations"] == [] and e["freq_hist_data_bar_heights"] == []
            continue
        top = [a for a in e["activations"] if a["bin_min"] == -1]
        assert [a["tokens"] for a in top] == [x.tokens[1:] for x in f.top_examples]
        for a, x in zip(top, f.top_examples, strict=True):
            assert a["values"] == pytest.approx(x.activations[1:], abs=6e-4)
            assert a["qualifying_token_index"] == x.max_position - 1
            assert a["bin_max"] == round(f.max_activation, 3)
        # five equal-width intervals of [0, max], highest first
        bins = [(a["bin_min"], a["bin_max"]) for a in e["activations"] if a["bin_min"] != -1]
        edges = np.linspace(0, f.max_activation, 6)
        want = [(round(edges[k], 3), round(edges[k + 1], 3)) for k in range(4, -1, -1)]
        assert list(dict.fromkeys(bins)) == [w for w in want if w in bins]
        shares = {(a["bin_min"], a["bin_max"]): a["bin_contains"] for a in e["activations"]
                  if a["bin_min"] != -1}
        assert all(0 <= s <= 1 for s in shares.values())
        lowest = [s for (lo, _), s in shares.items() if lo == 0]
        if lowest:  # the lowest interval holds every token where the feature is zero
            assert lowest[0] >= 1 - f.density - 1e-5
        # 50 equal-width bars whose heights add up to the firings, ending at the max
        vals, heights = e["freq_hist_data_bar_values"], e["freq_hist_data_bar_heights"]
        assert len(vals) == len(heights) == 50 and sum(heights) == f.firing_count
        step = np.diff(vals)
        assert np.allclose(step, step.mean(), atol=2e-3)
        assert vals[-1] + step.mean() / 2 == pytest.approx(f.max_activation, abs=3e-3)
        # mass below a log edge inside the range agrees with the store's histogram
        counts, hedges = f.histogram
        lo = vals[0] - step.mean() / 2
        for k in np.flatnonzero(counts > 0)[1:]:
            x = hedges[k]
            below_store = int(counts[:k].sum())
            below_export = sum(h for v, h in zip(vals, heights, strict=True) if v < x)
            assert abs(below_store - below_export) <= max(counts) + 1, (i, x)
            assert x > lo


def test_logit_histogram_spans_the_stores_logit_tables(store_path, exported):
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    n_vocab = len(store.vocab)
    for i, e in read_export(_folder(exported)).items():
        f = store.feature(sae, i)
        vals, heights = e["logits_hist_data_bar_values"], e["logits_hist_data_bar_heights"]
        assert len(vals) == 50 and sum(heights) <= n_vocab and sum(heights) >= n_vocab - 8
        w = vals[1] - vals[0]
        assert vals[-1] + w / 2 == pytest.approx(f.top_logits[0][1], abs=2e-3)
        assert vals[0] - w / 2 == pytest.approx(f.bottom_logits[0][1], abs=2e-3)
        assert heights[-1] >= 1 and heights[0] >= 1


def test_upload_payload_is_the_clients(store_path, tmp_path):
    """`neuronpedia` 1.2.1, requests/feature_request.py `upload_batch`: the body it posts."""
    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    out = tmp_path / "up"
    files = export_neuronpedia(store, out, format="upload", batch_size=40,
                               logit_histograms=False, progress=False)
    assert [p.name for p in files] == ["upload-0.json", "upload-1.json", "upload-2.json"]
    seen = []
    for p in files:
        body = json.loads(p.read_text())
        assert set(body) == {"modelId", "source", "features"}
        assert (body["modelId"], body["source"]) == ("tiny-gemma3", "2-test-res-96")
        assert 0 < len(body["features"]) <= 128
        for f in body["features"]:
            assert set(f) == {"index", "density", "activations", "explanations", "topLogits",
                              "bottomLogits"}
            feat = store.feature(sae, f["index"])
            assert f["topLogits"] == [{"token": t, "value": pytest.approx(v, abs=6e-4)}
                                      for t, v in feat.top_logits]
            for a in f["activations"]:
                assert set(a) == {"tokens", "values", "quantileMax", "quantileMin",
                                  "quantileFraction"}
                assert len(a["tokens"]) == len(a["values"])
                q = a["quantileFraction"]  # the client's Activation.__post_init__ rule
                assert q is None or 0 <= q <= 1
            seen.append(f["index"])
    assert seen == list(range(store.n_features(sae)))
    with pytest.raises(ExportError, match="1-128"):
        export_neuronpedia(store, tmp_path / "x", format="upload", batch_size=129)


def test_model_ids_are_neuronpedias():
    assert F.neuronpedia_model_id("google/gemma-3-4b-pt") == "gemma-3-4b"
    assert F.neuronpedia_model_id("google/gemma-3-4b-it") == "gemma-3-4b-it"
    assert F.neuronpedia_model_id("gemma-2-2b") == "gemma-2-2b"
    info = {"model_name": "google/gemma-3-4b-pt", "hook_name": "blocks.9.hook_resid_post"}
    assert F.source_parts(info, "my sae") == ("gemma-3-4b", 9, "scope-my-sae", None)
    info = {"neuronpedia_id": "gemma-2-2b/20-gemmascope-res-16k__l0-71"}
    assert F.source_parts(info, "x") == ("gemma-2-2b", 20, "gemmascope-res-16k", "l0-71")


def test_reexport_leaves_no_stale_batch_and_refuses_foreign_folders(store_path, tmp_path):
    store = scope.open_store(store_path)
    out = tmp_path / "np"
    export_neuronpedia(store, out, batch_size=8, logit_histograms=False, progress=False)
    export_neuronpedia(store, out, batch_size=64, logit_histograms=False, progress=False)
    assert sorted(p.name for p in _folder(out).glob("batch-*")) == ["batch-0.json",
                                                                    "batch-1.json"]
    foreign = tmp_path / "foreign"
    (foreign / _folder(out).name).mkdir(parents=True)
    (foreign / _folder(out).name / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not written by `scope export`"):
        export_neuronpedia(store, foreign, logit_histograms=False, progress=False)
    assert (foreign / _folder(out).name / "notes.txt").read_text() == "mine"
    for bad in (store_path, store_path / "sub"):
        with pytest.raises(ExportError, match="inside the store"):
            export_neuronpedia(store, bad, logit_histograms=False, progress=False)


def test_partial_and_non_finite_stores_are_refused(store_path, tmp_path):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    manifest = json.loads((path / "manifest.json").read_text())
    data = path / manifest["data"] / "saes" / manifest["saes"][0]["dir"] / "summary.safetensors"
    arrays = load_file(data)
    arrays["max_activation"][7] = np.nan
    save_file(arrays, data)
    store = scope.open_store(path)
    # the store's reader refuses the non-finite value before the export writes anything
    with pytest.raises(StoreCorruptError, match="NaN or infinite value in `max_activation`"):
        export_neuronpedia(store, tmp_path / "o", logit_histograms=False, progress=False)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("batch-*"))
    manifest["status"] = "partial"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="partial"):
        export_neuronpedia(scope.open_store(path), tmp_path / "o", progress=False)


def test_hook_z_logit_effects_go_through_that_layers_W_O():
    """An attention SAE's logit histogram: z -> layer L's W_O -> residual -> final norm gain ->
    unembed (SAEDashboard's rule), against Hugging Face's own o_proj, norm and lm_head."""
    import torch
    from builders import tiny_hooked_model

    from scope.explore.np_export import residual_logits
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = tiny_hooked_model()
    cfg = model.cfg
    d_z = cfg.n_heads * cfg.d_head
    g = torch.Generator().manual_seed(5)
    W_dec = torch.randn(12, d_z, generator=g)
    sae = JumpReLUSAE(SAEConfig(d_in=d_z, d_sae=12, hook_name="blocks.1.attn.hook_z"),
                      W_dec.T.clone(), W_dec, torch.zeros(12), torch.zeros(d_z),
                      torch.full((12,), 0.1))
    feats = [0, 3, 11]
    got = residual_logits(model, sae, feats)
    hf = model.original_model

    def weight(mod):
        return getattr(mod, "original_component", mod).weight.detach()

    with torch.no_grad():
        resid = W_dec[feats] @ weight(hf.model.layers[1].self_attn.o_proj).T  # [3, d_model]
        norm = getattr(hf.model.norm, "original_component", hf.model.norm)
        gain = norm(torch.ones(1, cfg.d_model))[0]  # RMSNorm of ones: its gain, any convention
        want = ((resid * gain) @ weight(hf.lm_head).T)[:, : len(model.tokenizer)].numpy()
    assert got.shape == want.shape == (3, len(model.tokenizer))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    # and the histogram the export writes from it: 50 equal bins over every logit
    vals, heights = F.hist_equal_width(got[1])
    assert sum(heights) == got.shape[1] and len(vals) == 50
    lo, hi = float(got[1].min()), float(got[1].max())
    assert vals[0] == pytest.approx(lo + (hi - lo) / 100, abs=1e-3)
    # a site that is neither the residual stream nor hook_z has no logit effect: None
    other = JumpReLUSAE(SAEConfig(d_in=cfg.d_model, d_sae=4, hook_name="blocks.1.hook_resid_post",
                                  hook_name_out="blocks.1.hook_mlp_in", d_out=7,
                                  kind="transcoder"),
                        torch.zeros(cfg.d_model, 4), torch.zeros(4, 7), torch.zeros(4),
                        torch.zeros(7), torch.zeros(4))
    assert residual_logits(model, other, [0]) is None


# the converter's `--hook-point` choices (HOOK_POINT_TYPE_CHOICES) and Neuronpedia's Explanation
# row (utils/neuronpedia-utils/neuronpedia_utils/db_models/explanation.py)
HOOK_POINTS = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_in",
               "hook_mlp_out", "hook_attn_in", "hook_attn_out", "hook_z"}
EXPLANATION_KEYS = {"id", "modelId", "layer", "index", "description", "authorId", "embedding",
                    "triggeredById", "typeName", "explanationModelName", "notes", "createdAt"}


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def test_every_field_the_converter_reads_has_its_type_and_shape(store_path, exported):
    """Types and lengths the converter (and the Feature/Activation tables it fills) rely on,
    and the SAE-weight tables against the SAE file read with numpy."""
    from safetensors.numpy import load_file

    store = scope.open_store(store_path)
    sae = store.sae_names[0]
    W_dec = load_file(store_path.parent / "sae" / "sae_weights.safetensors")["W_dec"]
    for i, f in read_export(_folder(exported)).items():
        assert isinstance(f["feature_index"], int) and not isinstance(f["feature_index"], bool)
        for key in ("neg_str", "pos_str"):
            assert all(isinstance(t, str) for t in f[key])
        for key in ("neg_values", "pos_values", "freq_hist_data_bar_values",
                    "logits_hist_data_bar_values", "neuron_alignment_values",
                    "neuron_alignment_l1", "decoder_weights_dist"):
            assert isinstance(f[key], list) and all(_num(x) for x in f[key]), key
        for key in ("freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
                    "neuron_alignment_indices"):
            assert all(isinstance(x, int) for x in f[key]), key
        assert len(f["neg_str"]) == len(f["neg_values"]) and len(f["pos_str"]) == len(
            f["pos_values"])
        assert len(f["freq_hist_data_bar_values"]) == len(f["freq_hist_data_bar_heights"])
        assert len(f["logits_hist_data_bar_values"]) == len(f["logits_hist_data_bar_heights"])
        assert _num(f["frac_nonzero"]) and 0 <= f["frac_nonzero"] <= 1
        assert f["vector"] == [] and f["decoder_weights_dist"] == []  # residual SAE: no heads
        for key in ("correlated_neurons_indices", "correlated_features_indices"):
            assert f[key] == []  # the store keeps no co-activations (docs/explore.md)
        # neuron alignment: top 3 signed decoder entries, their share of the row's L1 norm
        w = W_dec[i].astype(np.float64)
        top = sorted(range(len(w)), key=lambda k: -w[k])[:3]
        assert f["neuron_alignment_indices"] == top
        assert f["neuron_alignment_values"] == pytest.approx(w[top], abs=6e-4)
        assert f["neuron_alignment_l1"] == pytest.approx(np.abs(w[top]) / np.abs(w).sum(),
                                                         abs=6e-4)
        for a in f["activations"]:
            assert len(a["tokens"]) == len(a["values"]) == 31 and a["values"]
            assert all(isinstance(t, str) for t in a["tokens"])
            assert all(_num(v) for v in a["values"])
            assert all(_num(a[k]) for k in ("bin_min", "bin_max", "bin_contains"))
            q = a["qualifying_token_index"]
            assert isinstance(q, int) and 0 <= q < len(a["values"])
            if a["bin_min"] == -1:  # top contexts: the qualifying token is the peak
                assert a["values"][q] == max(a["values"])
        if f["activations"]:  # the converter's maxActApprox: the first context's peak
            assert max(f["activations"][0]["values"]) == pytest.approx(
                store.feature(sae, i).max_activation, abs=6e-4)
    settings = json.loads((_folder(exported) / F.RUN_SETTINGS_FILE).read_text())
    args = settings[F.MARKER]["converter_args"]
    assert args == {"model-name": "tiny-gemma3", "neuronpedia-source-set-id": "test-res-96",
                    "layer-num": 2, "hook-point": "hook_resid_post",
                    "prompts-huggingface-dataset-path": args["prompts-huggingface-dataset-path"],
                    "n-prompts-total": int(store.manifest["tokens"]) // 32,
                    "n-tokens-in-prompt": 32}
    assert args["hook-point"] in HOOK_POINTS
    assert settings[F.MARKER]["logit_histograms"] is True


def test_head_allocation_is_each_heads_share_of_the_decoder_norm():
    rng = np.random.default_rng(0)
    row = rng.standard_normal(4 * 16)
    want = [float(np.sqrt((row[h * 16:(h + 1) * 16] ** 2).sum())) for h in range(4)]
    got = F.head_allocation(row, 4)
    assert got == pytest.approx([x / sum(want) for x in want], rel=1e-12)
    assert F.converter_hook_point("blocks.7.attn.hook_z") == "hook_z"


def test_explanations_export_as_neuronpedias_rows_and_import_back(store_path, tmp_path):
    """explanations/batch-N.jsonl.gz: Neuronpedia's Explanation rows for the converter's
    source id, which `scope labels import` reads back unchanged."""
    import gzip

    from scope.explore.neuronpedia import import_explanations
    from scope.store import labels as L

    path = tmp_path / "store"
    shutil.copytree(store_path, path)
    store = scope.open_store(path)
    sae = store.sae_names[0]
    labels = L.Labels(path)
    want = {i: L.Explanation(f"text <{i}> & more", 0.5 + i / 400, "tiny", "v2")
            for i in range(0, 96, 7)}
    labels.update(sae, want)
    labels.save()
    out = tmp_path / "np"
    export_neuronpedia(store, out, logit_histograms=False, progress=False)
    folder = _folder(out)
    files = sorted((folder / F.EXPLANATIONS_DIR).iterdir())
    assert [p.name for p in files] == ["batch-0.jsonl.gz"]
    rows = [json.loads(x) for x in gzip.decompress(files[0].read_bytes()).splitlines()]
    assert [r["index"] for r in rows] == [str(i) for i in sorted(want)]
    for r in rows:
        assert set(r) == EXPLANATION_KEYS
        assert (r["modelId"], r["layer"]) == ("tiny-gemma3", "2-test-res-96")
        assert r["description"] == want[int(r["index"])].text
        assert r["typeName"] is None and r["explanationModelName"] is None  # Neuronpedia's FKs
        assert f"detection {want[int(r['index'])].score:.3f}" in r["notes"]
    assert len({r["id"] for r in rows}) == len(rows)
    settings = json.loads((folder / F.RUN_SETTINGS_FILE).read_text())[F.MARKER]
    assert settings["explanations"] == len(want)
    assert settings["logit_histograms"] is False and "not computed" in settings[
        "logit_histograms_absent"]
    copy = tmp_path / "copy"
    shutil.copytree(store_path, copy)
    report = import_explanations(folder / F.EXPLANATIONS_DIR, scope.open_store(copy))
    assert report.imported == {sae: len(want)}
    got = L.Labels(copy).for_sae(sae)
    assert {i: e.text for i, e in got.items()} == {i: e.text for i, e in want.items()}
