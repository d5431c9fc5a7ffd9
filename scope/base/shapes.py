"""Named tensor shapes (jaxtyping) for the signatures of scope's public tensor functions.

The axes are the package's (`scope/__init__.py`): `batch`, `pos`, `d_model`, `d_in`, `d_sae`,
`d_out`, `d_vocab`, `width` (a site's last axis); `*lead` is any number of leading axes. One place
spells them, so a signature reads `x: SAEIn -> Features` and `help()` shows the shape here.
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

Tokens = Int[Tensor, "batch pos"]
"""Token ids, BOS at position 0."""
SiteActs = Float[Tensor, "batch pos width"]
"""Activations at a hook site as `capture` returns them (`attn.hook_z` flattened)."""
Logits = Float[Tensor, "batch pos d_vocab"]
Gain = Float[Tensor, "d_model"]
"""What an RMSNorm multiplies the normalised activation by."""

SAEIn = Float[Tensor, "*lead d_in"]
"""What an SAE reads."""
Features = Float[Tensor, "*lead d_sae"]
"""JumpReLU feature activations."""
SAEOut = Float[Tensor, "*lead d_out"]
"""What an SAE writes (its reconstruction, or a transcoder's prediction)."""

EncoderWeight = Float[Tensor, "d_in d_sae"]
DecoderWeight = Float[Tensor, "d_sae d_out"]
SkipWeight = Float[Tensor, "d_in d_out"]
FeatureVector = Float[Tensor, "d_sae"]
OutVector = Float[Tensor, "d_out"]
