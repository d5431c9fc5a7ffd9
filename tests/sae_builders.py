"""Builders for synthetic Gemma Scope files in a temporary Hugging Face cache (reusable by any test).

    hub = offline_hub(tmp_path, monkeypatch)          # HF cache + SCOPE_CACHE under tmp_path
    tiny_registry(tmp_path, monkeypatch, ["gemma-scope-2b-pt-res"])   # widths shrunk to d_in=16
    w = jumprelu_weights(16, 32)
    add_gs1(hub, "gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71", w)
    sae = scope.load_sae("gemma-scope-2b-pt-res", "layer_20/width_16k/average_l0_71")

Files are written in the exact released layouts: Gemma Scope 1 `params.npz` (optionally
compressed) and Gemma Scope 2 `config.json` + `params.safetensors` (lowercase keys,
`affine_skip_connection`), under `hub/models--google--<name>/snapshots/<40-hex>/` with
`refs/main`, so `huggingface_hub.hf_hub_download` finds them with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

REVISION = "0123456789abcdef0123456789abcdef01234567"
REAL_REGISTRY = Path(__file__).resolve().parent.parent / "scope" / "saes" / "registry"


def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    """Point the Hugging Face cache, offline mode and SCOPE_CACHE at tmp_path; return the hub dir."""
    import huggingface_hub.constants as hf_constants

    hf_home = tmp_path / "hf"
    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    # huggingface_hub reads these at import time; patch the module constants too.
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home), raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub), raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    return hub


def hub_path(hub: Path, repo_id: str, filename: str, revision: str = REVISION) -> Path:
    """Where `filename` of `repo_id` lives in the cache (creates refs/main and the folder)."""
    repo_dir = hub / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    dest = repo_dir / "snapshots" / revision / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def tiny_registry(tmp_path: Path, monkeypatch, names: list[str], d_in: int = 16,
                  d_sae: int = 32, d_att: int | None = None) -> Path:
    """Copy the real registry with the named releases shrunk to tiny widths; activate it.

    Every SAE of those releases gets d_in (attention sites: d_att, default d_in), d_out and
    d_sae replaced, so synthetic files can be small while names, ids, paths and hooks stay real.
    """
    out = tmp_path / "releases"
    out.mkdir(exist_ok=True)
    shutil.copy(REAL_REGISTRY / "index.json", out / "index.json")
    for src in REAL_REGISTRY.glob("*.json"):
        if src.name == "index.json" or (out / src.name).exists():
            continue
        if src.stem in names:
            rel = json.loads(src.read_text())
            for s in rel["saes"]:
                s["d_in"] = (d_att or d_in) if s["hook_name"].endswith("hook_z") else d_in
                s["d_sae"] = d_sae
                if "d_out" in s:
                    s["d_out"] = d_in
            (out / src.name).write_text(json.dumps(rel))
        else:
            (out / src.name).symlink_to(src)
    monkeypatch.setenv("SCOPE_RELEASES_DIR", str(out))
    return out


def jumprelu_weights(d_in: int, d_sae: int, d_out: int | None = None, *, seed: int = 0,
                     affine: bool = False) -> dict[str, np.ndarray]:
    """Random float32 JumpReLU parameters with unit-norm decoder rows and positive thresholds."""
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    W_dec = rng.standard_normal((d_sae, d_out)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    w = {
        "W_enc": (rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": W_dec.astype(np.float32),
        "b_enc": (0.1 * rng.standard_normal(d_sae)).astype(np.float32),
        "b_dec": (0.1 * rng.standard_normal(d_out)).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }
    if affine:
        w["affine_skip"] = (0.1 * rng.standard_normal((d_in, d_out))).astype(np.float32)
    return w


def write_npz(path: Path, weights: dict[str, np.ndarray], *, compressed: bool = False) -> Path:
    """Write a Gemma Scope 1 params.npz (exact keys W_enc, W_dec, b_enc, b_dec, threshold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in weights.items() if k != "affine_skip"}
    with open(path, "wb") as fh:  # a file handle keeps numpy from appending .npz
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
    return path


def gs2_config(hook_in: str, hook_out: str, *, width: int, model_name: str,
               kind: str = "sae", affine: bool = False, l0: int = 60) -> dict:
    """A Gemma Scope 2 config.json body."""
    return {"hf_hook_point_in": hook_in, "hf_hook_point_out": hook_out, "width": width,
            "model_name": model_name, "architecture": "jump_relu", "l0": l0,
            "affine_connection": affine, "type": kind}


def write_gs2(folder: Path, weights: dict[str, np.ndarray], config: dict) -> Path:
    """Write a Gemma Scope 2 folder: config.json + params.safetensors with lowercase keys."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec",
             "threshold": "threshold", "affine_skip": "affine_skip_connection"}
    save_file({names[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()},
              str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _entry(release: str, sae_id: str) -> tuple[dict, dict]:
    import os

    folder = Path(os.environ.get("SCOPE_RELEASES_DIR", REAL_REGISTRY))
    rel = json.loads((folder / f"{release}.json").read_text())
    row = next(s for s in rel["saes"] if s["id"] == sae_id)
    return rel, row


def add_gs1(hub: Path, release: str, sae_id: str, weights: dict[str, np.ndarray], *,
            compressed: bool = False) -> Path:
    """Write `weights` as the params.npz of `release`/`sae_id` into the offline hub cache."""
    rel, row = _entry(release, sae_id)
    return write_npz(hub_path(hub, rel["repo_id"], f"{row['path']}/params.npz"), weights,
                     compressed=compressed)


_GS2_HF = {
    "resid_post": ("model.layers.{L}.output", "model.layers.{L}.output"),
    "mlp_out": ("model.layers.{L}.post_feedforward_layernorm.output",) * 2,
    "attn_out": ("model.layers.{L}.self_attn.o_proj.input",) * 2,
    "transcoder": ("model.layers.{L}.pre_feedforward_layernorm.output",
                   "model.layers.{L}.post_feedforward_layernorm.output"),
}


def add_gs2(hub: Path, release: str, sae_id: str, weights: dict[str, np.ndarray]) -> Path:
    """Write `weights` as the Gemma Scope 2 folder of `release`/`sae_id` into the hub cache."""
    rel, row = _entry(release, sae_id)
    site = row["path"].split("/")[0].removesuffix("_all")
    hf_in, hf_out = (t.format(L=row["layer"]) for t in _GS2_HF[site])
    kind = "transcoder" if site == "transcoder" else "sae"
    cfg = gs2_config(hf_in, hf_out, width=weights["W_enc"].shape[1],
                     model_name=rel["model"], kind=kind, affine="affine_skip" in weights,
                     l0=row.get("l0") or 60)
    folder = hub_path(hub, rel["repo_id"], f"{row['path']}/config.json").parent
    return write_gs2(folder, weights, cfg)


def write_saelens_folder(folder: Path, weights: dict[str, np.ndarray], *, hook_name: str,
                         model_name: str = "gemma-2-2b", legacy: bool = False) -> Path:
    """A folder in SAELens's format (cfg.json + sae_weights.safetensors), written by hand.

    legacy=False: SAELens 6.x (architecture, d_in, d_sae, metadata.{hook_name, model_name});
    legacy=True: SAELens <6 flat fields (hook_name, hook_layer, model_name, activation_fn_str).
    """
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = weights["W_enc"].shape
    save_file({k: torch.from_numpy(v) for k, v in weights.items() if k != "affine_skip"},
              str(folder / "sae_weights.safetensors"))
    if legacy:
        cfg = {"architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae),
               "dtype": "float32", "device": "cpu", "model_name": model_name,
               "hook_name": hook_name, "hook_layer": 20, "hook_head_index": None,
               "activation_fn_str": "relu", "apply_b_dec_to_input": False,
               "finetuning_scaling_factor": False, "context_size": 1024,
               "dataset_path": "", "normalize_activations": "none", "prepend_bos": True,
               "neuronpedia_id": "gemma-2-2b/20-gemmascope-res-16k"}
    else:
        cfg = {"architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae),
               "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
               "normalize_activations": "none", "reshape_activations": "none",
               "metadata": {"sae_lens_version": "6.5.0", "model_name": model_name,
                            "hook_name": hook_name, "hook_head_index": None,
                            "prepend_bos": True, "dataset_path": "monology/pile-uncopyrighted",
                            "context_size": 1024, "neuronpedia_id": None}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def jumprelu_numpy(x: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Independent float64 numpy JumpReLU: (features, reconstruction incl. affine skip)."""
    x = x.astype(np.float64)
    pre = x @ w["W_enc"].astype(np.float64) + w["b_enc"]
    f = np.where(pre > w["threshold"], pre, 0.0)
    x_hat = f @ w["W_dec"].astype(np.float64) + w["b_dec"]
    if "affine_skip" in w:
        x_hat = x_hat + x @ w["affine_skip"].astype(np.float64)
    return f, x_hat
