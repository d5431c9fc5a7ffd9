"""Gemma Scope 1 (Gemma 2): one `params.npz` per SAE, no config file.

The npz holds exactly `W_enc`, `W_dec`, `b_enc`, `b_dec`, `threshold` (float32, some files
compressed); it is read with `allow_pickle=False`, one array at a time. The site and layer come
from the path (`gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71/params.npz`) or the
registry; shapes from the npy headers inside the zip, without reading the data.
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope.errors import SAEFormatError, UnknownSAEError
from scope.saes import releases
from scope.saes.config import PARAM_NAMES, SAEConfig, check_shapes, file_config

log = logging.getLogger(__name__)

NPZ_FILENAME = "params.npz"
FILES = (NPZ_FILENAME,)

_GS1_DIR = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)")
_GS1_SITE_HOOKS = {
    "res": ("blocks.{L}.hook_resid_post", None),
    "mlp": ("blocks.{L}.hook_mlp_out", None),
    "att": ("blocks.{L}.attn.hook_z", None),
    "transcoders": ("blocks.{L}.ln2.hook_normalized", "blocks.{L}.hook_mlp_out"),
}
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def read_npz(path: Path, cfg: SAEConfig, *, dtype: torch.dtype | None = None
             ) -> dict[str, torch.Tensor]:
    """The five tensors of a Gemma Scope 1 `params.npz`, each checked and cast as it is read.

    Args:
        path: the npz (plain or compressed).
        cfg: config whose d_in/d_sae the arrays must match.
        dtype: cast each array while loading (the float32 copy is dropped before the next key).

    Returns:
        {name: tensor}. Raises SAEFormatError naming the file and key for truncated/corrupt
        files, missing keys, wrong shapes or dtypes, and NaN/inf values.
    """
    fix = "delete it (and its Hugging Face cache entry) and download it again"
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
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
            except _READ_ERRORS as exc:
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
            del arr, t
    return tensors


def registry_config(entry: releases.SAEEntry) -> SAEConfig:
    """Config of a Gemma Scope 1 registry entry (widths and sites from the registry)."""
    info = entry.info
    extra = {"l0": info.get("l0"), "l0_label": info.get("l0_label"), "width": info.get("width"),
             "layer": info.get("layer"), "repo_id": entry.repo_id, "path": entry.path,
             "source_format": releases.GS1_FORMAT}
    if info.get("layer") is None:
        extra["note"] = ("embedding SAE: reads unscaled embedding rows; TransformerLens "
                         "hook_embed is scaled by sqrt(d_model)")
        log.warning("%s/%s reads unscaled embeddings; divide hook_embed by sqrt(d_model) first",
                    entry.release.name, entry.sae_id)
    return SAEConfig(
        d_in=int(info["d_in"]), d_sae=int(info["d_sae"]), hook_name=info["hook_name"],
        d_out=info.get("d_out"), hook_name_out=info.get("hook_name_out"),
        model_name=entry.release.model, release=entry.release.name, sae_id=entry.sae_id,
        neuronpedia_id=info.get("neuronpedia"), kind=entry.release.kind, extra=extra)


def local_config(path: Path, hook_name: str | None) -> SAEConfig:
    """Config for a local npz: shapes from the file header, site from a Gemma Scope-like path.

    Raises:
        UnknownSAEError: the path does not say the site and no `hook_name` was given.
    """
    shapes = npz_shapes(path)
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


def npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
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
    except _READ_ERRORS as exc:
        raise SAEFormatError(f"{path}: not a readable npz ({exc}); the file is truncated or "
                             "corrupt: download or copy it again") from exc
    missing = [k for k in ("W_enc", "W_dec") if k not in shapes]
    if missing or len(shapes.get("W_enc", ())) != 2:
        raise SAEFormatError(f"{path}: missing key(s) {missing or ['W_enc']} (found "
                             f"{sorted(shapes)}); a Gemma Scope SAE holds {list(PARAM_NAMES)}")
    return shapes
