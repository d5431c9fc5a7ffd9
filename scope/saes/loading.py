"""`load_sae`: Gemma Scope releases, local files and folders -> `JumpReLUSAE`.

Sources: registry releases by name (through the Hugging Face cache), local paths in any layout
of `FORMATS` (native/SAELens folders, Gemma Scope 2 folders, Gemma Scope 1 `params.npz`; each
layout is spelled in `scope.saes.formats`) and `"bundled"` (the demo SAEs shipped in the
package). An npz is converted once into a native copy in the scope cache (`$SCOPE_CACHE/saes` or
`~/.cache/scope/saes`); later loads memory-map that copy. Imports `scope.model` only lazily, for
the `model=` checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope.base.atomic import atomic_folder
from scope.base.dtypes import dtype_name, to_torch_dtype
from scope.base.hub import cache_root as scope_cache_root
from scope.base.hub import hub_error
from scope.errors import SAEFormatError, ShapeMismatchError, UnknownSAEError, suggest
from scope.saes import releases
from scope.saes.bundled import BUNDLED_ROOT, bundled_member, expand_sae_specs, set_members
from scope.saes.config import SAEConfig
from scope.saes.formats import gs2, native, npz
from scope.saes.sae import JumpReLUSAE

log = logging.getLogger(__name__)

BUNDLED_DIR = BUNDLED_ROOT / "demo_sae"
CACHE_VERSION = 1  # bump to invalidate every cached copy


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
        model: a model from `scope.load_model`; when given, `d_in` must equal the width of the
            SAE's site in that model (ShapeMismatchError names both), and an SAE whose config
            names another model is loaded with a warning.
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
# the registry of local layouts
# ------------------------------------------------------------------------------------------------

Loader = Callable[..., JumpReLUSAE]  # (folder, file, *, device, dtype, hook_name) -> SAE


@dataclass(frozen=True)
class Format:
    """One local file layout: how to recognise a folder or file of it and load it."""

    name: str
    files: tuple[str, ...]
    """File names the layout uses (also checked to be regular files before loading)."""
    claims_folder: Callable[[Path], bool]
    claims_file: Callable[[Path], bool]
    load: Loader


def _load_native(folder: Path, file: Path | None, *, device, dtype, hook_name) -> JumpReLUSAE:
    return JumpReLUSAE.load(folder, device=device, dtype=dtype)


def _load_gs2(folder: Path, file: Path | None, *, device, dtype, hook_name) -> JumpReLUSAE:
    weights = file if file is not None and file.suffix == ".safetensors" else \
        folder / gs2.GS2_WEIGHTS_FILENAME
    cfg_path = folder / gs2.GS2_CONFIG_FILENAME
    if not cfg_path.is_file():
        raise SAEFormatError(f"{folder}: has {weights.name} but no {gs2.GS2_CONFIG_FILENAME}; "
                             "copy both files of the Gemma Scope 2 SAE")
    cfg, tensors = gs2.read_gs2(cfg_path, weights, device=device, dtype=dtype)
    return JumpReLUSAE.from_tensors(cfg, tensors, source=weights)


def _load_npz(folder: Path, file: Path | None, *, device, dtype, hook_name) -> JumpReLUSAE:
    path = file or folder / npz.NPZ_FILENAME
    cfg = npz.local_config(path, hook_name)
    st = path.stat()
    key = f"local/{path.resolve()}:{st.st_size}:{st.st_mtime_ns}:{hook_name}"
    return _load_npz_cached(lambda: path, key, cfg, device=device, dtype=dtype)


#: local layouts, in the order a folder is tried
FORMATS: tuple[Format, ...] = (
    Format("native", native.FILES,
           claims_folder=lambda d: any((d / n).is_file() for n in native.FILES),
           claims_file=lambda f: f.name in native.FILES and (f.parent / native.CFG_FILENAME).is_file(),
           load=_load_native),
    Format(releases.GS2_FORMAT, gs2.FILES,
           claims_folder=lambda d: (d / gs2.GS2_WEIGHTS_FILENAME).is_file(),
           claims_file=lambda f: (f.suffix == ".safetensors" or f.name == gs2.GS2_CONFIG_FILENAME)
           and (f.parent / gs2.GS2_CONFIG_FILENAME).is_file(),
           load=_load_gs2),
    Format(releases.GS1_FORMAT, npz.FILES,
           claims_folder=lambda d: (d / npz.NPZ_FILENAME).is_file(),
           claims_file=lambda f: f.suffix == ".npz",
           load=_load_npz),
)


def _layouts() -> str:
    return "; ".join(f"{f.name}: {' + '.join(f.files)}" for f in FORMATS)


def load_local(path: Path, *, device=None, dtype=None, hook_name: str | None = None) -> JumpReLUSAE:
    """Load a local file or folder in any layout of `FORMATS` (see `load_sae`)."""
    if not path.is_file() and not path.is_dir():
        raise SAEFormatError(f"{path}: not a regular file or folder (a device, pipe or socket?); "
                             "pass an SAE file or folder")
    folder = path if path.is_dir() else path.parent
    if path.is_dir():
        for name in dict.fromkeys(n for f in FORMATS for n in f.files):
            p = folder / name
            if p.exists() and not p.is_file():
                raise SAEFormatError(f"{p}: not a regular file (a folder, device, pipe or "
                                     "socket); replace it with the SAE's file")
        fmt = next((f for f in FORMATS if f.claims_folder(folder)), None)
        file = None
    else:
        fmt = next((f for f in FORMATS if f.claims_file(path)), None)
        file = path
    if fmt is None:
        what = (f"folder holds no SAE ({', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'empty'})"
                if path.is_dir() else "not an SAE file scope knows")
        raise SAEFormatError(f"{path}: {what}; pass a file or folder of one of these layouts: "
                             f"{_layouts()}")
    return fmt.load(folder, file, device=device, dtype=dtype, hook_name=hook_name)


# ------------------------------------------------------------------------------------------------
# registry releases (through the Hugging Face cache)
# ------------------------------------------------------------------------------------------------


def load_release(release: str, sae_id: str, *, device=None, dtype=None) -> JumpReLUSAE:
    """Load `sae_id` of a registry release (see `load_sae`)."""
    entry = releases.resolve(release, sae_id)
    if entry.release.format == releases.GS1_FORMAT:
        cfg = npz.registry_config(entry)
        key = f"{entry.repo_id}/{entry.path}"
        return _load_npz_cached(lambda: hub_file(entry.repo_id, entry.filename), key, cfg,
                                device=device, dtype=dtype)
    cfg_path = Path(hub_file(entry.repo_id, f"{entry.path}/{gs2.GS2_CONFIG_FILENAME}"))
    weights = Path(hub_file(entry.repo_id, f"{entry.path}/{gs2.GS2_WEIGHTS_FILENAME}"))
    cfg, tensors = gs2.read_gs2(cfg_path, weights, entry=entry, device=device, dtype=dtype)
    return JumpReLUSAE.from_tensors(cfg, tensors, source=weights)


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


# ------------------------------------------------------------------------------------------------
# the native cache of npz files
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
    if all((cached / n).is_file() for n in native.FILES):
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
    path = Path(get_path())
    tensors = npz.read_npz(path, cfg, dtype=dtype)
    sae = JumpReLUSAE.from_tensors(cfg, tensors, source=path, check_finite=False)
    _write_cache(sae, cached)
    return sae.to(device) if device is not None else sae


def _write_cache(sae: JumpReLUSAE, dest: Path) -> None:
    """Save a native copy to `dest` atomically; failures only warn (the next load re-reads)."""
    try:
        with atomic_folder(dest) as tmp:
            sae.save(tmp)
    except OSError as exc:
        if all((dest / n).is_file() for n in native.FILES):
            return  # another process filled the cache first: keep theirs
        log.warning("could not write SAE cache %s (%s); later loads will re-read the npz", dest, exc)


# ------------------------------------------------------------------------------------------------
# the bundled SAEs
# ------------------------------------------------------------------------------------------------


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
        if not re.fullmatch(r"layer_\d+", name) or not (folder / native.WEIGHTS_FILENAME).is_file():
            shipped = sorted(p.name for p in BUNDLED_DIR.parent.glob("layer_*"))
            raise UnknownSAEError(f"no bundled SAE {name!r}; shipped: bundled, "
                                  + ", ".join(f"bundled/{n}" for n in ["layer_9", *shipped]))
        return JumpReLUSAE.load(folder, device=device, dtype=dtype or torch.float32)
    if not (BUNDLED_DIR / native.WEIGHTS_FILENAME).is_file():
        raise UnknownSAEError(
            f"the bundled demo SAE is missing ({BUNDLED_DIR / native.WEIGHTS_FILENAME} not found); "
            "train it with `scope train` (see configs/train/) or reinstall the package")
    return JumpReLUSAE.load(BUNDLED_DIR, device=device, dtype=dtype or torch.float32)


# ------------------------------------------------------------------------------------------------
# model checks
# ------------------------------------------------------------------------------------------------


def check_against_model(sae: JumpReLUSAE, model: Any) -> None:
    """Raise ShapeMismatchError unless the SAE's widths match its sites in `model`; warn when
    the SAE's config names another model than `model`.

    Args:
        sae: the SAE; its `cfg.hook_name` (and `hook_name_out` for transcoders) name the sites.
        model: a model from `scope.load_model`.
    """
    from scope.model.activations import site_width  # lazy: loading must not import model code
    from scope.model.names import same_model

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
    if sae.cfg.model_name and isinstance(model_name, str) and model_name \
            and not same_model(sae.cfg.model_name, model_name):
        log.warning("SAE %r was made for %s but is used with %s: its features may mean nothing "
                    "here; load %s, or an SAE made for %s (`scope saes`)", sae.cfg.name,
                    sae.cfg.model_name, model_name, sae.cfg.model_name, model_name)
