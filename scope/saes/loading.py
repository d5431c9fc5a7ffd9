"""`load_sae`: Gemma Scope releases, local files and folders -> `JumpReLUSAE`.

Sources: Gemma Scope 1 `params.npz` and Gemma Scope 2 `config.json` + `params.safetensors`
(by release name through the Hugging Face cache, or as local paths), SAELens and native folders
(`cfg.json` + `sae_weights.safetensors`) and `"bundled"` (the demo SAE shipped in the package).
An npz is converted once into a native safetensors copy in the scope cache (`$SCOPE_CACHE/saes`
or `~/.cache/scope/saes`); later loads memory-map that copy. Imports `scope.model.activations` only
lazily, for the `model=` width check.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope.base.hub import cache_root as scope_cache_root
from scope.base.hub import hub_error
from scope.errors import (
    ConfigError,
    SAEFormatError,
    ShapeMismatchError,
    UnknownSAEError,
    suggest,
)
from scope.saes import releases
from scope.saes.bundled import bundled_member, expand_sae_specs, set_members
from scope.saes.sae import (
    CFG_FILENAME,
    PARAM_NAMES,
    WEIGHTS_FILENAME,
    JumpReLUSAE,
    SAEConfig,
    check_shapes,
    dtype_name,
    read_safetensors,
    to_torch_dtype,
)

log = logging.getLogger(__name__)

NPZ_FILENAME = "params.npz"
GS2_CONFIG_FILENAME = "config.json"
GS2_WEIGHTS_FILENAME = "params.safetensors"
BUNDLED_ROOT = Path(str(importlib.resources.files("scope").joinpath("bundled")))
BUNDLED_DIR = BUNDLED_ROOT / "demo_sae"
CACHE_VERSION = 1  # bump to invalidate every cached copy

# Gemma Scope 2 stores lowercase keys; affine transcoders add the skip matrix.
GS2_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
            "threshold": "threshold", "affine_skip_connection": "affine_skip"}

# Hugging Face module path in a Gemma Scope 2 config -> TransformerLens hook (docs/saes.md, "Gemma Scope 2").
_HF_HOOKS = [
    (re.compile(r"(?:^|\.)layers\.(\d+)\.output$"), "blocks.{L}.hook_resid_post"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.post_feedforward_layernorm\.output$"),
     "blocks.{L}.hook_mlp_out"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.o_proj\.input$"), "blocks.{L}.attn.hook_z"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.pre_feedforward_layernorm\.output$"),
     "blocks.{L}.ln2.hook_normalized_with_gain"),
]
_GS1_DIR = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)")
_GS1_SITE_HOOKS = {
    "res": ("blocks.{L}.hook_resid_post", None),
    "mlp": ("blocks.{L}.hook_mlp_out", None),
    "att": ("blocks.{L}.attn.hook_z", None),
    "transcoders": ("blocks.{L}.ln2.hook_normalized", "blocks.{L}.hook_mlp_out"),
}


def load_sae(
    spec: str | os.PathLike,
    sae_id: str | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    model: Any = None,
    hook_name: str | None = None,
) -> JumpReLUSAE:
    """Load an SAE or transcoder by release name, local path, or `"bundled"`.

    Args:
        spec: a release name with `sae_id` (`"gemma-scope-2b-pt-res"`), `"release/sae_id"` in one
            string, a local `params.npz`, a Gemma Scope 2 / SAELens / native folder, or
            `"bundled"`.
        sae_id: the SAE within the release (`"layer_20/width_16k/average_l0_71"`; canonical ids
            such as `"layer_20/width_16k/canonical"` work on `-canonical` releases).
        device: where to put the weights (default CPU).
        dtype: cast to this dtype while loading (e.g. torch.bfloat16 for big widths).
        model: a model from `scope.load_model`; when given, `d_in` must equal the width of the SAE's site in
            that model (ShapeMismatchError names both).
        hook_name: the TransformerLens hook a local `params.npz` reads when its path does not say
            (outside a Gemma Scope folder layout).

    Returns:
        The JumpReLUSAE, with `cfg` filled in (hook_name, release, sae_id, neuronpedia_id, ...);
        for a set spec (`"bundled/transcoders"`, a folder of `layer_L/` dictionaries) the list of
        its dictionaries, shallowest first (`load_saes` always returns a list).
    """
    if sae_id is None and (members := set_members(spec)) is not None:
        # a set ("bundled/transcoders", a folder of layer_L/): one dictionary per layer
        return [load_sae(m, device=device, dtype=dtype, model=model) for m in members]
    if dtype is not None:
        dtype = to_torch_dtype(dtype)
    sae = _dispatch(spec, sae_id, device=device, dtype=dtype, hook_name=hook_name)
    if model is not None:
        check_against_model(sae, model)
    sae.scope_spec = _spec_string(spec, sae_id)  # what load_sae accepts again (stores record it)
    return sae


def load_saes(specs: str | os.PathLike | list[str], **kwargs: Any) -> list[JumpReLUSAE]:
    """Every dictionary the specs name, sets expanded (`scope.saes.bundled.expand_sae_specs`):
    `load_saes("bundled/transcoders")` is the bundled model's 18 transcoders, shallowest first.

    Args:
        specs: one spec or a list (each as `load_sae` takes it, without `sae_id`).
        **kwargs: passed to `load_sae` (device, dtype, model, hook_name).
    """
    many = [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)
    return [load_sae(s, **kwargs) for s in expand_sae_specs([str(s) for s in many])]


def _spec_string(spec: str | os.PathLike, sae_id: str | None) -> str:
    """One string that `load_sae` resolves to the same SAE: release/id, an absolute path, or
    the name as given ("bundled", "release/id")."""
    if sae_id is not None:
        return f"{spec}/{sae_id}"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else str(spec)


def _dispatch(spec, sae_id, *, device, dtype, hook_name) -> JumpReLUSAE:
    if isinstance(spec, str) and spec == "bundled":
        return load_bundled(device=device, dtype=dtype)
    if (member := bundled_member(spec)) is not None:  # "bundled/transcoders/layer_L"
        return JumpReLUSAE.load(member, device=device, dtype=dtype or torch.float32)
    if isinstance(spec, str) and spec.startswith("bundled/"):  # "bundled/layer_3": extra demo SAEs
        return load_bundled(device=device, dtype=dtype, name=spec.split("/", 1)[1])
    if sae_id is not None:
        return load_release(str(spec), sae_id, device=device, dtype=dtype)
    path = Path(spec).expanduser()
    if path.exists():
        return load_local(path, device=device, dtype=dtype, hook_name=hook_name)
    text = str(spec)
    split = releases.split_spec(text)
    if split is not None:
        return load_release(*split, device=device, dtype=dtype)
    if releases.is_release(text):
        rel = releases.get_release(text)
        raise UnknownSAEError(
            f"release {rel.name!r} needs an SAE id, e.g. load_sae({rel.name!r}, {rel.ids[0]!r}); "
            f"list them with `scope saes {rel.name}`")
    names = [r["name"] for r in releases.list_releases()]
    head = text.split("/", 1)[0]
    raise UnknownSAEError(
        f"cannot load SAE {text!r}: it is neither a local file/folder nor a release name."
        f"{suggest(head, names)} Use `scope saes` to list releases, or pass a path to "
        "params.npz, a Gemma Scope 2 folder, or a native/SAELens folder.")


# ------------------------------------------------------------------------------------------------
# registry releases (through the Hugging Face cache)
# ------------------------------------------------------------------------------------------------


def load_release(release: str, sae_id: str, *, device=None, dtype=None) -> JumpReLUSAE:
    """Load `sae_id` of a registry release (see `load_sae`)."""
    entry = releases.resolve(release, sae_id)
    if entry.release.format == releases.GS1_FORMAT:
        cfg = _gs1_registry_config(entry)
        key = f"{entry.repo_id}/{entry.path}"
        return _load_npz_cached(lambda: hub_file(entry.repo_id, entry.filename), key, cfg,
                                device=device, dtype=dtype)
    cfg_path = hub_file(entry.repo_id, f"{entry.path}/{GS2_CONFIG_FILENAME}")
    weights = hub_file(entry.repo_id, f"{entry.path}/{GS2_WEIGHTS_FILENAME}")
    return load_gs2_files(Path(cfg_path), Path(weights), entry=entry, device=device, dtype=dtype)


def hub_file(repo_id: str, filename: str) -> str:
    """Path of `filename` in `repo_id` via `hf_hub_download` (served from the cache offline).

    Raises:
        HubUnavailableError: hub unreachable (or offline) and the file is not cached, or gated.
        UnknownSAEError: the repo or file does not exist on the hub.
    """
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, filename)
    except Exception as exc:
        err = hub_error(exc, f"{repo_id}/{filename}", UnknownSAEError,
                        fix="List releases and SAE ids with `scope saes`.")
        if err is None:
            raise
        raise err from exc


def _gs1_registry_config(entry: releases.SAEEntry) -> SAEConfig:
    info = entry.info
    extra = {"l0": info.get("l0"), "l0_label": info.get("l0_label"), "width": info.get("width"),
             "layer": info.get("layer"), "repo_id": entry.repo_id, "path": entry.path,
             "source_format": releases.GS1_FORMAT}
    if info.get("layer") is None:
        extra["note"] = ("embedding SAE: reads unscaled embedding rows; TransformerLens "
                         "hook_embed is scaled by sqrt(d_model)")
        log.warning("%s/%s reads unscaled embeddings; divide hook_embed by sqrt(d_model) first",
                    entry.release.name, entry.sae_id)
    kind = entry.release.kind
    return SAEConfig(
        d_in=int(info["d_in"]), d_sae=int(info["d_sae"]), hook_name=info["hook_name"],
        d_out=info.get("d_out"), hook_name_out=info.get("hook_name_out"),
        model_name=entry.release.model, release=entry.release.name, sae_id=entry.sae_id,
        neuronpedia_id=info.get("neuronpedia"), kind=kind, extra=extra)


# ------------------------------------------------------------------------------------------------
# Gemma Scope 1: params.npz (+ the native cache)
# ------------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Folder of cached native copies: `$SCOPE_CACHE/saes` or `~/.cache/scope/saes`."""
    return scope_cache_root() / "saes"


def _cache_dir(key: str, dtype: torch.dtype | None) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "--", key).strip("-")[:150]
    digest = hashlib.sha1(f"v{CACHE_VERSION}:{key}".encode()).hexdigest()[:10]
    return cache_root() / f"{safe}-{digest}" / (dtype_name(dtype) if dtype else "stored")


def _load_npz_cached(get_path, key: str, cfg: SAEConfig, *, device, dtype) -> JumpReLUSAE:
    """Load from the native cache when present, else read the npz and write the cache."""
    cached = _cache_dir(key, dtype)
    if (cached / WEIGHTS_FILENAME).is_file() and (cached / CFG_FILENAME).is_file():
        try:
            # scope wrote and checked this copy (finite, float) when it made it
            sae = JumpReLUSAE.load(cached, device=device, check_finite=False)
            # keep the identity the caller asked for (canonical id, release) over the cached one
            for field in ("release", "sae_id", "neuronpedia_id", "model_name"):
                setattr(sae.cfg, field, getattr(cfg, field))
            log.debug("loaded %s from cache %s", key, cached)
            return sae
        except SAEFormatError as exc:
            log.warning("ignoring corrupt SAE cache %s (%s); rebuilding it", cached, exc)
            shutil.rmtree(cached, ignore_errors=True)
    npz_path = Path(get_path())
    sae = load_npz(npz_path, cfg, dtype=dtype)
    _write_cache(sae, cached)
    if device is not None:
        sae = sae.to(device)
    return sae


def _write_cache(sae: JumpReLUSAE, dest: Path) -> None:
    """Save a native copy to `dest` atomically (temp folder + rename); failures only warn."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            sae.save(tmp)
            try:
                os.replace(tmp, dest)
            except OSError:  # another process filled the cache first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as exc:
        log.warning("could not write SAE cache %s (%s); later loads will re-read the npz", dest, exc)


def load_npz(path: Path, cfg: SAEConfig, *, dtype: torch.dtype | None = None) -> JumpReLUSAE:
    """Read a Gemma Scope 1 `params.npz` into a JumpReLUSAE (no pickle; one tensor at a time).

    Args:
        path: the npz (plain or compressed).
        cfg: config whose d_in/d_sae the arrays must match.
        dtype: cast each array while loading.

    Returns:
        The SAE. Raises SAEFormatError naming the file and key for truncated/corrupt files,
        missing keys, wrong shapes or dtypes, and NaN/inf values.
    """
    fix = "delete it (and its Hugging Face cache entry) and download it again"
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise SAEFormatError(f"{path}: not a readable npz ({exc}); the file is truncated or "
                             f"corrupt: {fix}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise SAEFormatError(f"{path}: holds a single array, not the npz of a Gemma Scope SAE "
                             f"(keys {list(PARAM_NAMES)})")
    tensors: dict[str, torch.Tensor] = {}
    with npz:
        missing = [k for k in PARAM_NAMES if k not in npz.files]
        if missing:
            raise SAEFormatError(f"{path}: missing key(s) {missing}; found {sorted(npz.files)}. "
                                 f"A Gemma Scope SAE holds {list(PARAM_NAMES)}: {fix}")
        for key in PARAM_NAMES:
            try:
                arr = npz[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise SAEFormatError(f"{path}: key {key!r} cannot be read ({exc}); the file is "
                                     f"truncated or corrupt: {fix}") from exc
            if arr.dtype.kind != "f" or arr.dtype.itemsize > 8:
                raise SAEFormatError(f"{path}: key {key!r} has dtype {arr.dtype}, expected a float "
                                     f"array (float32 in Gemma Scope): {fix}")
            check_shapes(cfg, {key: arr}, source=path)
            if not np.isfinite(arr).all():
                raise SAEFormatError(f"{path}: key {key!r} holds NaN or inf values; the file is "
                                     f"corrupt: {fix}")
            t = torch.from_numpy(arr)
            tensors[key] = t.to(dtype) if dtype is not None and t.dtype != dtype else t
            del arr, t  # drop the float32 copy before reading the next key
    return JumpReLUSAE.from_tensors(cfg, tensors, source=path, check_finite=False)


def _npz_local_config(path: Path, hook_name: str | None) -> SAEConfig:
    """Config for a local npz: shapes from the file header, site from a GS-like path."""
    shapes = _npz_shapes(path)
    d_in, d_sae = shapes["W_enc"]
    d_out = shapes["W_dec"][1] if len(shapes["W_dec"]) == 2 else d_in
    parts = path.resolve().parts
    layer_m = re.fullmatch(r"layer_(\d+)", parts[-4]) if len(parts) >= 4 else None
    is_gs = (len(parts) >= 4 and re.fullmatch(r"width_\w+", parts[-3])
             and re.fullmatch(r"average_l0_\d+", parts[-2]))
    site_m = next((m for p in reversed(parts) if (m := _GS1_DIR.search(p))), None)
    extra: dict[str, Any] = {"source_file": str(path), "source_format": releases.GS1_FORMAT}
    hook_out = None
    model_name = ""
    if hook_name is None:
        if not (is_gs and site_m and (layer_m or parts[-4] == "embedding")):
            raise UnknownSAEError(
                f"{path}: cannot tell which hook this npz reads (its path is not "
                ".../gemma-scope-<size>-<pt|it>-<site>/.../layer_L/width_W/average_l0_N/params.npz); "
                "pass hook_name=, e.g. load_sae(path, hook_name='blocks.20.hook_resid_post')")
        size, variant, site = site_m.groups()
        model_name = f"gemma-2-{size}" + ("-it" if variant == "it" else "")
        if layer_m is None:
            hook_name = "hook_embed"
        else:
            t_in, t_out = _GS1_SITE_HOOKS[site]
            hook_name = t_in.format(L=layer_m.group(1))
            hook_out = t_out.format(L=layer_m.group(1)) if t_out else None
        extra["path"] = "/".join(parts[-4:-1])
    kind = "transcoder" if hook_out or d_out != d_in else "sae"
    return file_config(path, d_in=d_in, d_sae=d_sae, d_out=d_out, hook_name=hook_name,
                       hook_name_out=hook_out, model_name=model_name, kind=kind, extra=extra)


def file_config(source: Any, **fields: Any) -> SAEConfig:
    """`SAEConfig(**fields)` for an SAE read from `source`; a bad field is a SAEFormatError
    naming the file (ConfigError is for arguments the caller passed)."""
    try:
        return SAEConfig(**fields)
    except ConfigError as exc:
        raise SAEFormatError(f"{source}: {exc}; the file does not describe a usable SAE") from None


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes from the npy headers inside an npz, without reading the data."""
    try:
        shapes = {}
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if major == 1
                            else np.lib.format.read_array_header_2_0)
                    shape, _, _ = read(fh)
                shapes[name.removesuffix(".npy")] = tuple(shape)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise SAEFormatError(f"{path}: not a readable npz ({exc}); the file is truncated or "
                             "corrupt: download or copy it again") from exc
    missing = [k for k in ("W_enc", "W_dec") if k not in shapes]
    if missing or len(shapes.get("W_enc", ())) != 2:
        raise SAEFormatError(f"{path}: missing key(s) {missing or ['W_enc']} (found "
                             f"{sorted(shapes)}); a Gemma Scope SAE holds {list(PARAM_NAMES)}")
    return shapes


# ------------------------------------------------------------------------------------------------
# Gemma Scope 2: config.json + params.safetensors
# ------------------------------------------------------------------------------------------------


def hf_to_tl_hook(hf_hook: str) -> str | None:
    """TransformerLens hook for a Gemma Scope 2 `hf_hook_point_*` (None when unknown)."""
    for pattern, template in _HF_HOOKS:
        m = pattern.search(hf_hook)
        if m:
            return template.format(L=m.group(1))
    return None


def safetensors_shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """{key: (shape, dtype)} from a safetensors header (reads only the header bytes)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or n > 100_000_000 or n + 8 > path.stat().st_size:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(fh.read(n))
        shapes = {k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"}
        for key, (shape, _) in shapes.items():
            if not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                raise ValueError(f"tensor {key!r} has shape {shape!r}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SAEFormatError(f"{path}: unreadable safetensors header ({exc}); the file is "
                             "truncated or corrupt: download it again") from exc
    return shapes


def load_gs2_files(cfg_path: Path, weights_path: Path, *, entry: releases.SAEEntry | None = None,
                   device=None, dtype=None) -> JumpReLUSAE:
    """Load a Gemma Scope 2 SAE/transcoder from its config.json and params.safetensors.

    Shapes come from the local safetensors header; hooks from `hf_hook_point_in/out` mapped to
    TransformerLens names (docs/saes.md), falling back to the registry's guess.

    Args:
        cfg_path: config.json; weights_path: params.safetensors.
        entry: the registry entry when loaded by release name (release, id, Neuronpedia id).
        device, dtype: as in `load_sae`.

    Returns:
        The SAE.
    """
    try:
        gcfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise SAEFormatError(f"{cfg_path}: not valid JSON ({exc}); download it again") from exc
    if not isinstance(gcfg, dict):
        raise SAEFormatError(f"{cfg_path}: expected a JSON object (a Gemma Scope 2 config), got "
                             f"a {type(gcfg).__name__}; download it again")
    shapes = safetensors_shapes(weights_path)
    missing = [k for k in GS2_KEYS if k != "affine_skip_connection" and k not in shapes]
    if missing:
        raise SAEFormatError(f"{weights_path}: missing key(s) {missing}; found {sorted(shapes)}. "
                             f"A Gemma Scope 2 file holds {sorted(GS2_KEYS)[:5]} (lowercase)")
    w_enc, w_dec = shapes["w_enc"][0], shapes["w_dec"][0]
    if len(w_enc) != 2 or len(w_dec) != 2:
        raise SAEFormatError(f"{weights_path}: w_enc {w_enc} / w_dec {w_dec} must be 2-D")
    d_in, d_sae, d_out = w_enc[0], w_enc[1], w_dec[1]
    info = entry.info if entry else {}
    hook_in = hf_to_tl_hook(str(gcfg.get("hf_hook_point_in", ""))) or info.get("hook_name")
    if not hook_in:
        raise SAEFormatError(f"{cfg_path}: hf_hook_point_in {gcfg.get('hf_hook_point_in')!r} "
                             "is not a Gemma Scope 2 site (resid_post, mlp_out, attn_out, "
                             "transcoder); load it with hook_name= via a native folder")
    if info.get("hook_name") and info["hook_name"] != hook_in:
        log.warning("%s: config says hook %s, registry says %s; using the config",
                    cfg_path, hook_in, info["hook_name"])
    if info.get("d_in") and info["d_in"] != d_in:
        log.warning("%s: d_in %d in the file differs from the registry's derived %d; "
                    "using the file", weights_path, d_in, info["d_in"])
    kind_raw = str(gcfg.get("type", "")).lower()
    hf_out = str(gcfg.get("hf_hook_point_out", "") or "")
    is_tc = kind_raw == "transcoder" or "affine_skip_connection" in shapes or (
        hf_out and hf_out != gcfg.get("hf_hook_point_in"))
    hook_out = (hf_to_tl_hook(hf_out) or info.get("hook_name_out")) if is_tc else None
    if is_tc and not hook_out:
        raise SAEFormatError(f"{cfg_path}: transcoder output hook {hf_out!r} is not a known site")
    width = gcfg.get("width")
    if isinstance(width, int) and width != d_sae:
        raise SAEFormatError(f"{cfg_path}: width {width} disagrees with w_enc's {d_sae} "
                             f"features in {weights_path}; the files are from different SAEs")
    extra = {k: v for k, v in gcfg.items() if k not in {"model_name"}}
    extra.update({"source_format": releases.GS2_FORMAT, "source_file": str(weights_path)})
    if entry:
        extra.update({"repo_id": entry.repo_id, "path": entry.path,
                      "l0_label": info.get("l0_label"), "layer": info.get("layer")})
    cfg = file_config(
        cfg_path, d_in=d_in, d_sae=d_sae, d_out=d_out, hook_name=hook_in, hook_name_out=hook_out,
        model_name=str(gcfg.get("model_name") or (entry.release.model if entry else "")),
        release=entry.release.name if entry else "", sae_id=entry.sae_id if entry else "",
        neuronpedia_id=info.get("neuronpedia"), kind="transcoder" if is_tc else "sae",
        extra=extra)
    tensors = read_safetensors(weights_path, device=device, dtype=dtype, rename=GS2_KEYS)
    return JumpReLUSAE.from_tensors(cfg, tensors, source=weights_path)


# ------------------------------------------------------------------------------------------------
# local paths and the bundled SAE
# ------------------------------------------------------------------------------------------------


def load_local(path: Path, *, device=None, dtype=None, hook_name: str | None = None) -> JumpReLUSAE:
    """Load a local npz, Gemma Scope 2 folder, or native/SAELens folder (see `load_sae`)."""
    if not path.is_file() and not path.is_dir():
        raise SAEFormatError(f"{path}: not a regular file or folder (a device, pipe or socket?); "
                             "pass an SAE file or folder")
    if path.is_dir():
        for name in (CFG_FILENAME, WEIGHTS_FILENAME, GS2_CONFIG_FILENAME, GS2_WEIGHTS_FILENAME,
                     NPZ_FILENAME):
            p = path / name
            if p.exists() and not p.is_file():
                raise SAEFormatError(f"{p}: not a regular file (a folder, device, pipe or "
                                     "socket); replace it with the SAE's file")
    if path.is_file():
        folder = path.parent
        if path.suffix == ".npz":
            return _load_local_npz(path, device=device, dtype=dtype, hook_name=hook_name)
        if path.suffix == ".safetensors":
            if (folder / CFG_FILENAME).is_file() and path.name == WEIGHTS_FILENAME:
                return JumpReLUSAE.load(folder, device=device, dtype=dtype)
            if (folder / GS2_CONFIG_FILENAME).is_file():
                return load_gs2_files(folder / GS2_CONFIG_FILENAME, path, device=device, dtype=dtype)
        if path.name in (CFG_FILENAME, GS2_CONFIG_FILENAME):
            return load_local(folder, device=device, dtype=dtype, hook_name=hook_name)
        raise SAEFormatError(f"{path}: not an SAE file scope knows; pass {NPZ_FILENAME}, a folder "
                             f"with {CFG_FILENAME} + {WEIGHTS_FILENAME} (native/SAELens), or a "
                             f"folder with {GS2_CONFIG_FILENAME} + {GS2_WEIGHTS_FILENAME} (Gemma Scope 2)")
    if (path / WEIGHTS_FILENAME).is_file() or (path / CFG_FILENAME).is_file():
        return JumpReLUSAE.load(path, device=device, dtype=dtype)
    if (path / GS2_WEIGHTS_FILENAME).is_file():
        if not (path / GS2_CONFIG_FILENAME).is_file():
            raise SAEFormatError(f"{path}: has {GS2_WEIGHTS_FILENAME} but no {GS2_CONFIG_FILENAME}; "
                                 "copy both files of the Gemma Scope 2 SAE")
        return load_gs2_files(path / GS2_CONFIG_FILENAME, path / GS2_WEIGHTS_FILENAME,
                              device=device, dtype=dtype)
    if (path / NPZ_FILENAME).is_file():
        return _load_local_npz(path / NPZ_FILENAME, device=device, dtype=dtype, hook_name=hook_name)
    raise SAEFormatError(f"{path}: folder holds no SAE ({', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'empty'}); "
                         f"expected {CFG_FILENAME} + {WEIGHTS_FILENAME}, {GS2_CONFIG_FILENAME} + "
                         f"{GS2_WEIGHTS_FILENAME}, or {NPZ_FILENAME}")


def _load_local_npz(path: Path, *, device, dtype, hook_name) -> JumpReLUSAE:
    cfg = _npz_local_config(path, hook_name)
    st = path.stat()
    key = f"local/{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{hook_name}"
    return _load_npz_cached(lambda: path, key, cfg, device=device, dtype=dtype)


def load_bundled(*, device=None, dtype=None, name: str | None = None) -> JumpReLUSAE:
    """The demo SAE shipped in `scope/bundled/demo_sae/` (native folder).

    `name` picks another shipped SAE: "layer_N" (`scope/bundled/layer_N/`; "layer_9" is the
    demo SAE itself).

    It is stored in float16 to keep the package small but loads as float32 unless `dtype` says
    otherwise: Gemma's residual stream reaches ~1e5 at BOS, past float16's range, and the
    pre-activations would overflow to inf/NaN there.
    """
    folder = BUNDLED_DIR
    if name is not None and name != "layer_9":
        folder = BUNDLED_DIR.parent / name
        if not re.fullmatch(r"layer_\d+", name) or not (folder / WEIGHTS_FILENAME).is_file():
            shipped = sorted(p.name for p in BUNDLED_DIR.parent.glob("layer_*"))
            raise UnknownSAEError(f"no bundled SAE {name!r}; shipped: bundled, "
                                  + ", ".join(f"bundled/{n}" for n in ["layer_9", *shipped]))
        return JumpReLUSAE.load(folder, device=device, dtype=dtype or torch.float32)
    if not (BUNDLED_DIR / WEIGHTS_FILENAME).is_file():
        raise UnknownSAEError(
            f"the bundled demo SAE is missing ({BUNDLED_DIR / WEIGHTS_FILENAME} not found); "
            "train it with `scope train` (see configs/train/) or reinstall the package")
    return JumpReLUSAE.load(BUNDLED_DIR, device=device, dtype=dtype or torch.float32)


# ------------------------------------------------------------------------------------------------
# model check
# ------------------------------------------------------------------------------------------------


def check_against_model(sae: JumpReLUSAE, model: Any) -> None:
    """Raise ShapeMismatchError unless the SAE's widths match its sites in `model`.

    Args:
        sae: the SAE; its `cfg.hook_name` (and `hook_name_out` for transcoders) name the sites.
        model: a model from `scope.load_model`.
    """
    from scope.model.activations import site_width  # lazy: loading must not import model code

    model_name = getattr(getattr(model, "cfg", None), "model_name", "the model")
    pairs = [(sae.cfg.hook_name, sae.d_in, "d_in")]
    if sae.cfg.hook_name_out:
        pairs.append((sae.cfg.hook_name_out, sae.d_out, "d_out"))
    for hook, width, label in pairs:
        site = site_width(model, hook)
        if int(site) != int(width):
            raise ShapeMismatchError(
                f"SAE {sae.cfg.name!r} has {label}={width} but {hook} in {model_name} is {site} "
                f"wide; this SAE was made for {sae.cfg.model_name or 'another model'}: load the "
                "matching model or pick an SAE from a release for this model (`scope saes`)")
