"""A small real store for the explorer's tests (labels, explain, Neuronpedia export, list)."""

from __future__ import annotations

import logging
from pathlib import Path

import scope

NEURONPEDIA_ID = "tiny-gemma3/2-test-res-96"
HOOK = "blocks.2.hook_resid_post"
D_SAE = 96


def corpus_texts() -> list[str]:
    """The documents `build_store` extracts over (the logging module's paragraphs + TINY_TEXT)."""
    from builders import TINY_TEXT

    texts = [t for t in Path(logging.__file__).read_text().split("\n\n") if t.strip()][:80]
    return texts + list(TINY_TEXT)


def build_store(root: Path, *, tokens: int = 3072, ctx: int = 32, seed: int = 3) -> Path:
    """Tiny Gemma 3 checkpoint + random JumpReLU SAE (with a Neuronpedia id) -> scope.pipeline.extract."""
    import torch
    from builders import tiny_gemma3_dir
    from sae_builders import jumprelu_weights

    from scope.pipeline.corpus import Corpus
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    model = scope.load_model(str(tiny_gemma3_dir(root / "model")), device="cpu",
                             dtype=torch.float32)
    w = jumprelu_weights(model.cfg.d_model, D_SAE, seed=seed)
    w["threshold"][-4:] = 1e6  # dead features
    cfg = SAEConfig(d_in=model.cfg.d_model, d_sae=D_SAE, hook_name=HOOK,
                    neuronpedia_id=NEURONPEDIA_ID)
    JumpReLUSAE(cfg, **{k: torch.tensor(v) for k, v in w.items()}).save(root / "sae")
    sae = scope.load_sae(str(root / "sae"), model=model)
    scope.extract(model, [sae], Corpus(texts=corpus_texts()), str(root / "store"),
                  tokens=tokens, ctx=ctx, batch_size=8, progress=False,
                  sae_specs=[str(root / "sae")])
    return root / "store"
