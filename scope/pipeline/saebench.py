"""SAEBench's core eval JSON, spelled once: `write_saebench_json(report, sae, path)`.

The layout is SAEBench's (`sae_bench.evals.core`, eval_type_id "core"): `eval_config`,
`eval_id`, `datetime_epoch_millis`, `eval_result_metrics` with the categories
`model_behavior_preservation`, `model_performance_preservation`, `reconstruction_quality`,
`shrinkage`, `sparsity`, `token_stats`, `misc_metrics`, per-feature `eval_result_details`, and
the SAE's SAELens config in `sae_cfg_dict`. The values are the `EvalReport`'s: its L0 and FVU
(explained variance = 1 - FVU), and its losses under SAEBench's position convention
(`report.saebench`; scope's own convention, ΔLM included, goes to `eval_result_unstructured`).
Values scope cannot compute are null, never NaN (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from scope.base.atomic import atomic_write_text
from scope.base.version import __version__
from scope.errors import SAEBenchPathError
from scope.saes.formats.native import saelens_cfg_dict, saelens_model_name
from scope.saes.sae import JumpReLUSAE

EVAL_TYPE_ID = "core"
#: category -> (SAEBench field, key in the metrics scope computed), in SAEBench's order
CATEGORIES: dict[str, tuple[tuple[str, str], ...]] = {
    "model_behavior_preservation": (
        ("kl_div_score", "kl_div_score"), ("kl_div_with_ablation", "kl_div_ablated"),
        ("kl_div_with_sae", "kl_div")),
    "model_performance_preservation": (
        ("ce_loss_score", "ce_loss_score"), ("ce_loss_with_ablation", "ablated_loss"),
        ("ce_loss_with_sae", "spliced_loss"), ("ce_loss_without_sae", "clean_loss")),
    "reconstruction_quality": (
        ("explained_variance", "explained_variance"),
        ("explained_variance_legacy", "explained_variance_legacy"), ("mse", "mse"),
        ("cossim", "cossim")),
    "shrinkage": (
        ("l2_norm_in", "l2_norm_in"), ("l2_norm_out", "l2_norm_out"), ("l2_ratio", "l2_ratio"),
        ("relative_reconstruction_bias", "relative_reconstruction_bias")),
    "sparsity": (("l0", "l0"), ("l1", "l1")),
    "token_stats": (
        ("total_tokens_eval_reconstruction", "n_positions"),
        ("total_tokens_eval_sparsity_variance", "n_positions")),
    "misc_metrics": (
        ("freq_over_1_percent", "freq_over_1_percent"),
        ("freq_over_10_percent", "freq_over_10_percent"),
        ("normalized_freq_over_1_percent", "normalized_freq_over_1_percent"),
        ("normalized_freq_over_10_percent", "normalized_freq_over_10_percent"),
        ("average_max_encoder_cosine_sim", "average_max_encoder_cosine_sim"),
        ("average_max_decoder_cosine_sim", "average_max_decoder_cosine_sim"),
        ("frac_alive", "frac_alive")),
}
DETAIL_FIELDS = ("index", "feature_density", "consistent_activation_heuristic", "encoder_bias",
                 "encoder_norm", "encoder_decoder_cosine_sim", "max_decoder_cosine_sim",
                 "max_encoder_cosine_sim")
#: above this width the all-pairs cosine pass (d_sae^2 * d_in) is skipped (its fields are null)
MAX_COSINE_WIDTH = 65536
POSITIONS = ("SAEBench/SAELens: a prediction counts when its input position is not a special "
             "token (BOS -> first token is left out); KL over every non-special input position")


def check_path(path: str | os.PathLike) -> Path:
    """The JSON's path, refused up front (before any evaluation) when it cannot be a file.

    Raises:
        SAEBenchPathError: a folder, or a path under a regular file.
    """
    path = Path(path)
    if path.is_dir():
        raise SAEBenchPathError(f"--saebench-json {path}: is a folder; give a file name, e.g. "
                                f"{path / 'core_eval.json'}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise SAEBenchPathError(f"--saebench-json {path}: {parent} is a file, not a folder; "
                                    "choose a path in a folder")
    return path


def _max_cosine(vectors: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[F] largest cosine of each row of vectors [F, D] with any other row (chunked)."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=-1)
    out = torch.empty(len(unit), dtype=torch.float64)
    for start in range(0, len(unit), chunk):
        sims = unit[start:start + chunk] @ unit.T  # [chunk, F]
        rows = torch.arange(start, min(start + chunk, len(unit)))
        sims[rows - start, rows] = -math.inf
        out[start:start + chunk] = sims.max(-1).values.cpu()
    return out


def feature_metrics(report: Any, sae: JumpReLUSAE) -> dict[str, torch.Tensor | None]:
    """Per-feature density and SAEBench's weight-based figures, as [d_sae] tensors."""
    b = report.saebench
    density = b["fires"].double() / report.n_tokens
    prompts = b["prompts"].double()
    W_enc = sae.W_enc.detach().double().cpu()  # [d_in, d_sae]
    W_dec = sae.W_dec.detach().double().cpu()  # [d_sae, d_out]
    out: dict[str, torch.Tensor | None] = {
        "feature_density": density,
        # tokens per sequence it fired in; 0 for a feature that never fired (SAELens: 0/0)
        "consistent_activation_heuristic": torch.where(prompts > 0, b["fires"] / prompts.clamp(min=1),
                                                       0.0),
        "encoder_bias": sae.b_enc.detach().double().cpu(),
        "encoder_norm": W_enc.norm(dim=0),
        "encoder_decoder_cosine_sim": None, "max_decoder_cosine_sim": None,
        "max_encoder_cosine_sim": None,
    }
    if sae.d_in == sae.d_out:
        out["encoder_decoder_cosine_sim"] = torch.nn.functional.cosine_similarity(W_enc.T, W_dec)
    if sae.d_sae <= MAX_COSINE_WIDTH:
        out["max_decoder_cosine_sim"] = _max_cosine(W_dec)
        out["max_encoder_cosine_sim"] = _max_cosine(W_enc.T)
    return out


def _value(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _mean(t: torch.Tensor | None) -> float | None:
    return None if t is None else float(t.mean())


def saebench_dict(report: Any, sae: JumpReLUSAE, *, dataset: str = "", llm_dtype: str = "",
                  model_name: str = "", details: bool = True) -> dict[str, Any]:
    """SAEBench's core eval output for an `EvalReport` of `sae` (see the module docstring)."""
    b = report.saebench
    feats = feature_metrics(report, sae)
    density = feats["feature_density"]
    total = float(density.sum())
    values = {**b, "l0": report.l0, "explained_variance": 1.0 - report.fvu,
              "frac_alive": 1.0 - report.dead_fraction,
              "average_max_encoder_cosine_sim": _mean(feats["max_encoder_cosine_sim"]),
              "average_max_decoder_cosine_sim": _mean(feats["max_decoder_cosine_sim"])}
    for pct, cut in (("1", 0.01), ("10", 0.1)):
        values[f"freq_over_{pct}_percent"] = float((density > cut).double().mean())
        values[f"normalized_freq_over_{pct}_percent"] = (
            float(density[density > cut].sum()) / total if total > 0 else 0.0)
    metrics = {cat: {name: _value(values.get(key)) for name, key in fields}
               for cat, fields in CATEGORIES.items()}
    rows = []
    if details:
        cols = {k: (v.tolist() if v is not None else [None] * sae.d_sae) for k, v in feats.items()}
        rows = [{"index": i, **{k: _value(cols[k][i]) for k in DETAIL_FIELDS[1:]}}
                for i in range(sae.d_sae)]
    cfg = sae.cfg
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": {
            "model_name": saelens_model_name(model_name or cfg.model_name),
            "llm_dtype": llm_dtype, "batch_size_prompts": b["batch_size"],
            "n_eval_reconstruction_batches": math.ceil(report.n_sequences / b["batch_size"]),
            "n_eval_sparsity_variance_batches": math.ceil(report.n_sequences / b["batch_size"]),
            "dataset": dataset, "context_size": b["ctx"],
            "compute_kl": True, "compute_ce_loss": True, "compute_l2_norms": True,
            "compute_sparsity_metrics": True, "compute_variance_metrics": True,
            "compute_featurewise_density_statistics": True,
            "compute_featurewise_weight_based_metrics": sae.d_sae <= MAX_COSINE_WIDTH,
            "exclude_special_tokens_from_reconstruction": True, "verbose": False,
        },
        "eval_id": str(uuid.uuid4()),
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": metrics,
        "eval_result_details": rows,
        "sae_bench_commit_hash": f"not run by SAEBench: scope {__version__}",
        "sae_lens_id": cfg.sae_id or None,
        "sae_lens_release_id": cfg.release or None,
        "sae_lens_version": None,
        "sae_cfg_dict": saelens_cfg_dict(cfg, has_skip=sae.affine_skip is not None),
        "eval_result_unstructured": {
            "tool": f"scope {__version__}", "positions": POSITIONS,
            "scope_report": {k: _value(v) for k, v in report.as_dict().items()},
            "scope_positions": "scope: a prediction counts when its target token is not special "
                               "(BOS -> first token counts); see docs/saes.md",
        },
    }


def write_saebench_json(report: Any, sae: JumpReLUSAE, path: str | os.PathLike,
                        **kwargs: Any) -> Path:
    """Write `saebench_dict(report, sae, **kwargs)` to `path` atomically; returns the path.

    Raises:
        SAEBenchPathError: `path` is a folder (checked before anything is written).
    """
    path = check_path(path)
    atomic_write_text(path, json.dumps(saebench_dict(report, sae, **kwargs), indent=2) + "\n")
    return path
