"""The local replacement model: SAEs and transcoders spliced into a model on one prompt.

Every SAE reads its site (`cfg.hook_name`) and writes its reconstruction back at its output site
(`cfg.hook_name_out`, the same site for a plain SAE; `blocks.L.hook_mlp_out` for a transcoder,
whose MLP is then replaced). The reconstruction error `target - x_hat` is added back as a
detached constant, so the spliced model computes exactly the original output while every
feature is an explicit node with its own gradient. Features at outlier positions (BOS, the
first 4 for Gemma Scope 2 IT dictionaries, or what a dictionary records: the package's one rule,
`scope.saes.outliers.outlier_prefix`) are not nodes: their contribution is folded into that
position's error node.

Freezing (for direct effects and attribution graphs) replaces each attention pattern
(`attn.hook_pattern`) and each normalisation scale (`*.hook_scale`, i.e. RMSNorm's
`sqrt(mean(x^2) + eps)`) by its value on the clean run, as a constant: the model is then linear
in the residual stream between one SAE splice and the next, apart from MLPs that no transcoder
replaces.

Only TransformerLens hook names are used (`model.hook_dict`, forward hooks through
`scope.model.hooks.attached`), so the same code runs on a HookedTransformer and on a TransformerBridge.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scope.attribution.inputs import check_saes
from scope.errors import AttributionError
from scope.model.activations import (
    hook_layer,
    run_to_layer,
    site_width,
    splice_hooks,
    validate_hook_names,
)
from scope.model.hooks import attached
from scope.saes.outliers import outlier_prefix

# order of sites within one block, to sort splices into forward order
_SITE_RANK = [("hook_resid_pre", 0.0), ("ln1.", 0.1), ("attn.", 0.2), ("hook_attn_out", 0.3),
              ("hook_resid_mid", 0.4), ("ln2.", 0.5), ("mlp.", 0.6), ("hook_mlp_out", 0.7),
              ("hook_resid_post", 0.9)]
_FREEZE = re.compile(r"(^|\.)(hook_pattern|hook_scale)$")


def site_order(hook_name: str) -> float:
    """A sortable position of a site in the forward pass (layer + fraction within the block)."""
    layer = hook_layer(hook_name)
    if layer is None:
        return -1.0 if "embed" in hook_name else 1e9
    for key, rank in _SITE_RANK:
        if key in hook_name:
            return layer + rank
    return layer + 0.8


@dataclass
class Site:
    """One spliced SAE or transcoder and its clean-run values on the prompt."""

    index: int
    """Position of the SAE in the list the caller passed."""
    sae: Any
    """The JumpReLUSAE."""
    read: str
    """Hook it reads (`cfg.hook_name`)."""
    write: str
    """Hook it writes (`cfg.hook_name_out` or `cfg.hook_name`)."""
    acts: torch.Tensor | None = None
    """[pos, d_sae] feature activations on the clean run (row 0, BOS, zeroed), float32."""
    error: torch.Tensor | None = None
    """[pos, d_out] reconstruction error `target - x_hat` on the clean run."""
    x_in: torch.Tensor | None = None
    """[pos, d_in] the activation it read on the clean run."""
    name: str = ""
    """Display name (`cfg.name`, or `sae{index}`)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layer(self) -> int:
        """Block index of the read site (-1 before the blocks)."""
        layer = hook_layer(self.read)
        return -1 if layer is None else layer

    @property
    def is_transcoder(self) -> bool:
        return self.write != self.read

    def skip(self, x: torch.Tensor) -> torch.Tensor | float:
        """A transcoder's affine skip `x @ affine_skip` (0 when there is none)."""
        W = self.sae.affine_skip
        return 0.0 if W is None else x.to(W.dtype) @ W


def make_sites(model: Any, saes: Sequence[Any]) -> list[Site]:
    """Wrap SAEs as sites, checking their hook names and sorting them into forward order.

    Args:
        model: a TransformerLens model.
        saes: JumpReLUSAEs (plain SAEs and/or transcoders).

    Returns:
        The sites in forward order.
    """
    sites = []
    widths = []
    for i, sae in enumerate(saes):
        if not hasattr(sae, "cfg") or not hasattr(sae, "encode"):
            raise AttributionError(f"SAE {i} is a {type(sae).__name__}, not a dictionary: pass "
                                   "JumpReLUSAEs from scope.load_sae")
        read = sae.cfg.hook_name
        write = sae.cfg.hook_name_out or read
        validate_hook_names(model, [read, write])
        widths.append((site_width(model, read), site_width(model, write)))
        if site_order(write) < site_order(read):
            raise AttributionError(f"SAE {i} ({sae.cfg.name}) writes {write}, before the site it reads "
                             f"({read})")
        sites.append(Site(index=i, sae=sae, read=read, write=write,
                          name=getattr(sae.cfg, "name", "") or f"sae{i}"))
    check_saes(model, saes, widths)
    sites.sort(key=lambda s: (site_order(s.write), site_order(s.read), s.index))
    writes = [s.write for s in sites]
    if len(set(writes)) != len(writes):
        raise AttributionError(f"two SAEs write the same site ({writes}); splice one per site")
    return sites


def embed_hook() -> str:
    """The site whose value is the token-embedding node (scaled embedding, block 0's input)."""
    return "blocks.0.hook_resid_pre"


def final_hook(model: Any) -> str:
    """The residual stream the logits read (before the final norm)."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


class Freezer:
    """Records attention patterns and norm scales on a clean run, then substitutes them.

    `record()` hooks store every `hook_pattern`/`hook_scale` value; `frozen()` hooks replace each
    by its stored value (a constant, broadcast over the batch), so gradients do not pass through
    attention patterns or normalisation and a perturbed forward pass sees the clean ones.
    """

    def __init__(self, model: Any) -> None:
        self.names = [n for n in model.hook_dict if _FREEZE.search(n)]
        self.values: dict[str, torch.Tensor] = {}

    def record(self) -> list[tuple[str, Callable]]:
        def rec(act, hook):
            self.values[hook.name] = act.detach()[:1].clone()

        return [(n, rec) for n in self.names]

    def frozen(self) -> list[tuple[str, Callable]]:
        def sub(act, hook):
            value = self.values.get(hook.name)
            if value is None:
                return act.detach()
            return value.to(act.dtype).expand_as(act)

        return [(n, sub) for n in self.names]


@contextlib.contextmanager
def hooks(model: Any, fwd: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach forward hooks; silence the bridge's notice that a hooked norm leaves its fast path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*hook_scale/hook_normalized.*")
        with attached(model, list(fwd)):
            yield


def site_hooks(model: Any, hook_name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]
               ) -> list[tuple[str, Callable]]:
    """`scope.model.activations.splice_hooks`: `fn` sees and may replace `[batch, pos, width]`."""
    return splice_hooks(model, hook_name, fn)


def forward(model: Any, tokens: torch.Tensor, *, stop_at_final: bool = False) -> Any:
    """Run the model; with `stop_at_final`, end after the last block (no final norm/unembed).

    Hooks attached before this call run first; a last hook on the final residual stream then
    ends the pass (a TransformerBridge's `stop_at_layer` cannot stop after the last block).
    """
    if not stop_at_final:
        return model(tokens)
    run_to_layer(model, tokens, model.cfg.n_layers)  # the model layer's one stop rule
    return None


def last_logits(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, 1, d_vocab] logits at the last position only, equal to `model(tokens)[:, -1:]`.

    The blocks run on every position, but the final norm and the unembedding (most of a Gemma
    forward pass: a 262k-token vocabulary) only on the last one; the output soft-cap, where the
    model has one, is applied as the model applies it. Hooks attached before this call run.
    """
    got: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        got["x"] = act
        return None

    with attached(model, [(final_hook(model), keep)]):
        forward(model, tokens, stop_at_final=True)
    logits = model.unembed(model.ln_final(got["x"][:, -1:]))
    cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    return cap * torch.tanh(logits / cap) if cap > 0 else logits


def clean_run(model: Any, sites: list[Site], tokens: torch.Tensor, freezer: Freezer | None = None
              ) -> dict[str, torch.Tensor]:
    """Run the spliced model once on `tokens` [1, pos], filling each site's acts/error/x_in.

    Args:
        model: the model.
        sites: from `make_sites`.
        tokens: [1, pos] token ids.
        freezer: when given, records the attention patterns and norm scales of this run.

    Returns:
        {"logits": [pos, d_vocab] float32 logits of the spliced model, "embed": [pos, d_model],
         "final": [pos, d_model] the residual stream the final norm reads}.
    """
    out: dict[str, torch.Tensor] = {}
    fwd: list[tuple[str, Callable]] = []
    for site in sites:
        fwd += site_hooks(model, site.read, _clean_reader(site))
        fwd += site_hooks(model, site.write, _clean_writer(site))

    def rec(key):
        def fn(a):
            out[key] = a.detach()[0].float()
        return fn

    fwd += site_hooks(model, embed_hook(), rec("embed"))
    fwd += site_hooks(model, final_hook(model), rec("final"))
    if freezer is not None:
        fwd += freezer.record()
    with torch.no_grad(), hooks(model, fwd):
        logits = model(tokens)
    out["logits"] = logits[0].float()
    return out


def _clean_reader(site: Site) -> Callable:
    def read(x):
        x0 = x.detach()[0].float()
        site.x_in = x0
        acts = site.sae.encode(x0).float()
        acts[:outlier_prefix(site.sae.cfg)] = 0.0  # BOS etc.: no feature nodes, in the error
        site.acts = acts
        return None  # the writer splices
    return read


def _clean_writer(site: Site) -> Callable:
    def write(y):
        target = y.detach()[0].float()
        recon = site.sae.decode(site.acts).float() + site.skip(site.x_in)
        site.error = (target - recon).float()
        spliced = recon + site.error
        return spliced.to(y.dtype).unsqueeze(0).expand_as(y)
    return write
