"""The resolved configuration of an extraction run, and every check made before it writes.

`run_config` validates the arguments of `scope.extract` and returns the typed
`scope.store.schema.RunConfig` written into the manifest (resuming and merging require it to be
equal); the site and corpus checks run before anything is written to `--out`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scope.errors import CorpusError, ShapeMismatchError
from scope.pipeline.corpus import Corpus
from scope.store import schema as S


def check_corpus(corpus: Corpus) -> None:
    """Fail before anything is written when the corpus is missing or holds no text."""
    try:
        next(iter(corpus.documents()))
    except StopIteration:
        raise CorpusError(f"corpus {corpus.source!r} holds no readable text") from None


def check_sites(model: Any, saes: Sequence[Any]) -> list[str]:
    """Validate hook names and that each SAE's width matches its site; return the sites."""
    from scope.model.activations import site_width, validate_hook_names

    hooks = validate_hook_names(model, list(dict.fromkeys(s.cfg.hook_name for s in saes)))
    for sae in saes:
        width = site_width(model, sae.cfg.hook_name)
        if width != sae.cfg.d_in:
            raise ShapeMismatchError(
                f"SAE {sae.cfg.name!r} reads d_in={sae.cfg.d_in} but its hook "
                f"{sae.cfg.hook_name} on model {model.cfg.model_name} has width {width}; use an "
                f"SAE made for this model and site")
    return hooks


def resolve_sae_specs(saes: Sequence[Any], given: Sequence[str | None] | None) -> list[str | None]:
    if given is not None:
        if len(given) != len(saes):
            raise ShapeMismatchError(f"{len(given)} sae_specs for {len(saes)} SAEs")
        return list(given)
    specs = []
    for sae in saes:
        c = sae.cfg
        spec = getattr(sae, "scope_spec", None) or c.extra.get("spec")
        if spec is None and c.release == "bundled":
            spec = "bundled"
        elif spec is None and c.release and c.sae_id:
            spec = f"{c.release}/{c.sae_id}"
        elif spec is None:
            spec = c.extra.get("path") or c.extra.get("source")
        specs.append(spec)
    return specs


def run_config(model, saes, specs, corpus, tokens, ctx, batch_size, top_k, shard, model_spec,
               logits: bool = True) -> S.RunConfig:
    """The resolved run configuration (written into the manifest; resuming requires equality)."""
    if int(ctx) < 2:
        raise CorpusError(f"--ctx {ctx}: a window is BOS plus at least one token; use --ctx 2 or "
                          "more (the default is 128)")
    if tokens is not None and int(tokens) < 1:
        raise CorpusError(f"--tokens {tokens}: need a positive token budget")
    if batch_size < 1 or top_k < 1:
        raise CorpusError(f"batch size {batch_size} and top-k {top_k} must be >= 1")
    names, seen = [], {}
    for sae in saes:
        name = sae.cfg.name
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    dtype = next(model.parameters()).dtype
    return S.RunConfig(
        model=model_spec or getattr(model, "scope_spec", None) or model.cfg.model_name,
        saes=[{"name": n, "spec": sp, "hook_name": s.cfg.hook_name, "d_sae": s.cfg.d_sae,
               "dtype": str(s.W_enc.dtype).removeprefix("torch.")}
              for n, sp, s in zip(names, specs, saes, strict=True)],
        corpus=corpus.describe(), tokens=None if tokens is None else int(tokens),
        ctx=int(ctx), batch_size=int(batch_size), top_k=int(top_k),
        shard=None if shard is None or shard == (0, 1) else list(shard),
        model_dtype=str(dtype).removeprefix("torch."), logits=bool(logits))


def parse_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in shard.split("/")) if isinstance(shard, str) else map(int, shard)
    except (ValueError, TypeError):
        raise CorpusError(f"--shard {shard!r}: expected i/n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise CorpusError(f"--shard {i}/{n}: need 0 <= i < n")
    return i, n
