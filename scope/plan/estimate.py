"""`plan(...)`: what an extraction or an attribution graph will cost, before anything is loaded.

Memory and disk come from `scope.plan.memory` (byte counts that follow the code), time from FLOP
and bytes moved divided by the throughputs `scope.plan.device` measures on this device, plus the
per-block and per-batch overheads of the Python forward pass (measured constants below). A run
that will not fit is refused with a `WontFitError` that gives the figure and the way out (fewer
features per pass, a smaller batch, another device) unless `strict=False`, which returns the
plan with `fits=False` and the reasons in `warnings`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scope.base.atomic import atomic_write_text
from scope.errors import ConfigError, ShapeMismatchError, WontFitError
from scope.plan import memory as M
from scope.plan.device import DeviceInfo, device_info, disk_free_bytes
from scope.plan.shapes import ModelShape, SAEShape, model_shape, sae_shape

log = logging.getLogger(__name__)

TASKS = ("extract", "attribute")
#: seconds of Python per block per forward pass (bridge hook points, norms, eager attention)
LAYER_OVERHEAD_S = 1.5e-3
#: a graph's backward pass over its forward FLOP (activation gradients only, plus the
#: elementwise backward kernels), fitted on three measured graphs: the plan test's tiny one,
#: and the bundled model's with its 18 transcoders and with the four demo SAEs
BACKWARD_FLOP_FACTOR = 1.5
#: seconds of Python per (position, SAE) product when a batch of graph rows is filled
PRODUCT_OVERHEAD_S = 5e-6
#: seconds per batch outside the blocks (tokenising, the accumulator's ~40 small kernels, tqdm)
BATCH_OVERHEAD_S = 0.02
#: elementwise passes (in units of the device's measured `elementwise_s`) over the batch's
#: [tokens, d_sae] features: encode's bias add, compare and multiply; the accumulator's mask,
#: nonzero and amax; and over the [d_sae, batch] candidate keys of top-k and band slots
ENCODE_PASSES = 3.5
FEATURE_PASSES = 2.5
KEY_PASSES = 40
#: seconds to write the vocabulary, per token string, and a store's bytes, per byte
VOCAB_S_PER_TOKEN = 4e-6
WRITE_BYTES_PER_S = 0.6e9
#: seconds to start a run (store lock, corpus, first windows, opening the finished store)
START_S = 0.5
#: warn when the peak is above this share of the budget
WARN_SHARE = 0.85


@dataclass
class Plan:
    """The estimates of one planned run (`to_json` writes them; `summary` prints them)."""

    task: str
    model: dict
    saes: list[dict]
    device: dict
    settings: dict
    """tokens, ctx, batch_size, top_k, ... as planned."""
    peak_memory_bytes: int
    """Peak resident bytes on the device (on CPU: the process's peak RSS)."""
    host_peak_bytes: int
    """Peak host bytes (equal to the peak on CPU; checkpoints copy statistics to the host)."""
    disk_bytes: int
    """The store on disk once the run completes (0 for a graph not written)."""
    disk_peak_bytes: int
    """Disk while a checkpoint writes a generation beside the previous one."""
    seconds: float
    """Time of the `extract` / `attribution_graph` call (model loading excluded) on an otherwise
    idle device: on CPU the probes measure CPU time over torch's thread count."""
    flops: float
    memory: dict
    """Peak parts: weights, sae_weights, accumulators, batch, checkpoint, edges, ..."""
    time: dict
    """Seconds by part: forward, encode, accumulate, tables, checkpoints, overhead, ..."""
    budget_bytes: int
    """What the run may use: the device's memory, or `max_memory` when smaller."""
    fits: bool = True
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically): `peak_memory_bytes`, `disk_bytes`, `seconds`..."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    def summary(self) -> str:
        """A short table for people (the CLI prints it)."""
        lines = [f"plan: {self.task} {self.model['name']} on {self.device['device']} "
                 f"({_gib(self.budget_bytes)} available)",
                 f"  peak memory   {_gib(self.peak_memory_bytes):>10}   "
                 + ", ".join(f"{k} {_gib(v)}" for k, v in self.memory.items() if v)]
        if self.host_peak_bytes != self.peak_memory_bytes:
            lines.append(f"  host peak     {_gib(self.host_peak_bytes):>10}")
        if self.disk_bytes:
            lines.append(f"  disk          {_gib(self.disk_bytes):>10}   (peak while "
                         f"checkpointing {_gib(self.disk_peak_bytes)})")
        lines.append(f"  time          {_duration(self.seconds):>10}   "
                     + ", ".join(f"{k} {_duration(v)}" for k, v in self.time.items() if v >= 0.05))
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append("  fits: " + ("yes" if self.fits else "NO"))
        return "\n".join(lines)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.1f} s"


def _stop_layers(model: ModelShape, saes: Sequence[SAEShape]) -> int:
    """Blocks `capture` runs: up to the deepest SAE's block (0 for the embedding alone)."""
    return min(model.n_layers, max(s.layer for s in saes) + 1)


def _backward_blocks(sae: SAEShape, saes: Sequence[SAEShape]) -> int:
    """Blocks a feature row of `sae` runs backward through: down to the nearest shallower SAE
    that rewrites the residual stream (its write is a leaf), else to the embedding."""
    below = [s.layer for s in saes if s.residual and s.layer < sae.layer]
    return sae.layer - max(below, default=-1)


def _check_saes(model: ModelShape, saes: Sequence[SAEShape]) -> None:
    widths = {model.d_model, model.d_mlp, model.n_heads * model.d_head}
    for s in saes:
        if s.d_in not in widths:
            raise ShapeMismatchError(f"SAE {s.name!r} reads d_in={s.d_in}, but {model.name}'s "
                                     f"sites have widths {sorted(widths)}; use an SAE made for "
                                     "this model")
        if s.layer >= model.n_layers:
            raise ShapeMismatchError(f"SAE {s.name!r} reads block {s.layer}, but {model.name} "
                                     f"has {model.n_layers} blocks (0..{model.n_layers - 1})")


def _block_flops(model: ModelShape, ctx: int) -> float:
    """FLOP per token of one block: its weights once, eager attention over `ctx` keys."""
    return 2 * model.layer_params + 4 * ctx * model.n_heads * model.d_head


def _backward_block_flops(model: ModelShape, ctx: int, mlp_replaced: bool) -> float:
    """FLOP per token of one block in a graph's backward pass: gradients of activations only
    (no weight gradients), attention patterns frozen (no Q/K path), and no MLP where a
    transcoder's write (a leaf) replaces it."""
    d, h = model.d_model, model.d_head
    qk = 2 * d * h * (model.n_heads + model.n_kv_heads)
    mlp = 2 * 3 * d * model.d_mlp if mlp_replaced else 0
    return _block_flops(model, ctx) - qk - mlp


def _extract(model: ModelShape, saes: list[SAEShape], dev: DeviceInfo, tokens: int, ctx: int,
             batch_size: int, top_k: int, logits: bool, checkpoint_every: float
             ) -> tuple[dict, dict, float, M.StoreBytes, int, int]:
    n_windows = -(-tokens // ctx)
    n_batches = -(-n_windows // batch_size)
    n_tok = n_windows * ctx
    layers = _stop_layers(model, saes)
    b = M.extraction_bytes(model, saes, ctx, batch_size, top_k, n_windows)
    fixed = M.RUNTIME_BYTES + b.weights + b.sae_weights + b.accumulators + b.window_pool
    transient = {"batch": b.batch, "checkpoint": b.checkpoint, "tables": b.tables}
    worst = max(transient, key=transient.get)
    memory = {"runtime": M.RUNTIME_BYTES, "weights": b.weights, "sae_weights": b.sae_weights,
              "accumulators": b.accumulators, "window_pool": b.window_pool,
              worst: transient[worst]}
    F = sum(s.d_sae for s in saes)
    fwd_flops = n_tok * layers * _block_flops(model, ctx)
    enc_flops = n_tok * sum(2 * s.d_in * s.d_sae for s in saes)
    table_flops = sum(s.d_sae**2 * (s.d_out or s.d_in) for s in saes)  # symmetric cosines
    if logits:
        table_flops += sum(2 * s.d_sae * model.d_model * model.d_vocab for s in saes)
    st = M.store_bytes(model, saes, n_windows, ctx, top_k)
    ew = dev.elementwise_s
    cosines = sum(s.d_sae**2 for s in saes)  # each tile ranked both ways: F**2 elements
    t = {"forward": fwd_flops / dev.flops,
         "encode": enc_flops / dev.flops + n_tok * F * ENCODE_PASSES * ew,
         "accumulate": (n_tok * F * FEATURE_PASSES + n_batches * F * batch_size * KEY_PASSES) * ew,
         "overhead": n_batches * (layers * LAYER_OVERHEAD_S + BATCH_OVERHEAD_S),
         "tables": table_flops / dev.flops + cosines * dev.topk_s,
         "vocab": model.d_vocab * VOCAB_S_PER_TOKEN,
         "setup": START_S + F * M.accumulator_bytes_per_feature(ctx, top_k) / 4 * ew}
    loop = sum(t.values())
    n_ckpt = 1 + int(loop // max(checkpoint_every, 1e-9))
    copy = F * sum(M.checkpoint_copy_bytes_per_feature(ctx, top_k)) / 4 * ew
    t["checkpoints"] = n_ckpt * (copy + (st.generation + st.tables) / WRITE_BYTES_PER_S)
    flops = fwd_flops + enc_flops + table_flops
    return memory, t, flops, st, min(n_ckpt, 2), fixed


def _attribute(model: ModelShape, saes: list[SAEShape], dev: DeviceInfo, n_pos: int,
               batch_size: int, max_logits: int, max_feature_nodes: int | None
               ) -> tuple[dict, dict, float, M.GraphBytes]:
    g = M.graph_bytes(model, saes, n_pos, batch_size, max_logits, max_feature_nodes)
    memory = {"runtime": M.RUNTIME_BYTES, "weights": model.params * model.bytes_per_param,
              "sae_weights": sum(s.params * 4 for s in saes), "edges": g.edges,
              "autograd": g.autograd, "sites": g.sites}
    B = max(1, min(batch_size, max(g.active_features, max_logits)))
    # feature rows run in rounds of B per SAE, chosen by influence (attribution/build.py):
    # each round runs every SAE's share as its own (partly filled) backward pass, which crosses
    # only the blocks below that SAE's read site; the logit rows cross every block
    rounds = -(-(g.rows - max_logits) // (B * max(1, len(saes))))
    logit_passes = -(-max_logits // B)
    passes = logit_passes + rounds * max(1, len(saes))
    depth = sum(_backward_blocks(s, saes) / model.n_layers for s in saes)
    full = logit_passes + rounds * depth  # backward passes, in whole-model units
    per_tok = model.n_layers * _block_flops(model, n_pos)
    fwd = n_pos * per_tok * 3 + B * n_pos * per_tok  # clean, splice check, plain; the graph pass
    replaced = {s.layer for s in saes if not s.residual}  # blocks whose MLP a transcoder replaces
    bwd_per_tok = sum(_backward_block_flops(model, n_pos, L in replaced)
                      for L in range(model.n_layers))
    bwd = full * BACKWARD_FLOP_FACTOR * B * n_pos * bwd_per_tok
    fill = passes * B * g.active_features * 2 * max(s.d_out or s.d_in for s in saes)
    # ranking before each round: (distinct layers + 1) products of the influence vector with the
    # rows filled so far (on average half the feature rows), and each row normalised once (|.|
    # into a fresh row, then divided in place)
    iters = len({s.layer for s in saes}) + 1
    ranked = rounds * iters * (max_logits + (g.rows - max_logits) / 2) * g.nodes
    t = {"forward": fwd / dev.flops, "backward": bwd / dev.flops, "edges": fill / dev.flops
         + passes * B * g.active_features * dev.elementwise_s
         + passes * len(saes) * n_pos * PRODUCT_OVERHEAD_S,
         "influence": ranked * dev.matvec_s + g.rows * g.nodes * 2 * dev.elementwise_s,
         "overhead": (3 * model.n_layers + full * 3 * model.n_layers) * LAYER_OVERHEAD_S}
    return memory, t, fwd + bwd + fill, g


def plan(model: Any, saes: Any = (), *, task: str = "extract", tokens: int | None = None,
         ctx: int = 128, batch_size: int | None = None, top_k: int = 20,
         device: str = "cpu", dtype: str | None = None, max_memory: int | None = None,
         out: str | os.PathLike | None = None, logits: bool = True,
         checkpoint_every: float = 300.0, max_logits: int = 10,
         max_feature_nodes: int | None = 1024, strict: bool = True) -> Plan:
    """Estimate peak memory, disk and time of an extraction (or an attribution graph).

    Nothing is loaded, downloaded or written (except by `Plan.to_json`); the device is probed
    for a fraction of a second.

    Args:
        model: a model spec, config dict or loaded model (see `scope.plan.shapes.model_shape`).
        saes: SAE specs, dicts or loaded SAEs (see `sae_shape`); one or a list.
        task: "extract" (a feature store) or "attribute" (one attribution graph).
        tokens: extraction: corpus tokens (window tokens, BOS included).
        ctx: extraction: window length; attribute: the prompt's length in tokens.
        batch_size: windows per forward pass (default 16), or graph rows per backward (32).
        top_k: contexts kept per feature.
        device: "cpu", "cuda", "cuda:N" (must exist on this machine).
        dtype: model dtype (default: bfloat16 on CUDA, float32 on CPU).
        max_memory: a cap in bytes below the device's memory.
        out: the store folder, to check the free disk there.
        logits, checkpoint_every: as for `scope.extract`.
        max_logits, max_feature_nodes: as for `scope.attribution_graph`.
        strict: raise `WontFitError` when the run will not fit (False: `fits=False`, warnings).

    Raises:
        UnknownModelError, UnknownSAEError: a model or SAE that does not exist.
        DeviceError: a device this machine does not have.
        ShapeMismatchError: an SAE that does not read this model.
        WontFitError: memory, `max_memory` or disk too small (with the figure and the way out).
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r}: use one of {', '.join(TASKS)}")
    from scope.plan.device import check_device

    dev_t = check_device(device)
    dtype = dtype or ("bfloat16" if dev_t.type == "cuda" else "float32")
    m = model_shape(model, dtype=dtype)
    saes = [saes] if isinstance(saes, (str, dict)) or hasattr(saes, "cfg") else list(saes)
    if not saes:
        raise ConfigError("plan needs at least one SAE (a release/sae_id, a dict or an SAE)")
    s = [sae_shape(x) for x in saes]
    _check_saes(m, s)
    if ctx < 2 or top_k < 1 or (batch_size is not None and batch_size < 1):
        raise ConfigError(f"ctx {ctx}, top_k {top_k}, batch_size {batch_size}: need ctx >= 2 "
                          "and positive top_k and batch_size")
    weights = m.params * m.bytes_per_param
    if max_memory is not None and max_memory < weights:
        raise WontFitError(
            f"max_memory {_gib(max_memory)} is smaller than the weights of {m.name} "
            f"({_gib(weights)} in {m.dtype}): raise max_memory, load in bfloat16 (half of "
            "float32), or spread the model over more devices")
    dev = device_info(dev_t, dtype=m.dtype)
    settings: dict[str, Any] = {"ctx": ctx, "top_k": top_k, "dtype": m.dtype,
                                "max_memory": max_memory}
    if task == "extract":
        if tokens is None or tokens < 1:
            raise ConfigError(f"tokens {tokens!r}: give the corpus size in tokens to plan an "
                              "extraction (e.g. tokens=1_000_000)")
        batch_size = batch_size or 16
        settings.update(tokens=tokens, batch_size=batch_size, logits=logits,
                        checkpoint_every=checkpoint_every)
        memory, t, flops, st, gens, fixed = _extract(
            m, s, dev, tokens, ctx, batch_size, top_k, logits, checkpoint_every)
        half = [replace(x, d_sae=max(1, x.d_sae // 2)) for x in s]
        low = _extract(m, half, dev, tokens, ctx, batch_size, top_k, logits, checkpoint_every)[0]
        settings["bytes_per_feature"] = (sum(memory.values()) - sum(low.values())) / max(
            1, sum(x.d_sae - y.d_sae for x, y in zip(s, half, strict=True)))
        disk, disk_peak = st.total(gens), st.total(2)
        settings["windows_kept_max"] = st.windows
    else:
        batch_size = batch_size or 32
        settings.update(prompt_tokens=ctx, batch_size=batch_size, max_logits=max_logits,
                        max_feature_nodes=max_feature_nodes)
        memory, t, flops, g = _attribute(m, s, dev, ctx, batch_size, max_logits,
                                         max_feature_nodes)
        settings.update(active_features=g.active_features, rows=g.rows, nodes=g.nodes)
        disk = disk_peak = 0
    peak = int(sum(memory.values()))
    on_gpu = dev_t.type == "cuda"
    host = peak if not on_gpu else int(M.RUNTIME_BYTES + memory.get("checkpoint", 0)
                                       + memory.get("accumulators", 0))
    if on_gpu:
        peak = peak - M.RUNTIME_BYTES + M.CUDA_CONTEXT_BYTES
    budget = int(min(dev.memory_bytes, max_memory or dev.memory_bytes))
    result = Plan(task=task, model=m.to_dict(), saes=[x.to_dict() for x in s],
                  device=dev.to_dict(), settings=settings, peak_memory_bytes=peak,
                  host_peak_bytes=host, disk_bytes=int(disk), disk_peak_bytes=int(disk_peak),
                  seconds=float(sum(t.values())), flops=float(flops),
                  memory={k: int(v) for k, v in memory.items()},
                  time={k: float(v) for k, v in t.items()}, budget_bytes=budget)
    _judge(result, m, s, out, strict)
    return result


def _judge(p: Plan, m: ModelShape, s: list[SAEShape], out: Any, strict: bool) -> None:
    """Add warnings; refuse (WontFitError) what will not fit, with the way out."""
    problems = []
    if p.peak_memory_bytes > p.budget_bytes:
        problems.append(_memory_advice(p, s))
    elif p.peak_memory_bytes > WARN_SHARE * p.budget_bytes:
        p.warnings.append(f"the peak {_gib(p.peak_memory_bytes)} is above "
                          f"{WARN_SHARE:.0%} of the {_gib(p.budget_bytes)} available")
    ckpt = p.time.get("checkpoints", 0.0)
    if ckpt > 0.2 * p.seconds and p.seconds > 600:
        p.warnings.append(f"checkpoints take {_duration(ckpt)} of {_duration(p.seconds)} (each "
                          f"writes {_gib(p.disk_bytes / 2)}): raise checkpoint_every")
    if p.device["device"].startswith("cuda") and p.host_peak_bytes > p.device[
            "host_memory_bytes"]:
        problems.append(f"checkpoints copy {_gib(p.host_peak_bytes)} of statistics to the host, "
                        f"which has {_gib(p.device['host_memory_bytes'])} available: fewer "
                        "features per pass or a host with more memory")
    if out is not None and p.disk_peak_bytes:
        free = disk_free_bytes(out)
        if p.disk_peak_bytes > free:
            problems.append(f"the store needs {_gib(p.disk_peak_bytes)} of disk at its peak "
                            f"(two generations while checkpointing), {_gib(free)} is free under "
                            f"{out}: choose another --out, free space, or fewer features")
    if problems:
        p.fits = False
        p.warnings += problems
        if strict:
            raise WontFitError("this run will not fit: " + "; ".join(problems))
    for w in p.warnings:  # a caller with strict=False reads them from the plan itself
        (log.warning if strict else log.info)("plan: %s", w)


def _memory_advice(p: Plan, s: list[SAEShape]) -> str:
    mem, budget, peak = p.memory, p.budget_bytes, p.peak_memory_bytes
    head = (f"peak memory {_gib(peak)} > {_gib(budget)} available on {p.device['device']} "
            f"({', '.join(f'{k} {_gib(v)}' for k, v in mem.items() if v > peak / 20)})")
    ways = []
    if p.task == "extract":
        F = sum(x.d_sae for x in s)
        per = p.settings["bytes_per_feature"]
        room = budget - (peak - per * F)
        if room > 0 and per * F > peak / 4:
            fit = int(room // per)
            ways.append(f"fewer features per pass: about {fit:,} of the {F:,} fit "
                        f"({per / 1024:,.1f} KiB each: accumulators, features of a batch, "
                        f"weights; {math.ceil(F / max(fit, 1))} passes over feature blocks)")
        other = {k: v for k, v in mem.items() if k in ("batch", "checkpoint", "tables")}
        if "batch" in other and other["batch"] > peak / 4:
            bs = p.settings["batch_size"]
            fit = int(bs * (budget - peak + other["batch"]) / other["batch"])
            if fit >= 1:
                ways.append(f"a smaller batch: --batch-size {fit} (now {bs})")
    else:
        if mem["edges"] > peak / 4:
            ways.append("fewer feature rows: a smaller max_feature_nodes")
        if mem["autograd"] > peak / 4:
            ways.append(f"a smaller batch: batch_size {max(1, p.settings['batch_size'] // 4)}")
    ways.append(f"another device with at least {_gib(peak * 1.1)}")
    return head + ": " + "; or ".join(ways)
