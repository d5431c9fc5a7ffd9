"""Export a store for Neuronpedia: SAEDashboard batch folders, or the client's upload payloads.

`export_neuronpedia` writes, per SAE, the folder SAEDashboard 0.8.0's `NeuronpediaRunner` writes
(`scope.explore.np_format` spells it): every feature `0..d_sae-1`, dead ones included, in
`batch-N.json` files of 128, plus `skipped_indexes.json` (empty: nothing is skipped) and
`run_settings.json`. That folder is what Neuronpedia's `convert-saedashboard-to-neuronpedia-
export.py` reads (`run_settings.json`'s `scope_export.converter_args` holds the options it
needs to match); the store's explanations go beside it in `explanations/batch-N.jsonl.gz`,
Neuronpedia's own explanation rows, which its importer reads next to the converter's output.
With `format="upload"` it writes instead `upload-N.json` files, each the JSON body the
`neuronpedia` client's `Source.upload_batch` posts (camelCase, at most 128 features), so a user
with a key can push them.

Each SAE folder is built beside its target and renamed into place, so a re-export with another
batch size leaves no stale batch file, and an interrupted one leaves the old folder. `--out`
inside the store is refused, and so is a folder scope did not write.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from scope.base.atomic import atomic_folder
from scope.base.version import __version__
from scope.errors import ExportError
from scope.explore import np_format as F

log = logging.getLogger(__name__)

FORMATS = ("saedashboard", "upload")
UPLOAD_NAME = "upload-{}.json"
MAX_UPLOAD_FEATURES = 128  # neuronpedia.requests.feature_request.MAX_FEATURES_PER_BATCH


def _dump(obj, path: Path) -> None:
    try:
        path.write_text(json.dumps(obj, allow_nan=False, ensure_ascii=False), encoding="utf-8")
    except ValueError as exc:  # a NaN that slipped past the checks
        raise ExportError(f"{path.name}: a non-finite number cannot be exported ({exc})") from None


def _check_out(store, out: Path) -> Path:
    store_root = Path(store.path).resolve()
    target = out.resolve()
    if target == store_root or target.is_relative_to(store_root):
        raise ExportError(f"--out {out} is inside the store {store.path}; the export would mix "
                          "with the store's files: choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file; choose a folder")
    return out


def _own_folder(folder: Path) -> None:
    """Refuse to replace `folder` unless a previous scope export wrote it."""
    if not folder.exists():
        return
    settings = folder / F.RUN_SETTINGS_FILE
    try:
        mine = F.MARKER in json.loads(settings.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        mine = False
    if not mine or not folder.is_dir():
        raise ExportError(f"{folder} exists and was not written by `scope export`; refusing to "
                          "replace it: choose another --out or move it away")


def residual_logits(model, sae, features: list[int]) -> np.ndarray | None:
    """Each feature's effect on every vocabulary logit, as SAEDashboard computes it.

    A decoder that writes to the residual stream: `W_dec[f] @ diag(gain) @ W_U` (the store's
    logit tables' product). An attention SAE on `blocks.L.attn.hook_z`: its direction (all
    heads' `z`, flattened) is first mapped to the residual stream through layer L's `W_O`,
    `sum_h z_h @ W_O[h]`. Any other site: None (the export then says why the histogram is
    empty).

    Returns:
        `[len(features), d_vocab]` float32, or None.
    """
    import torch

    from scope.explore.replay import logit_vectors
    from scope.pipeline.decoder_tables import final_norm_gain

    cfg = model.cfg
    hook = sae.cfg.hook_name_out or sae.cfg.hook_name
    W_dec = sae.W_dec.detach()
    if not (hook.endswith("attn.hook_z") and W_dec.shape[1] == cfg.n_heads * cfg.d_head):
        return logit_vectors(model, sae, features)
    W_O = model.blocks[int(hook.split(".")[1])].attn.W_O.detach()  # [n_heads, d_head, d_model]
    W_U = model.W_U.detach()
    W_U = W_U[:, : min(W_U.shape[1], len(model.tokenizer))]
    z = W_dec[torch.as_tensor(features, dtype=torch.long)].to(W_O.device, W_O.dtype)
    d = torch.einsum("fhd,hdm->fm", z.view(len(z), cfg.n_heads, cfg.d_head), W_O)
    gain = final_norm_gain(model)
    if gain is not None:
        d = d * gain.to(d.device, d.dtype)
    return (d.to(W_U.dtype) @ W_U).float().cpu().numpy()


def _weight_tables(store, name: str, features, logits: bool) -> tuple[dict, dict, str]:
    """What the SAE's weights give each feature: ({feature: (bar_values, bar_heights)} of the
    logit effects (50 equal bins), {feature: neuron alignment [+ decoder_weights_dist]}, and
    why the logit histograms are absent, "" when present). Nothing without `logits`: that
    skips loading the model."""
    from scope.explore.replay import load_store_model

    if not logits:
        return {}, {}, "not computed: --no-logit-histograms (the model was not loaded)"
    try:
        model, sae = load_store_model(store, name)
    except Exception as exc:  # noqa: BLE001 - an optional extra; the export says what it lacks
        log.warning("%s: no logit histograms nor neuron alignment (cannot load the store's "
                    "model and SAE: %s)", name, exc)
        return {}, {}, f"not computed: the store's model and SAE could not be loaded ({exc})"
    import torch

    hists, weights = {}, {}
    hook = sae.cfg.hook_name_out or sae.cfg.hook_name
    heads = model.cfg.n_heads if hook.endswith("attn.hook_z") else 0
    with torch.no_grad():
        W_dec = sae.W_dec.detach().float().cpu().numpy()
        for i in features:
            weights[int(i)] = F.neuron_alignment(W_dec[int(i)]) | (
                {"decoder_weights_dist": F.head_allocation(W_dec[int(i)], heads)} if heads else {})
        for start in range(0, len(features), 256):
            chunk = [int(i) for i in features[start:start + 256]]
            vec = residual_logits(model, sae, chunk)
            if vec is None:
                return {}, weights, (f"absent: the SAE's output site {hook} is not in the "
                                     "residual stream (nor attn.hook_z, which is mapped through "
                                     "W_O), so its directions have no logit effect")
            for i, row in zip(chunk, vec, strict=True):
                hists[i] = F.hist_equal_width(row)
    return hists, weights, ""


def export_neuronpedia(store, out: str | os.PathLike, *, sae: str | None = None,
                       format: str = "saedashboard", batch_size: int = F.N_FEATURES_PER_BATCH,
                       logit_histograms: bool = True, allow_partial: bool = False,
                       progress: bool = True) -> list[Path]:
    """Write the store's features for Neuronpedia.

    Args:
        store: an open store.
        out: output folder; one subfolder per SAE (SAEDashboard's name,
            `<model>_<set>_<hook>_<d_sae>`).
        sae: export this SAE only (default: all).
        format: "saedashboard" (batch-N.json, for Neuronpedia's converter) or "upload"
            (upload-N.json bodies of the client's `upload_batch`).
        batch_size: features per file (1-128 for uploads).
        logit_histograms: load the store's model and SAE to compute the logit histograms and
            the neuron alignment tables (else both are left empty).
        allow_partial: export a store whose extraction has not finished.
        progress: show a progress bar.

    Returns:
        The batch or upload files written.
    """

    if format not in FORMATS:
        raise ExportError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    if not 1 <= int(batch_size) <= (MAX_UPLOAD_FEATURES if format == "upload" else 1 << 20):
        raise ExportError(f"--batch-size {batch_size}: give 1-{MAX_UPLOAD_FEATURES} for uploads "
                          "(the client's limit), a positive number otherwise")
    out = _check_out(store, Path(out))
    manifest = store.manifest
    if manifest.get("status") != "complete" and not allow_partial:
        raise ExportError(f"store {store.path} is partial (its extraction has not finished); "
                          "finish it, or pass --allow-partial to export what it holds")
    names = [sae] if sae else store.sae_names
    for name in names:
        store.sae_info(name)  # unknown name: a StoreError with suggestions
    ctx = int(manifest.get("ctx") or 0)
    total_tokens = int(manifest.get("tokens") or 0)
    n_prompts = total_tokens // max(1, ctx)
    corpus = manifest.get("corpus")
    dataset = str(corpus.get("source") or corpus.get("name") or "") if isinstance(
        corpus, dict) else str(corpus or "")
    created = not out.exists()
    try:
        return _export(store, out, names, format, batch_size, logit_histograms, progress, ctx,
                       total_tokens, n_prompts, dataset)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # leave no trace of an export that wrote nothing
        raise


def _export(store, out, names, format, batch_size, logit_histograms, progress, ctx,
            total_tokens, n_prompts, dataset) -> list[Path]:
    from tqdm.auto import tqdm

    written = []
    for name in names:
        info = store.sae_info(name)
        # an SAE saved without its model's name takes the store's model
        model_id, layer, sae_set, suffix = F.source_parts(
            {**info, "model_name": info.get("model_name") or (
                store.manifest.get("model") or {}).get("name")}, name)
        d_sae = store.n_features(name)
        folder = out / F.folder_name(model_id, sae_set, str(info.get("hook_name", "")), d_sae,
                                     suffix)
        _own_folder(folder)
        features = np.arange(d_sae)
        hists, weights, why = _weight_tables(store, name, features, logit_histograms)
        bar = tqdm(total=d_sae, desc=f"export {name}", unit="feature", disable=not progress)
        files = []
        with atomic_folder(folder, replace=True) as tmp:
            for b, start in enumerate(range(0, d_sae, batch_size)):
                feats = [F.feature_record(store.feature(name, int(i)), n_prompts=n_prompts,
                                          ctx=ctx, dataset=dataset, total_tokens=total_tokens,
                                          logit_hist=hists.get(int(i)),
                                          weights=weights.get(int(i)))
                         for i in features[start:start + batch_size]]
                if format == "upload":
                    body = upload_payload(model_id, f"{layer}-{sae_set}"
                                          + (f"__{suffix}" if suffix else ""), feats,
                                          _explanations(store, name))
                    fname = UPLOAD_NAME.format(b)
                else:
                    body = {"model_id": model_id, "layer": layer, "sae_set": sae_set,
                            "sae_id_suffix": suffix, "features": feats}
                    fname = F.BATCH_NAME.format(b)
                _dump(body, tmp / fname)
                files.append(folder / fname)
                bar.update(len(feats))
            n_expl = 0
            if format == "saedashboard":
                _dump({"model_id": model_id, "layer": str(layer), "sae_set": sae_set,
                       "log_sparsity": F.SPARSITY_THRESHOLD, "skipped_indexes": []},
                      tmp / F.SKIPPED_FILE)
                n_expl = _write_explanations(tmp, _explanations(store, name), model_id,
                                             F.source_id(layer, sae_set, suffix))
            _dump(_run_settings(store, name, info, model_id, layer, sae_set, suffix, folder,
                                ctx, n_prompts, dataset, batch_size, format, why, n_expl),
                  tmp / F.RUN_SETTINGS_FILE)
        bar.close()
        written += files
    return written


def _write_explanations(folder: Path, explanations: dict, model_id: str, source: str) -> int:
    """`explanations/batch-N.jsonl.gz` in Neuronpedia's `Explanation` rows (what its importer
    reads beside the converter's features/ and activations/); the converter itself ignores
    them (it reads only `batch-*`), so copy the folder into its output. Returns the rows."""
    import gzip
    from datetime import datetime, timezone

    if not explanations:
        return 0
    creator = os.environ.get("DEFAULT_CREATOR_ID") or F.SEED_CREATOR_ID
    now = datetime.now(timezone.utc).isoformat()
    rows = F.explanation_rows(explanations, model_id, source, creator, now)
    (folder / F.EXPLANATIONS_DIR).mkdir()
    for b, start in enumerate(range(0, len(rows), F.N_EXPLANATIONS_PER_BATCH)):
        lines = "".join(json.dumps(r, allow_nan=False, ensure_ascii=False) + "\n"
                        for r in rows[start:start + F.N_EXPLANATIONS_PER_BATCH])
        (folder / F.EXPLANATIONS_DIR / F.EXPLANATION_BATCH.format(b)).write_bytes(
            gzip.compress(lines.encode("utf-8"), mtime=0))
    return len(rows)


def _explanations(store, name: str) -> dict:
    from scope.store.labels import labels_for

    return labels_for(store.path).for_sae(name)


def _run_settings(store, name, info, model_id, layer, sae_set, suffix, folder, ctx, n_prompts,
                  dataset, batch_size, format, why_no_logits, n_explanations) -> dict:
    """SAEDashboard's `NeuronpediaRunnerConfig` fields with this export's values, plus ours."""
    return {
        "sae_set": sae_set, "sae_path": info.get("spec") or "", "outputs_dir": str(folder),
        "np_sae_id_suffix": suffix, "np_set_name": None, "from_local_sae": True,
        "sparsity_threshold": F.SPARSITY_THRESHOLD, "huggingface_dataset_path": dataset,
        "n_prompts_total": n_prompts, "n_tokens_in_prompt": ctx,
        "n_prompts_in_forward_pass": int((store.manifest.get("config") or {}).get(
            "batch_size") or 0),
        "n_features_at_a_time": int(batch_size), "quantile_feature_batch_size": int(batch_size),
        "start_batch": 0, "end_batch": None, "n_quantiles": F.N_QUANTILES,
        "top_acts_group_size": F.TOP_GROUP_SIZE, "quantile_group_size": F.QUANTILE_GROUP_SIZE,
        "use_dfa": False, "model_dtype": "", "sae_dtype": "", "model_id": model_id,
        "layer": layer, "sae_device": "cpu", "activation_store_device": "cpu",
        "model_device": "cpu", "model_n_devices": 1, "use_wandb": False,
        "shuffle_tokens": False, "prefix_str": None, "suffix_str": None,
        "ignore_positions": [0], "prepend_bos": True,
        "ignore_high_activation_norm_multiple": None,
        "hf_model_path": (store.manifest.get("model") or {}).get("spec"),
        "use_transcoder": info.get("kind") == "transcoder", "use_skip_transcoder": False,
        "use_clt": False, "clt_layer_idx": None, "clt_dtype": "", "clt_weights_filename": "",
        "sae_converter_name": None,
        F.MARKER: {"tool_version": __version__, "store": str(store.path), "sae": name,
                   "format": format, "store_status": store.manifest.get("status"),
                   "logit_histograms": not why_no_logits,
                   "logit_histograms_absent": why_no_logits or None,
                   "explanations": n_explanations,
                   "converter_args": F.converter_args(
                       model_id, layer, sae_set, str(info.get("hook_name", "")), dataset,
                       n_prompts, ctx),
                   "approximations": [
                       "freq_hist rebinned from the store's log-binned counts",
                       "interval bin_contains from the same counts",
                       "interval contexts chosen among the store's kept contexts"]},
    }


def upload_payload(model_id: str, source: str, feats: list[dict], explanations: dict) -> dict:
    """The body `neuronpedia`'s `FeatureRequest.upload_batch` posts for these features."""
    if not 0 < len(feats) <= MAX_UPLOAD_FEATURES:
        raise ExportError(f"an upload holds 1-{MAX_UPLOAD_FEATURES} features, not {len(feats)}")
    rows = []
    for f in feats:
        i = int(f["feature_index"])
        acts = []
        for a in f["activations"]:
            top = a["bin_contains"] == -1
            acts.append({"tokens": a["tokens"], "values": a["values"],
                         "quantileMax": None if top else a["bin_max"],
                         "quantileMin": None if top else a["bin_min"],
                         "quantileFraction": None if top else a["bin_contains"]})
        e = explanations.get(i)
        rows.append({
            "index": i, "density": f["frac_nonzero"], "activations": acts,
            "explanations": [] if e is None else [{"text": e.text, "methodName": e.source,
                                                   "modelName": e.explainer or None}],
            "topLogits": [{"token": t, "value": v} for t, v in zip(f["pos_str"], f["pos_values"],
                                                                    strict=True)],
            "bottomLogits": [{"token": t, "value": v}
                             for t, v in zip(f["neg_str"], f["neg_values"], strict=True)],
        })
    return {"modelId": model_id, "source": source, "features": rows}


def read_export(folder: str | os.PathLike) -> dict[int, dict]:
    """Features of an exported SAE folder, by index (reads every `batch-*.json`)."""
    out = {}
    for path in sorted(Path(folder).glob("batch-*.json")):
        for f in json.loads(path.read_text(encoding="utf-8"))["features"]:
            out[int(f["feature_index"])] = f
    return out
