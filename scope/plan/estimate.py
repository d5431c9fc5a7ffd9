"""`plan(...)`: what an extraction or an attribution graph will cost, before anything is loaded.

Memory and disk come from `scope.plan.memory` (byte counts that follow the code), time from FLOP
and bytes moved divided by the throughputs `scope.plan.device` measures on this device, plus the
per-block and per-batch overheads of the Python forward pass (`scope.plan.costs`). A run
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
from scope.errors import AttributionError, ConfigError, ShapeMismatchError, WontFitError
from scope.plan import costs as C
from scope.plan import memory as M
from scope.plan.device import device_info, disk_free_bytes
from scope.plan.shapes import ModelShape, SAEShape, model_shape, sae_shape

log = logging.getLogger(__name__)

TASKS = ("extract", "attribute")
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
    refusal = ""
    settings: dict[str, Any] = {"ctx": ctx, "top_k": top_k, "dtype": m.dtype,
                                "max_memory": max_memory}
    if task == "extract":
        if tokens is None or tokens < 1:
            raise ConfigError(f"tokens {tokens!r}: give the corpus size in tokens to plan an "
                              "extraction (e.g. tokens=1_000_000)")
        batch_size = batch_size or 16
        settings.update(tokens=tokens, batch_size=batch_size, logits=logits,
                        checkpoint_every=checkpoint_every)
        memory, t, flops, st, gens, fixed = C.extract_costs(
            m, s, dev, tokens, ctx, batch_size, top_k, logits, checkpoint_every)
        half = [replace(x, d_sae=max(1, x.d_sae // 2)) for x in s]
        low = C.extract_costs(m, half, dev, tokens, ctx, batch_size, top_k, logits, checkpoint_every)[0]
        settings["bytes_per_feature"] = (sum(memory.values()) - sum(low.values())) / max(
            1, sum(x.d_sae - y.d_sae for x, y in zip(s, half, strict=True)))
        disk, disk_peak = st.total(gens), st.total(2)
        settings["windows_kept_max"] = st.windows
        settings["neighbours"] = [C.neighbour_mode(dev, x) for x in s]
    else:
        batch_size = batch_size or 32
        if max_memory is not None:  # the batch the builder will choose under this budget
            try:
                batch_size = C.graph_batch(m, s, ctx, batch_size, max_logits,
                                           max_feature_nodes, max_memory)
            except AttributionError as exc:
                if strict:
                    raise WontFitError(str(exc)) from None
                refusal, batch_size = str(exc), 1
        settings.update(prompt_tokens=ctx, batch_size=batch_size, max_logits=max_logits,
                        max_feature_nodes=max_feature_nodes)
        memory, t, flops, g = C.attribute_costs(m, s, dev, ctx, batch_size, max_logits,
                                                max_feature_nodes, probe=max_memory is not None)
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
    if refusal:
        result.fits = False
        result.warnings.append(refusal)
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
