"""The store's model and SAE, loaded again for what the store does not keep.

A store keeps each feature's top and band contexts and its top 10 logit effects, not every
activation nor the full logit vector. Two consumers need more: detection scoring verifies that
its negative contexts do not fire the feature (`WindowEncoder.max_acts` re-encodes candidate
windows), and the Neuronpedia export's logit histogram needs the decoder direction's effect on
every vocabulary logit (`logit_vectors`). Both load the model and SAE the store names in its
manifest (`model.spec`, the SAE's `spec`) with `scope.load_model` / `scope.load_sae`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int

from scope.errors import StoreError

log = logging.getLogger(__name__)

#: loading a model is not thread-safe (transformers builds it on the meta device through global
#: patches), so two explain runs in one process load one after the other
_LOADING = threading.Lock()


def load_store_model(store, sae_name: str, device: str = "cpu") -> tuple[Any, Any]:
    """(model, sae) the store was extracted with, from the specs in its manifest.

    Raises:
        StoreError: the manifest names no loadable spec (the message says which and how to
            pass the model and SAE by hand).
    """
    from scope.model.load import load_model
    from scope.saes.loading import load_sae

    model_spec = (store.manifest.get("model") or {}).get("spec")
    sae_spec = store.sae_info(sae_name).get("spec")
    if not model_spec or not sae_spec:
        raise StoreError(f"store {store.path}: its manifest names no model or SAE spec to load "
                         f"(model {model_spec!r}, SAE {sae_spec!r}); pass encoder=... (or "
                         "verify=False to score with unverified negatives)")
    with _LOADING:
        model = load_model(str(model_spec), device=device, dtype=torch.float32)
        sae = load_sae(str(sae_spec), model=model, device=device, dtype=torch.float32)
    return model, sae


@dataclass
class WindowEncoder:
    """Feature activations of token windows, from the store's model and SAE."""

    model: Any
    sae: Any
    batch_size: int = 16

    @classmethod
    def for_store(cls, store, sae_name: str) -> WindowEncoder:
        model, sae = load_store_model(store, sae_name)
        return cls(model, sae)

    @torch.no_grad()
    def max_acts(self, tokens: Int[np.ndarray, "n pos"]  # noqa: F722
                 ) -> Float[np.ndarray, "n d_sae"]:  # noqa: F722
        """Each window's largest activation of every feature, position 0 (BOS) excluded, as
        the store ranks contexts."""
        from scope.model.activations import capture

        hook = self.sae.cfg.hook_name
        out = []
        for start in range(0, len(tokens), self.batch_size):
            t = torch.as_tensor(np.asarray(tokens[start:start + self.batch_size]), dtype=torch.long)
            acts = capture(self.model, t, [hook])[hook]
            f = self.sae.encode(acts.to(self.sae.W_enc.dtype))  # [batch, pos, d_sae]
            out.append(f[:, 1:].amax(dim=1).float().cpu().numpy())
        d = int(self.sae.cfg.d_sae)
        return np.concatenate(out) if out else np.zeros((0, d), np.float32)


@torch.no_grad()
def logit_vectors(model, sae, features: list[int]
                  ) -> Float[np.ndarray, "n d_vocab"] | None:  # noqa: F722
    """`W_dec[f] @ diag(gain) @ W_U` for each feature (the same product as the store's logit
    tables), or None when the decoder does not write to the residual stream."""
    from scope.pipeline.decoder_tables import final_norm_gain

    W_dec = sae.W_dec.detach()
    if W_dec.shape[1] != model.cfg.d_model:
        log.info("%s: decoder is not in the residual stream; no logit histogram", sae.cfg.name)
        return None
    W_U = model.W_U.detach()
    W_U = W_U[:, : min(W_U.shape[1], len(model.tokenizer))]
    d = W_dec[torch.as_tensor(features, dtype=torch.long)].to(W_U.device, W_U.dtype)
    gain = final_norm_gain(model)
    if gain is not None:
        d = d * gain.to(d.device, d.dtype)
    return (d @ W_U).float().cpu().numpy()
