"""What attribution accepts: SAE specs, prompts, target tokens, and the positions it leaves out.

Every user mistake here ends in an `AttributionError` that says what to pass instead: a target
that is not exactly one token, an empty prompt, a prompt longer than the model's context, an SAE
whose width does not fit its site. An SAE whose config names another model is used with a
warning (its width fits, so it may be intended; its features will mean little).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int

from scope.errors import AttributionError, ShapeMismatchError
from scope.saes.bundled import expand_sae_specs  # noqa: F401 - re-exported (one expansion)

log = logging.getLogger(__name__)

def token_id(model: Any, token: str | int) -> int:
    """A single token id from an id or a string that tokenizes to exactly one token."""
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise AttributionError(f"target {token!r}: give a token string (e.g. ' Paris') or an id")
    if isinstance(token, int):
        if not 0 <= token < model.cfg.d_vocab:
            raise AttributionError(f"token id {token} is outside the vocabulary "
                                   f"(0..{model.cfg.d_vocab - 1})")
        return token
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise AttributionError(f"target {token!r} is {len(ids)} tokens {pieces}; give a single "
                               "token (mind the leading space, e.g. ' Paris') or a token id")
    return int(ids[0])


def prompt_tokens(model: Any, prompt: str | torch.Tensor) -> Int[torch.Tensor, "1 pos"]:  # noqa: F722
    """[1, pos] token ids with BOS first; refuses an empty prompt and one past the context."""
    if isinstance(prompt, torch.Tensor):
        tokens = prompt.reshape(1, -1).long()
    elif isinstance(prompt, str):
        from scope.model.activations import to_tokens

        n = len(model.tokenizer.encode(prompt, add_special_tokens=False)) + 1  # + BOS
        _check_length(model, n)  # before tokenizing: TransformerLens truncates in silence
        tokens = to_tokens(model, prompt) if prompt.strip() else torch.zeros(1, 1, dtype=torch.long)
    else:
        raise AttributionError(f"prompt must be text or token ids, got {type(prompt).__name__}")
    if tokens.shape[1] < 2:
        raise AttributionError("the prompt is empty: give at least one token of text after BOS "
                               "(e.g. --prompt \"The capital of France is\")")
    _check_length(model, tokens.shape[1])
    return tokens


def _check_length(model: Any, n: int) -> None:
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and n > n_ctx:
        raise AttributionError(f"the prompt is {n} tokens (BOS included) but the model's "
                               f"context is {n_ctx}: shorten it to at most {n_ctx - 1} tokens "
                               "of text")


def token_strings(model: Any, tokens: torch.Tensor) -> list[str]:
    return [model.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]


def check_saes(model: Any, saes: Sequence[Any], widths: Sequence[tuple[int, int]]) -> None:
    """Refuse SAEs whose widths do not fit their sites; warn on one made for another model.

    Args:
        model: the model.
        saes: the SAEs in the caller's order.
        widths: (input width, output width) of each SAE's read and write site on this model.
    """
    name = str(getattr(model.cfg, "model_name", "") or "")
    for i, (sae, (w_in, w_out)) in enumerate(zip(saes, widths, strict=True)):
        label = getattr(sae.cfg, "name", "") or f"SAE {i}"
        d_out = getattr(sae.cfg, "d_out", None) or sae.cfg.d_in
        if sae.cfg.d_in != w_in or d_out != w_out:
            raise ShapeMismatchError(
                f"{label} reads {sae.cfg.d_in} and writes {d_out} wide, but on this model "
                f"{sae.cfg.hook_name} is {w_in} wide and its output site {w_out}: it belongs to "
                "another model; pass dictionaries trained on the loaded model")
        theirs = str(getattr(sae.cfg, "model_name", "") or "")
        if name and theirs and _model_key(theirs) != _model_key(name):
            msg = (f"{label} was trained on {theirs!r} but the model is {name!r}; its features "
                   "will not mean what its labels say")
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)


def _model_key(name: str) -> str:
    return name.lower().rsplit("/", 1)[-1].removesuffix("-pt")


def check_label_store(store: Any, saes: Sequence[Any], specs: Sequence[str | None] | None = None,
                      *, flag: str = "--store") -> None:
    """Refuse a labels store that is not of the SAEs being attributed: labels of another SAE
    (another width, hook or spec under the same name) would be shown against these features.

    Args:
        store: an open feature store (`scope.open_store`).
        saes: the loaded SAEs.
        specs: what the user passed to load each SAE (`--sae`), compared with the spec the store
            recorded; None where unknown (an SAE built in memory).
        flag: how the error names the argument.

    Raises:
        AttributionError: no SAE of the store is one of `saes`, or one of the same name is
            another SAE.
    """
    from scope.steer.relative import store_sae_mismatches

    specs = list(specs) if specs is not None else [None] * len(saes)
    matched = 0
    for sae, spec in zip(saes, specs, strict=True):
        problems = store_sae_mismatches(store, sae, spec)
        if problems is None:
            continue
        if problems:
            raise AttributionError(
                f"{flag} {store.path}: its SAE {sae.cfg.name!r} is not the SAE you attribute "
                f"with ({'; '.join(problems)}), so its labels would name other features; pass "
                "the store extracted with this SAE, or leave out --store")
        matched += 1
    if saes and not matched:
        raise AttributionError(
            f"{flag} {store.path}: the store has none of the SAEs you attribute with (it has "
            f"{list(store.sae_names)}; you loaded {[s.cfg.name for s in saes]}), so it has no "
            "labels for them; pass the store extracted with these SAEs, or leave out --store")
