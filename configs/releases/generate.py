"""Generate the release registry (scope/saes/registry/*.json) from a release list.

Usage:
    python configs/releases/generate.py path/to/gemma_scope_releases.json

Input: `{release: {repo_id, model, format, kind, saes: [{id, path, l0?, neuronpedia?}]}}`
Output: `index.json`
(one summary row per release) and one `<release>.json` per release with every SAE's id, path,
layer, width, d_sae, l0 label, TransformerLens hook(s), d_in and Neuronpedia id.

Everything not in the input is derived from the repo name and path as documented in
REFERENCE.md: site and hook from the repo suffix (Gemma Scope 1) or the path's first folder
(Gemma Scope 2); d_in from the model's published config. Gemma Scope 2 widths are read again
from config.json and the safetensors header when a file is loaded, so a wrong guess here fails
loudly there.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "scope" / "saes" / "registry"
FORMAT_VERSION = 1
INDEX_FILENAME = "index.json"

WIDTHS = {"4k": 2**12, "16k": 2**14, "32k": 2**15, "65k": 2**16, "131k": 2**17, "262k": 2**18,
          "524k": 2**19, "1m": 2**20}

# model size -> (d_model, attention z width n_heads*d_head), from the models' published configs
GEMMA2 = {"2b": (2304, 8 * 256), "9b": (3584, 16 * 256), "27b": (4608, 32 * 128)}
GEMMA3 = {"270m": (640, 4 * 256), "1b": (1152, 4 * 256), "4b": (2560, 8 * 256),
          "12b": (3840, 16 * 256), "27b": (5376, 32 * 128)}

# site -> (TL hook template in, hook template out or None, reads attention z?)
GS1_SITES = {
    "res": ("blocks.{L}.hook_resid_post", None, False),
    "mlp": ("blocks.{L}.hook_mlp_out", None, False),
    "att": ("blocks.{L}.attn.hook_z", None, True),
    # Gemma Scope 1 transcoders read the normalised MLP input *without* the norm gain.
    "transcoders": ("blocks.{L}.ln2.hook_normalized", "blocks.{L}.hook_mlp_out", False),
}
GS2_SITES = {
    "resid_post": ("blocks.{L}.hook_resid_post", None, False),
    "mlp_out": ("blocks.{L}.hook_mlp_out", None, False),
    "attn_out": ("blocks.{L}.attn.hook_z", None, True),
    # Gemma Scope 2 transcoders read pre_feedforward_layernorm's output, i.e. *with* the gain.
    "transcoder": ("blocks.{L}.ln2.hook_normalized_with_gain", "blocks.{L}.hook_mlp_out", False),
}

GS1_PATH = re.compile(r"(?:layer_(?P<layer>\d+)|embedding)/width_(?P<width>\w+)/average_l0_(?P<l0>\d+)")
GS2_PATH = re.compile(r"(?P<site>\w+?)(?P<all>_all)?/layer_(?P<layer>\d+)_width_(?P<width>\w+)"
                      r"_l0_(?P<size>small|medium|big)(?P<affine>_affine)?(?P<seed>_seed_\d+)?")

NOTES = {
    "embedding": "reads unscaled embedding rows; TransformerLens hook_embed is multiplied by "
                 "sqrt(d_model), so divide by it before encoding",
    "gs2_d_in": "d_in derived from the Gemma 3 config, not checked against released files; "
                "loading reads the true shapes from config.json and the safetensors header",
}


def _release_entry(name: str, rel: dict, canonical_np: dict[tuple[str, str], str]) -> dict:
    fmt = rel["format"]
    repo = rel["repo_id"]
    model = rel["model"]
    notes: list[str] = []
    if fmt == "gemma-scope-1":
        m = re.fullmatch(r"google/gemma-scope-(\d+b)-(pt|it)-(\w+)", repo)
        assert m, repo
        size, variant, site = m.groups()
        d_model, d_att = GEMMA2[size]
        if variant == "it" and not model.endswith("-it"):
            # the shared list names the base model for gemma-scope-9b-it-res; the SAEs are
            # trained on the instruction-tuned model (model card, and its -canonical twin).
            notes.append(f"model corrected from {model!r} (source list) to the -it model")
            model = f"{model}-it"
    else:
        m = re.fullmatch(r"google/gemma-scope-2-(\d+[mb])-(pt|it)", repo)
        assert m, repo
        size = m.group(1)
        d_model, d_att = GEMMA3[size]
        site = None
        notes.append(NOTES["gs2_d_in"])
    saes = []
    sites = set()
    for s in rel["saes"]:
        path = s["path"]
        if fmt == "gemma-scope-1":
            pm = GS1_PATH.fullmatch(path)
            assert pm, (name, path)
            layer = int(pm["layer"]) if pm["layer"] is not None else None
            width, l0_label = pm["width"], f"average_l0_{pm['l0']}"
            l0 = s.get("l0", int(pm["l0"]))
            hook_t, hook_out_t, att = GS1_SITES[site]
            row_site = site if layer is not None else "embedding"
            affine = False
        else:
            pm = GS2_PATH.fullmatch(path)
            assert pm, (name, path)
            layer, width, l0_label = int(pm["layer"]), pm["width"], pm["size"]
            l0 = s.get("l0")
            row_site = pm["site"]
            hook_t, hook_out_t, att = GS2_SITES[row_site]
            affine = bool(pm["affine"])
        sites.add(row_site + ("_all" if fmt != "gemma-scope-1" and pm["all"] else ""))
        if layer is None:
            hook, hook_out = "hook_embed", None
            if NOTES["embedding"] not in notes:
                notes.append(NOTES["embedding"])
        else:
            hook = hook_t.format(L=layer)
            hook_out = hook_out_t.format(L=layer) if hook_out_t else None
        np_id = s.get("neuronpedia") or canonical_np.get((repo, path))
        row = {"id": s["id"], "path": path, "layer": layer, "width": width,
               "d_sae": WIDTHS[width], "l0": l0, "l0_label": l0_label, "hook_name": hook}
        if hook_out:
            row["hook_name_out"] = hook_out
        row["d_in"] = d_att if att else d_model
        if hook_out:
            row["d_out"] = d_model
        if affine:
            row["affine"] = True
        row["neuronpedia"] = np_id
        saes.append(row)
    kind = rel["kind"]
    return {
        "format_version": FORMAT_VERSION,
        "name": name,
        "repo_id": repo,
        "model": model,
        "format": fmt,
        "kind": kind,
        "site": ",".join(sorted(sites)),
        "file": "params.npz" if fmt == "gemma-scope-1" else "params.safetensors",
        "notes": notes,
        "saes": saes,
    }


def _dump_release(entry: dict) -> str:
    head = {k: v for k, v in entry.items() if k != "saes"}
    lines = json.dumps(head, indent=1)[:-2]  # reopen the object to append saes one per line
    rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in entry["saes"])
    return f'{lines},\n "saes": [\n  {rows}\n ]\n}}\n'


def generate(source: Path, out_dir: Path) -> int:
    """Write index.json and one file per release into out_dir; return the number of releases."""
    data = json.loads(source.read_text())
    canonical_np = {}  # (repo, path) -> Neuronpedia id of the canonical SAE stored at that path
    for rel in data.values():
        for s in rel["saes"]:
            if s["id"].endswith("/canonical") and s.get("neuronpedia"):
                canonical_np[(rel["repo_id"], s["path"])] = s["neuronpedia"]
    index = {}
    for name in sorted(data):
        entry = _release_entry(name, data[name], canonical_np)
        (out_dir / f"{name}.json").write_text(_dump_release(entry))
        index[name] = {k: entry[k] for k in ("repo_id", "model", "format", "kind", "site")}
        index[name]["n_saes"] = len(entry["saes"])
    (out_dir / INDEX_FILENAME).write_text(json.dumps(
        {"format_version": FORMAT_VERSION, "source": "gemma_scope_releases.json", "releases": index},
        indent=1) + "\n")
    return len(index)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python configs/releases/generate.py path/to/gemma_scope_releases.json")
    n = generate(Path(sys.argv[1]), OUT)
    print(f"wrote {n} releases to {OUT}")  # noqa: T201
