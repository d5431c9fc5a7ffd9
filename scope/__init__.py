"""scope: an interpretability toolkit for Gemma models.

Data flows one way: corpus text -> token windows -> model (TransformerLens hooks) ->
activations -> JumpReLU SAEs -> sparse features -> feature store -> dashboard / notebooks / CLI.

Named tensor axes used in every shape comment and docstring:
    batch    sequences in a batch
    pos      token positions within a sequence (position 0 holds BOS)
    d_model  width of the residual stream (640 for Gemma 3 270M, 2304 for Gemma 2 2B)
    d_in     width of the activation an SAE reads (d_model, or n_heads*d_head for attention)
    d_sae    number of SAE features (the "width", e.g. 16384)
    d_out    width an SAE or transcoder writes (d_in for a plain SAE)
    d_vocab  vocabulary size

Importing scope is cheap: the heavy modules load on first use of a public name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scope.base.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "load_model": "scope.model.load",
    "capture": "scope.model.activations",
    "JumpReLUSAE": "scope.saes.sae",
    "load_sae": "scope.saes.loading",
    "load_saes": "scope.saes.loading",
    "extract": "scope.pipeline.extract",
    "open_store": "scope.store",
    "steering": "scope.steer.intervene",
    "generate": "scope.steer.intervene",
    "evaluate": "scope.pipeline.evals",
    "attribute": "scope.attribution",
    "attribution_graph": "scope.attribution",
}

__all__ = [
    "JumpReLUSAE",
    "attribute",
    "attribution_graph",
    "capture",
    "evaluate",
    "extract",
    "generate",
    "load_model",
    "load_sae",
    "load_saes",
    "open_store",
    "steering",
    "__version__",
]

if TYPE_CHECKING:  # pragma: no cover
    from scope.attribution import attribute, attribution_graph
    from scope.model.activations import capture
    from scope.model.load import load_model
    from scope.pipeline.evals import evaluate
    from scope.pipeline.extract import extract
    from scope.saes.loading import load_sae, load_saes
    from scope.saes.sae import JumpReLUSAE
    from scope.steer.intervene import generate, steering
    from scope.store import open_store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scope' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
