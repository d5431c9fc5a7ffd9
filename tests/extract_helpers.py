"""Small synthetic SAEs and a brute-force reference for extraction tests."""

from __future__ import annotations

import numpy as np
import torch

from scope.model.activations import capture
from scope.pipeline.corpus import iter_windows
from scope.saes.sae import JumpReLUSAE, SAEConfig


def synthetic_sae(d_in: int, d_sae: int, hook: str, seed: int = 0, threshold: float = 0.3,
                  **cfg) -> JumpReLUSAE:
    """A random JumpReLU SAE with unit-norm decoder rows and tied encoder."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    config = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=hook, **cfg)
    return JumpReLUSAE(config, W_enc=W_dec.T.clone() * 2.0, W_dec=W_dec,
                       b_enc=0.1 * torch.randn(d_sae, generator=g), b_dec=torch.zeros(d_in),
                       threshold=torch.full((d_sae,), threshold))


def block_encode(sae, x, block: int):
    """JumpReLU features computed `block` columns at a time (as a wide SAE is extracted)."""
    parts = []
    for a in range(0, sae.cfg.d_sae, block):
        pre = x @ sae.W_enc[:, a:a + block] + sae.b_enc[a:a + block]
        parts.append(pre * (pre > sae.threshold[a:a + block]))
    return torch.cat(parts, dim=-1)


def brute_force(model, saes, corpus, ctx, batch_size, tokens=None, encode=None):
    """All windows' feature activations in memory: `(window tokens [W, P], [f [W, P, F]])`.

    Runs the same batches as the extractor (batch composition changes float rounding) and
    zeroes BOS/EOS/pad positions. `encode(sae, x)` defaults to `sae.encode(x)`.
    """
    windows = list(iter_windows(corpus, model.tokenizer, ctx, tokens))
    toks = torch.stack([w.tokens for w in windows])
    hooks = list(dict.fromkeys(s.cfg.hook_name for s in saes))
    feats = [[] for _ in saes]
    with torch.no_grad():
        for start in range(0, len(toks), batch_size):
            acts = capture(model, toks[start : start + batch_size], hooks)
            for j, sae in enumerate(saes):
                x = acts[sae.cfg.hook_name]
                feats[j].append(sae.encode(x) if encode is None else encode(sae, x))
    tok = model.tokenizer
    special = torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
    mask = ~torch.isin(toks, special)
    return toks.numpy(), [(torch.cat(f) * mask[..., None]).numpy() for f in feats]


def store_arrays(path) -> dict[str, bytes]:
    """Every array file of a store's current generation, by relative path (for equality)."""
    import json
    from pathlib import Path

    root = Path(path)
    gen = root / json.loads((root / "manifest.json").read_text())["data"]
    return {p.relative_to(gen).as_posix(): p.read_bytes() for p in sorted(gen.rglob("*"))
            if p.is_file()}


def manifest_core(path) -> dict:
    """The manifest without the keys that name times or generations."""
    import json
    from pathlib import Path

    m = json.loads((Path(path) / "manifest.json").read_text())
    for k in ("created", "updated", "data"):
        m.pop(k, None)
    return m


def np_hist(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(values, edges[0], edges[-1] * 0.999), edges)[0]


# -- command lines of the hostile suites (tests/test_hostile_*.py) ---------------------------------
HOOK = "blocks.1.hook_resid_post"


def cli_model() -> str:
    """The tiny Gemma 3 checkpoint folder (written once per test process)."""
    from builders import _cached_dir

    return str(_cached_dir("gemma3"))


def cli_files(root) -> None:
    """A small corpus, two SAEs with the same hook and width (so the same name), a file."""
    from builders import TINY_TEXT

    (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
    (root / "a_file").write_text("not a folder")
    synthetic_sae(64, 32, HOOK, seed=3).save(root / "sae")
    synthetic_sae(64, 32, HOOK, seed=4).save(root / "other_sae")
    synthetic_sae(64, 16, HOOK, seed=5).save(root / "narrow_sae")


def cli_override(args: list[str], extra: list[str]) -> list[str]:
    """`args` with flags in `extra` replacing the same flags (a flag followed by its value)."""
    out = list(args)
    i = 0
    while i < len(extra):
        flag = extra[i]
        value = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("--") else None
        if flag in out and value is not None:
            out[out.index(flag) + 1] = value
        else:
            out += [flag] + ([value] if value is not None else [])
        i += 2 if value is not None else 1
    return out


def cli_extract(*extra: str):
    """`scope extract` of cli_files' corpus and SAE into ROOT/out; `{root}` in `extra` expands."""
    def argv(root) -> list[str]:
        args = ["extract", "--model", cli_model(), "--sae", str(root / "sae"), "--corpus",
                str(root / "doc.txt"), "--out", str(root / "out"), "--tokens", "64", "--ctx",
                "16", "--batch-size", "2", "--no-progress"]
        return cli_override(args, [e.format(root=root) for e in extra])
    return argv


def cli_store(root):
    """cli_files in `root`, then `scope extract` of its `sae` into ROOT/out; returns `root`."""
    from scope.cli.main import main

    cli_files(root)
    assert main(cli_extract()(root)) == 0
    return root


def cli_eval(*extra: str):
    def argv(root) -> list[str]:
        args = ["eval", "--model", cli_model(), "--sae", str(root / "sae"), "--corpus",
                str(root / "doc.txt"), "--ctx", "16", "--tokens", "64", "--batch-size", "2"]
        return cli_override(args, [e.format(root=root) for e in extra])
    return argv


def cli_steer(*extra: str):
    def argv(root) -> list[str]:
        args = ["steer", "--model", cli_model(), "--sae", str(root / "sae"), "--feature",
                "3:2.0", "--prompt", "The cat", "--max-new-tokens", "3"]
        return cli_override(args, [e.format(root=root) for e in extra])
    return argv
