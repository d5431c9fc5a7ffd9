"""Typed configuration of a JumpReLU training run, split by concern.

`DataConfig` says what the SAE reads (model, hook, corpus, token budget), `OptimConfig` how it
is trained (width, sparsity coefficient, learning-rate schedule, STE bandwidth), and `RunConfig`
where the run writes (activation cache, checkpoints, output SAE), and `TranscoderConfig` what a
multi-layer transcoder run adds (layers, sites, skip, streaming). `TrainConfig` bundles the four;
its flat form (`to_flat` / `from_flat`) is what `scope train --config FILE.yaml` reads, one key
per field, and what is written beside the trained weights as `training_config.json`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scope.errors import ConfigError, suggest

_HOOK_RE = re.compile(r"^(hook_\w+|blocks\.\d+\.[\w.]+)$")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
#: the optimisation is fully determined by these config keys; a checkpoint made under others
#: is not resumed
RESUME_KEYS = ("model", "hook_name", "corpus", "ctx", "train_tokens", "d_sae", "l0_coefficient",
               "l0_warmup_steps", "bandwidth", "threshold_init", "lr", "lr_warmup_steps",
               "lr_decay_fraction", "adam_betas", "batch_size", "epochs", "dead_steps",
               "dead_coefficient", "target_l0", "spike_clip", "seed")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0):
            raise ConfigError(f"{type(obj).__name__}.{name} must be > 0, got {value!r}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ConfigError(f"{type(obj).__name__}.{name} must be >= 0, got {value!r}")


@dataclass
class DataConfig:
    """What the SAE reads: the model, the hook site and the token windows it sees."""

    model: str = "bundled"
    """Model spec `load_model` accepts ("bundled" = Gemma 3 270M, offline)."""
    hook_name: str = "blocks.9.hook_resid_post"
    """TransformerLens hook whose activations the SAE reconstructs."""
    corpus: str = "default"
    """Corpus spec `scope.pipeline.corpus` accepts ("default" = the standard library's source text;
    "demo" = the demo corpus, prose and code)."""
    ctx: int = 128
    """Tokens per window, BOS included."""
    train_tokens: int = 2_000_000
    """Activations (BOS and padding excluded) captured from the corpus's train split."""
    eval_tokens: int = 65_536
    """Activations captured from the held-out split for the final report."""
    capture_batch_size: int = 16
    """Windows per model forward pass while capturing."""

    def __post_init__(self) -> None:
        _positive(self, "ctx", "train_tokens", "eval_tokens", "capture_batch_size")
        if self.ctx < 2:
            raise ConfigError("DataConfig.ctx must be >= 2 (BOS plus at least one token)")
        if not _HOOK_RE.match(self.hook_name):
            raise ConfigError(f"DataConfig.hook_name {self.hook_name!r} is not a TransformerLens "
                             "hook name; use e.g. 'blocks.9.hook_resid_post'")


@dataclass
class OptimConfig:
    """How the JumpReLU SAE is trained (Rajamanoharan et al. 2024; Gemma Scope report)."""

    d_sae: int = 4096
    """Number of features."""
    l0_coefficient: float = 1e-3
    """lambda in `loss = ||x - x_hat||^2 + lambda * L0`, in the normalised scale (E||x||^2 = 1)."""
    l0_warmup_steps: int = 200
    """Steps over which lambda rises linearly from 0 to `l0_coefficient`."""
    target_l0: float = 0.0
    """If > 0, after the warmup lambda is nudged (at most 1% a step) towards this mean L0."""
    bandwidth: float = 1e-3
    """Width epsilon of the rectangle kernel of the straight-through estimators (normalised scale)."""
    threshold_init: float = 1e-3
    """Initial threshold of every feature (normalised scale)."""
    lr: float = 7e-5
    """Peak Adam learning rate."""
    lr_warmup_steps: int = 100
    """Steps over which the learning rate rises linearly from 10% to `lr`."""
    lr_decay_fraction: float = 0.2
    """Final fraction of training over which the learning rate decays linearly to 0."""
    adam_betas: tuple[float, float] = (0.0, 0.999)
    """Adam (beta1, beta2); Gemma Scope uses beta1 = 0."""
    batch_size: int = 4096
    """Activations per optimiser step."""
    epochs: float = 1.0
    """Passes over the captured training activations (fractions allowed)."""
    dead_steps: int = 500
    """A feature that has not fired for this many steps counts as dead (and gets the aux loss)."""
    dead_coefficient: float = 0.0
    """Weight of the auxiliary loss `relu(threshold - pre)` that revives dead features; 0 = off."""
    spike_clip: float = 0.0
    """If > 0, scale a step's gradient down to this multiple of its running mean norm."""
    sparse_below: float = 0.05
    """Use the sparse-product step (same gradients) while under this fraction of features fire."""
    seed: int = 0
    """Seed of the initialisation and of the shuffling order."""

    def __post_init__(self) -> None:
        _positive(self, "d_sae", "bandwidth", "threshold_init", "lr", "batch_size", "epochs",
                  "dead_steps")
        _non_negative(self, "l0_coefficient", "l0_warmup_steps", "lr_warmup_steps", "seed",
                      "dead_coefficient", "sparse_below", "target_l0", "spike_clip")
        if not 0.0 <= self.lr_decay_fraction <= 1.0:
            raise ConfigError("OptimConfig.lr_decay_fraction must lie in [0, 1], "
                             f"got {self.lr_decay_fraction!r}")
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                      and 0.0 <= b < 1.0 for b in betas):
            raise ConfigError(f"OptimConfig.adam_betas must be two numbers in [0, 1), got "
                             f"{self.adam_betas!r}")
        self.adam_betas = tuple(float(b) for b in betas)  # YAML gives a list


@dataclass
class RunConfig:
    """Where the run writes and how often it reports and checkpoints."""

    out: str = "runs/train/sae"
    """Folder of the trained SAE (native format: cfg.json + sae_weights.safetensors)."""
    run_dir: str = "runs/train"
    """Folder of the activation cache, checkpoints and the progress log."""
    checkpoint_every: int = 200
    """Optimiser steps between checkpoints (a checkpoint is also written at the end)."""
    resume: bool = True
    """Resume from the checkpoint in `run_dir` when one matches this config."""
    log_every: int = 25
    """Optimiser steps between progress lines (loss, L0, FVU, dead fraction)."""
    save_dtype: str = "float32"
    """Dtype of the saved weights: float32, float16 or bfloat16."""
    release: str = ""
    """`cfg.release` of the saved SAE (e.g. "bundled"); empty for a local file."""
    sae_id: str = ""
    """`cfg.sae_id` of the saved SAE."""
    eval_lm_windows: int = 64
    """Held-out windows used for the delta-LM-loss figure of the report (0 = skip it)."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""

    def __post_init__(self) -> None:
        _positive(self, "checkpoint_every", "log_every")
        _non_negative(self, "eval_lm_windows", "threads")
        for name in ("out", "run_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"RunConfig.{name} must be a folder path, got {value!r}")
            path = Path(value).expanduser()
            blocker = next((p for p in (path, *path.parents) if p.exists()), None)
            if blocker is not None and not blocker.is_dir():
                raise ConfigError(f"RunConfig.{name} {value!r}: {blocker} is a file, not a "
                                  "folder; choose a folder path")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"RunConfig.save_dtype must be one of {SAVE_DTYPES}, "
                             f"got {self.save_dtype!r}")


#: sites of a Gemma Scope 2 transcoder at layer L (the MLP's normalised input -> its output)
TRANSCODER_IN = "blocks.{L}.ln2.hook_normalized_with_gain"
TRANSCODER_OUT = "blocks.{L}.hook_mlp_out"
KINDS = ("sae", "transcoder")


@dataclass
class TranscoderConfig:
    """What a transcoder run adds: which layers, which sites, and how the capture is streamed.

    One forward pass per batch of windows captures every layer's input and output; all layers'
    transcoders train on that one capture (`scope.train.transcoders`).
    """

    kind: str = "sae"
    """"sae" (one SAE at `hook_name`) or "transcoder" (one transcoder per layer in `layers`)."""
    layers: str = "all"
    """Layers to train transcoders for: "all", or a list such as "0,3,5" or "0-8"."""
    hook_in: str = TRANSCODER_IN
    """Site each transcoder reads ({L} = layer); default the Gemma Scope 2 transcoder input."""
    hook_out: str = TRANSCODER_OUT
    """Site each transcoder predicts ({L} = layer)."""
    skip: bool = False
    """Learn a linear skip `x @ W_skip` beside the features (Gemma Scope 2 affine transcoders)."""
    outlier_prefix: int = 1
    """Leading positions never trained on (1 = BOS only; see scope.saes.outliers)."""
    segment_windows: int = 64
    """Windows per captured segment, a multiple of capture_batch_size (shuffle/checkpoint unit)."""
    workers: int = 2
    """1: capture and train in turn in one process; 2: capture in a child process meanwhile."""

    def __post_init__(self) -> None:
        _positive(self, "outlier_prefix", "segment_windows")
        if self.kind not in KINDS:
            raise ConfigError(f"TranscoderConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.workers not in (1, 2):
            raise ConfigError(f"TranscoderConfig.workers must be 1 or 2, got {self.workers!r}")
        for name in ("hook_in", "hook_out"):
            value = getattr(self, name)
            if not isinstance(value, str) or "{L}" not in value or not _HOOK_RE.match(
                    value.replace("{L}", "0")):
                raise ConfigError(f"TranscoderConfig.{name} {value!r} must be a TransformerLens "
                                  "hook name with {L} for the layer, e.g. " + TRANSCODER_OUT)
        parse_layers(self.layers, None)

    def layer_list(self, n_layers: int) -> list[int]:
        """The layers, shallowest first, checked against the model's `n_layers`."""
        return parse_layers(self.layers, n_layers)


def parse_layers(spec: str, n_layers: int | None) -> list[int]:
    """"all" / "0,3,5" / "0-8" -> sorted layer indices (ConfigError for anything else)."""
    text = str(spec).replace(" ", "")
    if text == "all":
        return list(range(n_layers)) if n_layers is not None else []
    layers: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if m is None:
            raise ConfigError(f"layers {spec!r}: expected 'all', '0,3,5' or '0-8'")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        layers.update(range(lo, hi + 1))
    if n_layers is not None and (not layers or max(layers) >= n_layers):
        raise ConfigError(f"layers {spec!r}: the model has layers 0..{n_layers - 1}")
    return sorted(layers)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """`value` with the type of the field's default, or ConfigError naming the field.

    Float fields take ints and numeric strings (YAML 1.1 reads `7e-5` as a string); int fields
    take only ints, bool fields only booleans, string fields only strings.
    """
    kind = type(default)
    if kind is float and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    expected = {float: "a number", int: "an integer", bool: "a boolean (true/false)",
                str: "a string", tuple: f"a list of {len(default)} numbers"}.get(kind, kind.__name__)
    raise ConfigError(f"training option {name!r} = {value!r}: expected {expected}")


@dataclass
class TrainConfig:
    """A whole training run: data, optimisation and output."""

    data: DataConfig = field(default_factory=DataConfig)
    """What the SAE reads."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """How it is trained."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run writes."""
    transcoder: TranscoderConfig = field(default_factory=TranscoderConfig)
    """Transcoder runs: layers, sites, skip, streaming."""

    def to_flat(self) -> dict[str, Any]:
        """One key per field of every section (the YAML / CLI form); JSON-serialisable."""
        flat: dict[str, Any] = {}
        for section in (self.data, self.optim, self.run, self.transcoder):
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                flat[f.name] = list(value) if isinstance(value, tuple) else value
        return flat

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrainConfig:
        """Build from a flat mapping (YAML keys with dashes or underscores); unknown keys raise.

        Args:
            flat: field name -> value; missing fields take their defaults.

        Returns:
            The validated config.
        """
        sections = {name: {f.name for f in dataclasses.fields(kind)} for name, kind in _SECTIONS}
        kwargs: dict[str, dict[str, Any]] = {name: {} for name in sections}
        for key, value in flat.items():
            name = str(key).replace("-", "_")
            owner = next((s for s, names in sections.items() if name in names), None)
            if owner is None:
                known = sorted(n for names in sections.values() for n in names)
                raise ConfigError(f"unknown training option {key!r}.{suggest(name, known)} "
                                  f"Known: {', '.join(known)}")
            kwargs[owner][name] = _coerce(name, value, _DEFAULTS[owner][name])
        return cls(DataConfig(**kwargs["data"]), OptimConfig(**kwargs["optim"]),
                   RunConfig(**kwargs["run"]), TranscoderConfig(**kwargs["transcoder"]))

    @staticmethod
    def field_docs() -> dict[str, tuple[Any, str]]:
        """field name -> (default, one-line help), for generating CLI flags."""
        import ast
        import inspect

        docs: dict[str, tuple[Any, str]] = {}
        for _, kind in _SECTIONS:
            tree = ast.parse(inspect.getsource(kind))
            body = tree.body[0].body  # type: ignore[attr-defined]
            for node, nxt in zip(body, body[1:], strict=False):
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and (
                        isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                    docs[node.target.id] = (None, str(nxt.value.value).strip())
            defaults = kind()
            for f in dataclasses.fields(kind):
                help_text = docs.get(f.name, (None, ""))[1]
                docs[f.name] = (getattr(defaults, f.name), help_text)
        return docs


_SECTIONS = (("data", DataConfig), ("optim", OptimConfig), ("run", RunConfig),
             ("transcoder", TranscoderConfig))
_DEFAULTS = {name: dataclasses.asdict(kind()) for name, kind in _SECTIONS}
