"""Neuronpedia's own converter on scope's export: the store half (build + export, then check).

`benchmarks/neuronpedia_convert.sh` drives it: `build WORK` extracts a tiny store (random tiny
Gemma 3, a residual JumpReLU SAE with a Neuronpedia id and an attention `hook_z` one without,
a few explanations) and exports it with `scope export neuronpedia`; the shell script then runs
Neuronpedia's unchanged `convert-saedashboard-to-neuronpedia-export.py` on each SAE folder;
`check WORK` reads what the converter wrote (`features/`, `activations/` JSONL.gz) and compares
every row with the store read through its own API, then imports the exported explanations back
into a copy of the store. Prints what it converted; exits 1 on any mismatch. With DEMO_TOKENS
the store is instead the one `scope demo` builds, that many tokens long.

    python benchmarks/neuronpedia_convert.py build /tmp/npc [DEMO_TOKENS]
    python benchmarks/neuronpedia_convert.py check /tmp/npc
"""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

RESID, ATTN = "blocks.2.hook_resid_post", "blocks.1.attn.hook_z"
D_SAE = 96


def build_demo(work: Path, tokens: int):
    """The store `scope demo` builds (bundled Gemma 3 270M + the demo SAE), `tokens` long."""
    from scope.cli.dashboard import build_demo_store

    return build_demo_store(work / "store", tokens=tokens, device="cpu")  # reused when complete


def build_tiny(work: Path):
    """Tiny random Gemma 3; a residual SAE with a Neuronpedia id, an attn.hook_z one without."""
    import torch
    from builders import tiny_gemma3_dir
    from explorer_helpers import corpus_texts
    from sae_builders import jumprelu_weights

    import scope
    from scope.pipeline.corpus import Corpus
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = scope.load_model(str(tiny_gemma3_dir(work / "tiny-gemma3")), device="cpu",
                             dtype=torch.float32)
    d_z = model.cfg.n_heads * model.cfg.d_head
    saes, specs = [], []
    for k, (hook, d_in, npid) in enumerate([(RESID, model.cfg.d_model,
                                             "tiny-gemma3/2-test-res-96"), (ATTN, d_z, None)]):
        w = jumprelu_weights(d_in, D_SAE, seed=3 + k)
        w["threshold"][-4:] = 1e6  # dead features: Neuronpedia still gets their pages
        cfg = SAEConfig(d_in=d_in, d_sae=D_SAE, hook_name=hook, neuronpedia_id=npid)
        JumpReLUSAE(cfg, **{n: torch.tensor(v) for n, v in w.items()}).save(work / f"sae{k}")
        saes.append(scope.load_sae(str(work / f"sae{k}"), model=model))
        specs.append(str(work / f"sae{k}"))
    return scope.extract(model, saes, Corpus(texts=corpus_texts()), str(work / "store"),
                         tokens=3072, ctx=32, batch_size=8, progress=False, sae_specs=specs)


def build(work: Path, demo_tokens: int = 0) -> None:
    """Build the store (tiny, or the demo's), give it a few explanations, export it."""
    import scope
    from scope.explore.neuronpedia import export_neuronpedia
    from scope.store import labels as L

    for old in ("export", "tiny-gemma3", "sae0", "sae1") + (() if demo_tokens else ("store",)):
        shutil.rmtree(work / old, ignore_errors=True)  # a rerun starts afresh
    store = build_demo(work, demo_tokens) if demo_tokens else build_tiny(work)
    labels = L.Labels(store.path)
    for name in store.sae_names:
        labels.update(name, {i: L.Explanation(f"{name} feature {i} <b>&", 0.5 + i / 200,
                                              "tiny-explainer", "v2") for i in (0, 5, 17)})
    labels.save()
    export_neuronpedia(scope.open_store(store.path), work / "export", batch_size=128,
                       progress=False)
    for folder in sorted((work / "export").iterdir()):
        print("EXPORT", folder)  # the shell script reads these lines


def _jsonl_gz(folder: Path) -> list[dict]:
    rows = []
    for p in sorted(folder.glob("*.jsonl.gz")):
        rows += [json.loads(line) for line in gzip.decompress(p.read_bytes()).splitlines()]
    return rows


def _close(a, b, tol) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def check_sae(store, folder: Path, converted: Path) -> list[str]:
    """Mismatches between what the converter wrote for one SAE and the store."""
    settings = json.loads((folder / "run_settings.json").read_text())
    mark, bad = settings["scope_export"], []
    name, args = mark["sae"], mark["converter_args"]
    src = converted / args["model-name"] / f"{args['layer-num']}-{args['neuronpedia-source-set-id']}"
    feats = {int(f["index"]): f for f in _jsonl_gz(src / "features")}
    acts = _jsonl_gz(src / "activations")
    d_sae, n_vocab = store.n_features(name), len(store.vocab)
    if sorted(feats) != list(range(d_sae)):
        bad.append(f"{name}: features {sorted(feats)[:5]}... are not 0..{d_sae - 1}")
    by_index: dict[int, list] = {}
    for a in acts:
        by_index.setdefault(int(a["index"]), []).append(a)
    from safetensors.numpy import load_file

    spec = Path(store.sae_info(name)["spec"])
    spec = spec if spec.is_dir() else ROOT / "scope" / "bundled" / "demo_sae"  # "bundled"
    W_dec = load_file(spec / "sae_weights.safetensors")["W_dec"].astype("float32")
    heads = W_dec.shape[1] // 16 if args["hook-point"] == "hook_z" else 0  # tiny Gemma: d_head 16
    worst = 0.0
    for i, f in feats.items():
        feat = store.feature(name, i)
        where = f"{name} feature {i}"
        if abs(f["frac_nonzero"] - feat.density) > 5e-6:
            bad.append(f"{where}: frac_nonzero {f['frac_nonzero']} != density {feat.density}")
        want_max = float(feat.max_activation) if feat.firing_count else 0.0
        worst = max(worst, abs(f["maxActApprox"] - want_max))
        if abs(f["maxActApprox"] - want_max) > 1e-3:
            bad.append(f"{where}: maxActApprox {f['maxActApprox']} != max {want_max}")
        if sum(f["freq_hist_data_bar_heights"]) != int(feat.firing_count):
            bad.append(f"{where}: frequency histogram holds {sum(f['freq_hist_data_bar_heights'])}"
                       f" firings, the store {feat.firing_count}")
        if sum(f["logits_hist_data_bar_heights"]) != n_vocab:
            bad.append(f"{where}: logit histogram holds {sum(f['logits_hist_data_bar_heights'])}"
                       f" logits, the vocabulary {n_vocab}")
        if f["pos_str"] != [t for t, _ in feat.top_logits] or not _close(
                f["pos_values"], [v for _, v in feat.top_logits], 6e-4):
            bad.append(f"{where}: top logits differ")
        w = W_dec[i].astype("float64")
        top = sorted(range(len(w)), key=lambda k: -w[k])[:3]
        if f["neuron_alignment_indices"] != top or not _close(f["neuron_alignment_values"],
                                                              list(w[top]), 6e-4):
            bad.append(f"{where}: neuron alignment differs from the SAE's decoder row")
        if heads:
            norms = [float((w[h * 16:(h + 1) * 16] ** 2).sum() ** 0.5) for h in range(heads)]
            if not _close(f["decoder_weights_dist"], [x / sum(norms) for x in norms], 1e-6):
                bad.append(f"{where}: decoder_weights_dist differs from the per-head norms")
        if f["hookName"] != f"blocks.{args['layer-num']}.{args['hook-point']}":
            bad.append(f"{where}: hookName {f['hookName']}")
        rows = by_index.get(i, [])
        top = [a for a in rows if a["binMin"] == -1]
        if [a["tokens"] for a in top] != [x.tokens[1:] for x in feat.top_examples[:20]]:
            bad.append(f"{where}: top contexts' tokens differ from the store's")
        for a, x in zip(top, feat.top_examples, strict=False):
            if not _close(a["values"], list(x.activations[1:]), 6e-4) or abs(
                    a["maxValue"] - x.max_activation) > 6e-4:
                bad.append(f"{where}: a top context's values differ from the store's")
            if a["values"][a["qualifyingTokenIndex"]] != a["maxValue"]:
                bad.append(f"{where}: qualifying token is not the context's peak")
        for a in rows:
            if a["binMin"] != -1 and not (a["binMin"] - 1e-3 <= a["values"][
                    a["qualifyingTokenIndex"]] <= a["binMax"] + 1e-3):
                bad.append(f"{where}: an interval context's qualifying token is outside its bin")
    print(f"  {name}: {len(feats)} features ({sum(1 for f in feats.values() if not f['maxActApprox'])}"
          f" dead), {len(acts)} activation rows, max |maxActApprox - store max| {worst:.1e}, "
          f"logit histograms {'yes' if mark['logit_histograms'] else 'no'}")
    return bad


def check_explanations(store, folder: Path, work: Path) -> list[str]:
    """The exported explanation rows import back (scope's own Neuronpedia import) unchanged."""
    from scope.explore.neuronpedia import import_explanations
    from scope.store import labels as L
    from scope.store import open_store

    name = json.loads((folder / "run_settings.json").read_text())["scope_export"]["sae"]
    want = L.Labels(store.path).for_sae(name)
    copy = work / f"reimport-{folder.name}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(store.path, copy)
    (copy / L.LABELS_FILE).unlink()
    sid = json.loads(gzip.decompress(next((folder / "explanations").glob("*.gz")).read_bytes())
                     .splitlines()[0])
    again = open_store(copy)
    import_explanations(folder / "explanations", again, neuronpedia_id=f"{sid['modelId']}/"
                        f"{sid['layer']}", sae=name)
    got = L.Labels(copy).for_sae(name)
    print(f"  {name}: {len(got)} explanations round-trip through Neuronpedia's rows")
    return [] if {i: e.text for i, e in got.items()} == {i: e.text for i, e in want.items()} else [
        f"{name}: explanations differ after the round trip"]


def _strip(row: dict) -> dict:
    """A row without what differs run to run (`id`, `createdAt`) or between the two tools by
    their own choice: without a vector, Neuronpedia's script sets `vectorDefaultSteerStrength`
    to maxActApprox whenever the key `vector` exists, SAEDashboard's only when it is non-empty."""
    skip = {"id", "createdAt"} | (set() if row.get("hasVector") else {
        "vectorDefaultSteerStrength"})
    return {k: v for k, v in row.items() if k not in skip}


def check_same(work: Path) -> list[str]:
    """SAEDashboard's in-process exporter, where it ran, wrote the rows Neuronpedia's did."""
    other = work / "converted-saedashboard" / "exports"
    if not other.is_dir():
        return []
    bad = []
    for src in sorted(p for p in (work / "converted" / "exports").glob("*/*") if p.is_dir()):
        twin = other / src.relative_to(work / "converted" / "exports")
        differ = [kind for kind in ("features", "activations")
                  if [_strip(r) for r in _jsonl_gz(src / kind)]
                  != [_strip(r) for r in _jsonl_gz(twin / kind)]]
        bad += [f"{src.name}: SAEDashboard's exporter wrote other {kind} rows" for kind in differ]
        print(f"  {src.name}: SAEDashboard's export_neuronpedia_dashboards wrote "
              + (f"other {', '.join(differ)} rows" if differ else "the same rows"))
    return bad


def check(work: Path) -> int:
    from scope.store import open_store

    store = open_store(work / "store")
    bad = []
    for folder in sorted((work / "export").iterdir()):
        bad += check_sae(store, folder, work / "converted" / "exports")
        bad += check_explanations(store, folder, work)
    bad += check_same(work)
    for line in bad[:20]:
        print("MISMATCH", line)
    print("converter output matches the store" if not bad else f"{len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("build", "check"):
        sys.exit(__doc__)
    w = Path(sys.argv[2])
    w.mkdir(parents=True, exist_ok=True)
    sys.exit(build(w, int(sys.argv[3]) if len(sys.argv) == 4 else 0) if sys.argv[1] == "build"
             else check(w))
