"""The shapes a plan is computed from: a model's architecture and each SAE's width, without weights.

`model_shape` resolves a short name (`known_models()`), "bundled", a local checkpoint folder (its
`config.json` only), a dict (`layers`, `d_model`, `vocab`, `dtype`, ...), a transformers config
or a loaded model; `sae_shape` resolves a registry spec (`release/sae_id`), "bundled", a local
SAE folder (its `cfg.json` only), a dict (`d_in`, `d_sae`, `l0`, `layer`) or a loaded SAE.
Nothing is downloaded or loaded: an unknown name is a named error before any work starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from scope.errors import ConfigError, UnknownModelError, UnknownSAEError, suggest
from scope.model.activations import hook_layer
from scope.model.load import BUNDLED, known_models
from scope.saes import releases

#: what `known_models()` does not say, from each model's published config.json:
#: (d_vocab, d_mlp, n_heads, n_kv_heads, d_head)
_ARCH = {
    "gemma-2-2b": (256000, 9216, 8, 4, 256),
    "gemma-2-9b": (256000, 14336, 16, 8, 256),
    "gemma-2-27b": (256000, 36864, 32, 16, 128),
    "gemma-3-270m": (262144, 2048, 4, 1, 256),
    "gemma-3-1b": (262144, 6912, 4, 1, 256),
    "gemma-3-4b": (262208, 10240, 8, 4, 256),
    "gemma-3-12b": (262208, 15360, 16, 8, 256),
    "gemma-3-27b": (262208, 21504, 32, 16, 128),
}
_ALIASES = {"gemma-3-270m-pt": "gemma-3-270m", "gemma-3-1b": "gemma-3-1b-pt", BUNDLED: "gemma-3-270m"}
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
#: features per token assumed for an SAE that names no L0 (Gemma Scope's typical 16k L0)
DEFAULT_L0 = 64


def dtype_bytes(dtype: Any) -> int:
    """Bytes per element of a dtype name or torch dtype ("bfloat16" -> 2)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ConfigError(f"dtype {dtype!r}: use one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


@dataclass(frozen=True)
class ModelShape:
    """A Gemma text model's sizes: all a plan needs to know of it."""

    name: str
    n_layers: int
    d_model: int
    d_vocab: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    dtype: str = "float32"
    tied: bool = True
    """Gemma ties the unembedding to the embedding (one matrix in memory)."""

    def __post_init__(self) -> None:
        for key in ("n_layers", "d_model", "d_vocab", "d_mlp", "n_heads", "n_kv_heads", "d_head"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model {key} must be a positive int, got {value!r}")
        dtype_bytes(self.dtype)

    @property
    def layer_params(self) -> int:
        """Parameters of one block: q/k/v/o, the gated MLP, four norms and the q/k norms."""
        d, h = self.d_model, self.d_head
        attn = 2 * d * self.n_heads * h + 2 * d * self.n_kv_heads * h
        return attn + 3 * d * self.d_mlp + 4 * d + 2 * h

    @property
    def params(self) -> int:
        embed = self.d_vocab * self.d_model * (1 if self.tied else 2)
        return embed + self.n_layers * self.layer_params + self.d_model

    @property
    def bytes_per_param(self) -> int:
        return dtype_bytes(self.dtype)

    def to_dict(self) -> dict:
        return {**asdict(self), "params": self.params}


@dataclass(frozen=True)
class SAEShape:
    """One SAE's sizes and where it reads."""

    name: str
    d_in: int
    d_sae: int
    layer: int
    """Block whose output (or input) the SAE reads; -1 for the embedding."""
    l0: float = DEFAULT_L0
    """Features active per token (the registry's figure where it has one)."""
    d_out: int | None = None
    dtype: str = "float32"
    residual: bool = True
    """Whether it reads (and so rewrites) the residual stream: a graph's backward pass stops at
    its site; a transcoder's MLP output leaves the stream running through."""

    @property
    def params(self) -> int:
        d_out = self.d_out or self.d_in
        return self.d_sae * (self.d_in + d_out + 2) + d_out

    def to_dict(self) -> dict:
        return {**asdict(self), "params": self.params}


def _known(name: str) -> tuple[Any, tuple[int, ...]] | None:
    name = _ALIASES.get(name, name.removeprefix("google/"))
    for k in known_models():
        if name in (k.name, k.hub_id.removeprefix("google/")):
            base = k.name.removesuffix("-it").removesuffix("-pt")
            return k, _ARCH[base]
    return None


def _from_hf_config(cfg: Mapping[str, Any], name: str, dtype: str) -> ModelShape:
    text = cfg.get("text_config") or cfg
    try:
        heads = int(text["num_attention_heads"])
        return ModelShape(
            name=name, n_layers=int(text["num_hidden_layers"]), d_model=int(text["hidden_size"]),
            d_vocab=int(text.get("vocab_size") or cfg.get("vocab_size")),
            d_mlp=int(text["intermediate_size"]), n_heads=heads,
            n_kv_heads=int(text.get("num_key_value_heads", heads)),
            d_head=int(text.get("head_dim") or text["hidden_size"] // heads), dtype=dtype,
            tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))))
    except (KeyError, TypeError, ValueError) as exc:
        raise UnknownModelError(f"{name}: config.json lacks {exc}; point at a Gemma checkpoint "
                                "folder or pass a config dict (layers, d_model, vocab)") from None


def _from_dict(d: Mapping[str, Any], dtype: str) -> ModelShape:
    def pick(*keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in d:
                return d[k]
        if default is None:
            raise ConfigError(f"model config {dict(d)!r} needs {keys[0]!r} (also accepted: "
                              f"{', '.join(keys[1:])}); e.g. {{'layers': 26, 'd_model': 2304, "
                              "'vocab': 256000, 'dtype': 'bfloat16'}")
        return default

    d_model = int(pick("d_model", "hidden_size"))
    d_head = int(pick("d_head", "head_dim", default=min(256, d_model)))
    heads = int(pick("n_heads", "num_attention_heads", default=max(1, d_model // d_head)))
    return ModelShape(
        name=str(d.get("name", "custom")), n_layers=int(pick("layers", "n_layers",
                                                             "num_hidden_layers")),
        d_model=d_model, d_vocab=int(pick("vocab", "d_vocab", "vocab_size")),
        d_mlp=int(pick("d_mlp", "intermediate_size", default=4 * d_model)), n_heads=heads,
        n_kv_heads=int(pick("n_kv_heads", "num_key_value_heads", default=max(1, heads // 2))),
        d_head=d_head, dtype=str(d.get("dtype", dtype)).removeprefix("torch."),
        tied=bool(d.get("tied", True)))


def model_shape(model: Any, dtype: str = "float32") -> ModelShape:
    """The `ModelShape` of a model spec, config or loaded model (nothing is loaded).

    Args:
        model: a short name (`gemma-2-2b`), a `google/...` id of a known model, "bundled", a local
            checkpoint folder, a dict (`layers`, `d_model`, `vocab`, optional `dtype`, `d_mlp`,
            `n_heads`, `n_kv_heads`, `d_head`), a transformers config, or a loaded model.
        dtype: the dtype the weights will be loaded in (a dict or model may say otherwise).

    Raises:
        UnknownModelError: a name scope does not know, or a folder without a Gemma config.json.
    """
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, Mapping):
        return _from_dict(model, dtype)
    if hasattr(model, "to_dict") and hasattr(model, "model_type"):  # a transformers config
        return _from_hf_config(model.to_dict(), getattr(model, "name_or_path", "") or "custom",
                               dtype)
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_model"):  # a loaded TransformerLens model
        p = next(model.parameters())
        return ModelShape(
            name=str(cfg.model_name), n_layers=int(cfg.n_layers), d_model=int(cfg.d_model),
            d_vocab=int(cfg.d_vocab), d_mlp=int(cfg.d_mlp), n_heads=int(cfg.n_heads),
            n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
            d_head=int(cfg.d_head), dtype=str(p.dtype).removeprefix("torch."))
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path}: no config.json; pass a Hugging Face checkpoint "
                                    "folder, a short name (see `scope models`) or a config dict")
        return _from_hf_config(json.loads((path / "config.json").read_text()), path.name, dtype)
    known = _known(text)
    if known is None:
        names = [BUNDLED, *(k.name for k in known_models())]
        raise UnknownModelError(
            f"unknown model {text!r}.{suggest(text, names)} The planner knows the short names "
            "of `scope models`, 'bundled' and local checkpoint folders; for any other model pass "
            "its sizes: plan(model={'layers': 26, 'd_model': 2304, 'vocab': 256000}, ...)")
    k, (vocab, d_mlp, heads, kv, d_head) = known
    return ModelShape(name=k.name, n_layers=k.n_layers, d_model=k.d_model, d_vocab=vocab,
                      d_mlp=d_mlp, n_heads=heads, n_kv_heads=kv, d_head=d_head, dtype=dtype)


def _layer_of(hook: str | None, default: int) -> int:
    if not hook:
        return default
    layer = hook_layer(hook)
    return -1 if layer is None else layer


def _trained_l0(extra: Mapping) -> float:
    """A loaded SAE's L0: its config's `l0`, else the held-out L0 scope's trainer reported
    (`report.l0` for a transcoder, `report.heldout.l0` for an SAE), else `DEFAULT_L0`."""
    report = extra.get("report") if isinstance(extra.get("report"), Mapping) else {}
    held = report.get("heldout") if isinstance(report.get("heldout"), Mapping) else {}
    for value in (extra.get("l0"), report.get("l0"), held.get("l0")):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return float(DEFAULT_L0)


def _residual(hook: str | None) -> bool:
    """A site on the residual stream (no hook name: a residual SAE, the common case)."""
    return hook is None or "resid" in str(hook)


def _from_cfg_json(path: Path) -> SAEShape:
    raw = json.loads(path.read_text())
    c = raw.get("scope", raw)
    meta = raw.get("metadata", {})
    hook = c.get("hook_name") or meta.get("hook_name")
    return SAEShape(name=str(path.parent), d_in=int(c["d_in"]), d_sae=int(c["d_sae"]),
                    layer=_layer_of(hook, 0), d_out=c.get("d_out"),
                    l0=_trained_l0(c.get("extra") if isinstance(c.get("extra"), Mapping) else {}),
                    dtype=str(c.get("dtype", "float32")), residual=_residual(hook))


def sae_shape(sae: Any, dtype: str = "float32") -> SAEShape:
    """The `SAEShape` of an SAE spec, dict or loaded SAE (nothing is downloaded).

    Args:
        sae: `release/sae_id` (the registry gives width, d_in, layer and L0), "bundled" or
            "bundled/<name>", a local SAE folder with `cfg.json`, a dict (`d_in`, `d_sae`, and
            `layer` or `hook_name`; optional `l0`, `d_out`), or a loaded JumpReLUSAE.
        dtype: the dtype its weights will have.

    Raises:
        UnknownSAEError: a release or id the registry does not hold, or a path without cfg.json.
    """
    if isinstance(sae, SAEShape):
        return sae
    if isinstance(sae, Mapping):
        try:
            return SAEShape(name=str(sae.get("name", f"width_{sae['d_sae']}")),
                            d_in=int(sae["d_in"]), d_sae=int(sae["d_sae"]),
                            layer=int(sae["layer"]) if "layer" in sae
                            else _layer_of(sae.get("hook_name"), 0),
                            l0=float(sae.get("l0", DEFAULT_L0)), d_out=sae.get("d_out"),
                            dtype=str(sae.get("dtype", dtype)),
                            residual=_residual(sae.get("hook_name")))
        except KeyError as exc:
            raise ConfigError(f"SAE config {dict(sae)!r} needs {exc}; e.g. {{'d_in': 2304, "
                              "'d_sae': 65536, 'layer': 12, 'l0': 70}") from None
    cfg = getattr(sae, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_sae"):
        return SAEShape(name=cfg.name, d_in=cfg.d_in, d_sae=cfg.d_sae,
                        layer=_layer_of(cfg.hook_name, 0), d_out=cfg.d_out,
                        l0=_trained_l0(cfg.extra),
                        dtype=str(sae.W_enc.dtype).removeprefix("torch."),
                        residual=_residual(cfg.hook_name))
    text = os.fspath(sae)
    if text == BUNDLED or text.startswith(BUNDLED + "/"):
        from scope.saes.loading import BUNDLED_DIR, BUNDLED_ROOT

        folder = BUNDLED_DIR if text == BUNDLED else BUNDLED_ROOT / text.split("/", 1)[1]
        if not (folder / "cfg.json").is_file():
            raise UnknownSAEError(f"no bundled SAE {text!r}; 'bundled' is the demo SAE")
        return _from_cfg_json(folder / "cfg.json")
    path = Path(text).expanduser()
    if path.exists():
        cfg_json = path / "cfg.json" if path.is_dir() else path.with_name("cfg.json")
        if not cfg_json.is_file():
            raise UnknownSAEError(f"{path}: no cfg.json next to the weights; pass the SAE's "
                                  "sizes instead: {'d_in': ..., 'd_sae': ..., 'layer': ...}")
        return _from_cfg_json(cfg_json)
    split = releases.split_spec(text)
    if split is None:
        head = text.partition("/")[0]
        releases.get_release(head)  # an unknown release: UnknownSAEError with close names
        raise UnknownSAEError(f"{text!r}: expected RELEASE/SAE_ID, e.g. "
                              "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    entry = releases.resolve(*split)
    info = entry.info
    return SAEShape(name=text, d_in=int(info["d_in"]), d_sae=int(info["d_sae"]),
                    layer=_layer_of(info.get("hook_name"), int(info.get("layer") or 0)),
                    l0=float(info.get("l0") or DEFAULT_L0), d_out=info.get("d_out"), dtype=dtype,
                    residual=_residual(info.get("hook_name")))
