"""`scope eval`: how well an SAE reconstructs a model's activations (L0, FVU, delta LM loss, CE loss
score, KL), optionally written as SAEBench's core eval JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from scope.cli.common import command, say
from scope.cli.extract import check_corpus
from scope.cli.flags import CTX, FILE, POSITIVE


@dataclass
class Eval:
    """Evaluate an SAE on a corpus: L0, fraction of variance unexplained, delta LM loss."""

    model: str = "bundled"
    """model name, hub id, local dir, .gguf or 'bundled'"""
    sae: str = "bundled"
    """RELEASE/SAE_ID, a local path, or 'bundled'"""
    corpus: str = "default"
    """'default' (the Python standard library's text), a file or folder of .txt/.jsonl/.parquet,
    or hf:DATASET"""
    split: Literal["all", "train", "heldout"] | None = None
    """document split (default: heldout for the default corpus, text `scope train` never saw;
    all for a corpus you give)"""
    tokens: POSITIVE = 32768
    """token budget"""
    ctx: CTX = 128
    """context length incl. BOS"""
    batch_size: POSITIVE = 8
    """sequences per forward pass"""
    json: FILE | None = None
    """also write the report to this JSON file"""
    saebench_json: Path | None = None
    """also write SAEBench's core eval JSON (eval_result_metrics, ...) to this file; its losses
    follow SAEBench's position convention (docs/saes.md)"""


@command("eval", Eval, example="scope eval --model bundled --sae bundled --tokens 32768 "
         "--split heldout")
def run_eval(cfg: Eval) -> int:
    from scope.model.load import load_model
    from scope.pipeline.corpus import Corpus
    from scope.pipeline.evals import evaluate
    from scope.pipeline.saebench import check_path, write_saebench_json
    from scope.saes.loading import load_sae

    split = cfg.split or ("heldout" if cfg.corpus == "default" else "all")
    check_corpus(cfg.corpus)
    saebench = check_path(cfg.saebench_json) if cfg.saebench_json is not None else None
    model = load_model(cfg.model)
    sae = load_sae(cfg.sae, model=model)
    corpus = Corpus(source=cfg.corpus, split=split)
    report = evaluate(model, sae, corpus, ctx=cfg.ctx, max_tokens=cfg.tokens,
                      batch_size=cfg.batch_size)
    for key, value in report.as_dict().items():
        say(f"{key:>14}  {value:.6g}" if isinstance(value, float) else f"{key:>14}  {value}")
    if cfg.json:
        from scope.base.atomic import atomic_write_text

        atomic_write_text(cfg.json, json.dumps(report.as_dict(), indent=2) + "\n")
    if saebench is not None:
        write_saebench_json(report, sae, saebench, dataset=cfg.corpus,
                            llm_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                            model_name=model.cfg.model_name)
        say(f"SAEBench core eval JSON: {saebench}")
    return 0
