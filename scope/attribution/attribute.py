"""Feature attribution: which SAE features (and error terms, and tokens) drive one metric.

`attribute(model, saes, prompt, target)` splices the SAEs into the model (see
`scope.attribution.replacement`), runs it once, and backpropagates a metric: the logit of a
target token at the last position, a logit difference (`contrast=`), or one feature's
pre-activation (`FeatureMetric`). Every active feature gets `activation x d metric / d
activation`, the first-order estimate of what zeroing it would change; every SAE's error term
and every token embedding get `value . gradient` likewise. Modes:

* `total`: full backward pass through attention, normalisation, MLPs and the other SAEs'
  features (their JumpReLU gates pass gradient where they fire).
* `direct`: attention patterns and normalisation scales frozen at their clean values and the
  other SAEs' features held fixed: only the effect that does not pass through another feature.
  These are exactly the edge weights into the metric of `scope.attribution_graph`.

The result reports completeness (the sum of all attributions next to the metric) and an
ablation cross-check: the top-k features are actually zeroed one at a time in the spliced model
and the measured change of the metric is set beside `-attribution`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from scope.attribution.replacement import (
    AttributionError,
    Freezer,
    Site,
    clean_run,
    embed_hook,
    hooks,
    make_sites,
    site_hooks,
    site_order,
)

log = logging.getLogger(__name__)


MODES = ("total", "direct")


@dataclass(frozen=True)
class FeatureMetric:
    """Metric = pre-activation of one feature (its activation whenever it fires)."""

    sae: int
    """Index of the SAE in the list passed to `attribute`."""
    feature: int
    """Feature index."""
    position: int = -1
    """Token position (negative counts from the end)."""


@dataclass
class Node:
    """One attributed node."""

    kind: str
    """"feature", "error" or "embedding"."""
    sae: str | None
    """Name of the SAE (None for embeddings)."""
    sae_index: int | None
    """Index of the SAE in the list passed in (None for embeddings)."""
    layer: int
    """Block of the SAE's read site (-1 for embeddings)."""
    position: int
    """Token position."""
    feature: int | None
    """Feature index (None for error and embedding nodes)."""
    activation: float
    """Feature activation; for error and embedding nodes the norm of the vector."""
    attribution: float
    """value x gradient of the metric."""
    token: str = ""
    """The token at `position`."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AblationCheck:
    """Top-k features zeroed one at a time: measured change of the metric vs `-attribution`."""

    nodes: list[Node]
    predicted: list[float]
    """-attribution of each node (the linear prediction of the change)."""
    measured: list[float]
    """metric(ablated) - metric(clean)."""
    correlation: float
    """Pearson correlation of predicted and measured (nan with fewer than 2 nodes)."""
    sign_agreement: float
    """Fraction of nodes where the two have the same sign."""


@dataclass
class AttributionResult:
    """What `attribute` returns; `.nodes` is sorted by |attribution|, largest first."""

    prompt: str
    tokens: list[str]
    metric_name: str
    metric: float
    """The metric's value on the spliced (= original) model."""
    mode: str
    nodes: list[Node]
    completeness: dict[str, float]
    """Sums of attributions by node kind, their total, and the metric."""
    splice_max_rel_error: float
    """max |logits(spliced) - logits(original)| / max |logits(original)|."""
    ablation_check: AblationCheck | None = None
    target_prob: float | None = None
    """Probability of the target token (logit metrics)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def features(self) -> list[Node]:
        """The feature nodes, largest |attribution| first."""
        return [n for n in self.nodes if n.kind == "feature"]

    def top(self, k: int = 10, kind: str | None = "feature") -> list[Node]:
        """The k nodes with the largest |attribution| (of one kind, or all when kind is None)."""
        return [n for n in self.nodes if kind is None or n.kind == kind][:k]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per node (for pandas.DataFrame)."""
        return [n.to_dict() for n in self.nodes]


def expand_sae_specs(specs: Sequence[str]) -> list[str]:
    """SAE specs with "bundled/all" expanded to every shipped demo SAE, shallowest first."""
    from pathlib import Path

    out: list[str] = []
    for spec in specs:
        if spec != "bundled/all":
            out.append(spec)
            continue
        root = Path(__file__).resolve().parent.parent / "bundled"
        layers = {9} | {int(p.name.split("_")[1]) for p in root.glob("layer_*")
                        if (p / "sae_weights.safetensors").is_file()}
        out += ["bundled" if L == 9 else f"bundled/layer_{L}" for L in sorted(layers)]
    return out


def token_id(model: Any, token: str | int) -> int:
    """A single token id from an id or a string that tokenizes to exactly one token."""
    if isinstance(token, int):
        if not 0 <= token < model.cfg.d_vocab:
            raise AttributionError(f"token id {token} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        return token
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise AttributionError(f"target {token!r} is {len(ids)} tokens {pieces}; give a single token "
                         "(mind the leading space, e.g. ' Paris') or a token id")
    return int(ids[0])


def prompt_tokens(model: Any, prompt: str | torch.Tensor) -> torch.Tensor:
    """[1, pos] token ids with BOS first."""
    if isinstance(prompt, torch.Tensor):
        return prompt.reshape(1, -1).long()
    from scope.model.activations import to_tokens

    return to_tokens(model, prompt)


def token_strings(model: Any, tokens: torch.Tensor) -> list[str]:
    return [model.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]


class _Spliced:
    """Hooks of the spliced model for gradient and ablation runs (one prompt, batch 1)."""

    def __init__(self, model: Any, sites: list[Site], clean: dict[str, torch.Tensor], mode: str,
                 freezer: Freezer | None) -> None:
        self.model, self.sites, self.clean, self.mode, self.freezer = (
            model, sites, clean, mode, freezer)
        self.f: dict[int, torch.Tensor] = {}
        self.x: dict[int, torch.Tensor] = {}
        self.err: dict[int, torch.Tensor] = {}
        self.embed: torch.Tensor | None = None
        self.ablate: tuple[int, int, int, float] | None = None  # (site, pos, feature, factor)

    def fwd_hooks(self) -> list[tuple[str, Callable]]:
        fwd: list[tuple[str, Callable]] = []
        for i, site in enumerate(self.sites):
            fwd += site_hooks(self.model, site.read, self._reader(i, site))
            fwd += site_hooks(self.model, site.write, self._writer(i, site))

        def emb(a):
            self.embed = self.clean["embed"].to(a.dtype).unsqueeze(0).clone().requires_grad_(True)
            return self.embed

        fwd += site_hooks(self.model, embed_hook(), emb)
        if self.freezer is not None:
            fwd += self.freezer.frozen()
        return fwd

    def _reader(self, i: int, site: Site) -> Callable:
        def read(x):
            x = x.float()
            self.x[i] = x
            if self.mode == "direct":
                f = site.acts.unsqueeze(0).clone()
            else:
                f = site.sae.encode(x).float()
                f = torch.cat([torch.zeros_like(f[:, :1]), f[:, 1:]], dim=1)  # BOS row: error
            if self.ablate is not None and self.ablate[0] == i:
                _, p, k, factor = self.ablate
                f = f.clone()
                f[0, p, k] = f[0, p, k] * factor
            if self.mode == "direct" or not f.requires_grad:
                f = f.detach().requires_grad_(True)
            self.f[i] = f
            return None
        return read

    def _writer(self, i: int, site: Site) -> Callable:
        def write(y):
            err = site.error.unsqueeze(0).clone().requires_grad_(True)
            self.err[i] = err
            out = site.sae.decode(self.f[i]).float() + site.skip(self.x[i]) + err
            return out.to(y.dtype)
        return write


def _metric_fn(model: Any, sites: list[Site], target: Any, contrast: Any
               ) -> tuple[str, Callable[[_Spliced, torch.Tensor], torch.Tensor], Any]:
    if isinstance(target, FeatureMetric):
        by_index = {s.index: i for i, s in enumerate(sites)}
        if target.sae not in by_index:
            raise AttributionError(f"FeatureMetric.sae={target.sae}: no such SAE (0..{len(sites) - 1})")
        i = by_index[target.sae]
        site = sites[i]
        if not 0 <= target.feature < site.sae.d_sae:
            raise AttributionError(f"FeatureMetric.feature={target.feature} is outside 0..{site.sae.d_sae - 1}")

        def feat(sp: _Spliced, logits: torch.Tensor) -> torch.Tensor:
            x = sp.x[i][0, target.position]
            return x @ site.sae.W_enc[:, target.feature].float() + site.sae.b_enc[target.feature].float()

        return f"{site.name}[{target.feature}]@{target.position}", feat, site
    t = token_id(model, target)
    c = None if contrast is None else token_id(model, contrast)

    def logit(sp: _Spliced, logits: torch.Tensor) -> torch.Tensor:
        last = logits[0, -1].float()
        return last[t] - (last[c] if c is not None else 0.0)

    name = f"logit({model.tokenizer.decode([t])!r})"
    if c is not None:
        name += f" - logit({model.tokenizer.decode([c])!r})"
    return name, logit, (t, c)


def attribute(model: Any, saes: Any, prompt: str | torch.Tensor, target: str | int | FeatureMetric,
              *, contrast: str | int | None = None, mode: str = "total", ablation_k: int = 5
              ) -> AttributionResult:
    """Attribute a metric on one prompt to SAE features, SAE error terms and token embeddings.

    Args:
        model: a TransformerLens model (HookedTransformer or TransformerBridge) from `load_model`.
        saes: one JumpReLUSAE or a list (plain SAEs and/or transcoders, at any sites).
        prompt: text (BOS is prepended) or a [pos] / [1, pos] tensor of token ids.
        target: a token (`" Paris"`, one token) or id whose last-position logit is the metric,
            or a `FeatureMetric`.
        contrast: a second token; the metric becomes `logit(target) - logit(contrast)`.
        mode: "total" (full backward) or "direct" (attention, norms and other features frozen).
        ablation_k: how many top features the ablation cross-check zeroes (0 = skip it).

    Returns:
        An `AttributionResult`; `.nodes` sorted by |attribution|.
    """
    if mode not in MODES:
        raise AttributionError(f"mode must be one of {MODES}, got {mode!r}")
    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    if not saes:
        raise AttributionError("attribute needs at least one SAE")
    sites = make_sites(model, saes)
    tokens = prompt_tokens(model, prompt)
    strings = token_strings(model, tokens)
    with torch.no_grad():
        plain = model(tokens)[0, -1].float()
    freezer = Freezer(model) if mode == "direct" else None
    clean = clean_run(model, sites, tokens, freezer)
    scale = float(plain.abs().max().clamp_min(1e-30))
    splice_err = float((clean["logits"][-1] - plain).abs().max()) / scale
    name, metric_of, info = _metric_fn(model, sites, target, contrast)
    limit = site_order(info.read) if isinstance(info, Site) else math.inf
    used = [(i, s) for i, s in enumerate(sites) if site_order(s.write) < limit]

    sp = _Spliced(model, sites, clean, mode, freezer)
    with hooks(model, sp.fwd_hooks()):
        logits = model(tokens)
    metric = metric_of(sp, logits)
    inputs = [sp.embed] + [sp.f[i] for i, _ in used] + [sp.err[i] for i, _ in used]
    grads = torch.autograd.grad(metric, inputs, allow_unused=True)
    g_emb, g_f, g_err = grads[0], grads[1:1 + len(used)], grads[1 + len(used):]

    nodes: list[Node] = []
    pos_n = tokens.shape[1]
    emb = clean["embed"]
    ge = g_emb[0].float() if g_emb is not None else torch.zeros_like(emb)
    for p in range(pos_n):
        nodes.append(Node("embedding", None, None, -1, p, None, float(emb[p].norm()),
                          float(emb[p] @ ge[p]), strings[p]))
    for (_, site), gf, gr in zip(used, g_f, g_err, strict=True):
        acts = site.acts
        gf = gf[0].float() if gf is not None else torch.zeros_like(acts)
        gr = gr[0].float() if gr is not None else torch.zeros_like(site.error)
        for p, k in torch.nonzero(acts).tolist():
            a = float(acts[p, k])
            nodes.append(Node("feature", site.name, site.index, site.layer, p, int(k), a,
                              a * float(gf[p, k]), strings[p]))
        for p in range(pos_n):
            nodes.append(Node("error", site.name, site.index, site.layer, p, None,
                              float(site.error[p].norm()), float(site.error[p] @ gr[p]),
                              strings[p]))
    nodes.sort(key=lambda n: -abs(n.attribution))
    sums = {kind: sum(n.attribution for n in nodes if n.kind == kind)
            for kind in ("feature", "error", "embedding")}
    completeness = {**sums, "total": sum(sums.values()), "metric": float(metric.detach())}
    prob = None
    if not isinstance(info, Site):
        prob = float(torch.softmax(clean["logits"][-1], -1)[info[0]])
    result = AttributionResult(prompt if isinstance(prompt, str) else "".join(strings), strings,
                               name, float(metric.detach()), mode, nodes, completeness, splice_err,
                               target_prob=prob)
    if ablation_k > 0:
        result.ablation_check = _ablation_check(sp, model, tokens, metric_of, float(metric.detach()),
                                                result.features()[:ablation_k])
    return result


def _ablation_check(sp: _Spliced, model: Any, tokens: torch.Tensor, metric_of: Callable,
                    clean_metric: float, nodes: list[Node]) -> AblationCheck:
    by_index = {s.index: i for i, s in enumerate(sp.sites)}
    measured = []
    for node in nodes:
        sp.ablate = (by_index[node.sae_index], node.position, node.feature, 0.0)
        try:
            with torch.no_grad(), hooks(model, sp.fwd_hooks()):
                logits = model(tokens)
                measured.append(float(metric_of(sp, logits)) - clean_metric)
        finally:
            sp.ablate = None
    predicted = [-n.attribution for n in nodes]
    return AblationCheck(nodes, predicted, measured, _pearson(predicted, measured),
                         _sign_agreement(predicted, measured))


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return float("nan")
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    x, y = x - x.mean(), y - y.mean()
    den = float(x.norm() * y.norm())
    return float(x @ y) / den if den > 0 else float("nan")


def _sign_agreement(a: Sequence[float], b: Sequence[float]) -> float:
    if not a:
        return float("nan")
    return sum((x > 0) == (y > 0) for x, y in zip(a, b, strict=True)) / len(a)


@dataclass
class Intervention:
    """The metric and the target's probability before and after scaling one feature."""

    metric_before: float
    metric_after: float
    prob_before: float | None
    prob_after: float | None
    factor: float


def intervene(model: Any, saes: Any, prompt: str | torch.Tensor, sae: int, feature: int,
              position: int, factor: float, target: str | int, *,
              contrast: str | int | None = None) -> Intervention:
    """Scale one feature's activation at one position in the spliced model (0 = ablate).

    Errors stay at their clean values and the other features are recomputed, as in the
    ablation check of `attribute`.

    Args:
        model, saes, prompt, target, contrast: as for `attribute`.
        sae: index of the SAE in `saes`.
        feature: the feature.
        position: token position (negative counts from the end).
        factor: multiply the activation by this (0 ablates, 2 doubles).

    Returns:
        An `Intervention`.
    """
    saes = [saes] if not isinstance(saes, (list, tuple)) else list(saes)
    sites = make_sites(model, saes)
    tokens = prompt_tokens(model, prompt)
    clean = clean_run(model, sites, tokens)
    _, metric_of, info = _metric_fn(model, sites, target, contrast)
    by_index = {s.index: i for i, s in enumerate(sites)}
    if sae not in by_index:
        raise AttributionError(f"sae={sae}: no such SAE (0..{len(sites) - 1})")
    sp = _Spliced(model, sites, clean, "total", None)
    out = []
    for scale in (None, factor):
        sp.ablate = None if scale is None else (by_index[sae], position % tokens.shape[1],
                                                 feature, float(scale))
        with torch.no_grad(), hooks(model, sp.fwd_hooks()):
            logits = model(tokens)
        prob = None
        if not isinstance(info, Site):
            prob = float(torch.softmax(logits[0, -1].float(), -1)[info[0]])
        out.append((float(metric_of(sp, logits)), prob))
    return Intervention(out[0][0], out[1][0], out[0][1], out[1][1], float(factor))
