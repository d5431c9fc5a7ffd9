"""What a run costs in time: the FLOP, elementwise passes and measured overheads of an
extraction's and an attribution graph's parts, divided by the device's measured throughputs
(`scope.plan.device`), with the byte counts of `scope.plan.memory`. `scope.plan.estimate`
adds them up, judges them against the budget and explains them.
"""

from __future__ import annotations

from collections.abc import Sequence

from scope.pipeline.decoder_tables import auto_mode
from scope.pipeline.feature_blocks import FEATURE_BLOCK
from scope.pipeline.neighbours import approximate_cost
from scope.plan import memory as M
from scope.plan.device import DeviceInfo
from scope.plan.shapes import ModelShape, SAEShape

#: seconds of Python per block per forward pass (bridge hook points, norms, eager attention)
LAYER_OVERHEAD_S = 1.5e-3
#: a graph's backward pass over its weights' forward FLOP (activation gradients only, plus the
#: elementwise backward kernels), fitted on four measured graphs: the plan test's tiny one,
#: the bundled model's with its 18 transcoders and with the four demo SAEs (planned / measured
#: 0.77 and 0.97), and the 1,024-token one of benchmarks/bench_long_graph.py
BACKWARD_FLOP_FACTOR = 1.3
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
#: elementwise passes per token and block of the forward pass, by width: the MLP's activation
#: and gating (tanh GELU costs two passes), the four RMSNorms and two residual adds, and the
#: eager attention's scaling, soft-cap, mask and softmax over `ctx` keys per head
FORWARD_MLP_PASSES = 3
FORWARD_MODEL_PASSES = 22
FORWARD_SCORE_PASSES = 10
#: passes (in `elementwise_s` per 4 bytes) over an SAE's accumulator state when a checkpoint
#: snapshots it (`BlockedAccumulator.stats`: the slots sorted by key into fresh arrays, the
#: bands stacked) and, for an SAE of several feature blocks, their concatenation; fitted on
#: the Gemma-2-2B-shaped run of benchmarks/bench_scale.py (65,536 features: 2 blocks)
STATS_PASSES = 2.0
CONCAT_PASSES = 2.0
#: seconds to write the vocabulary, per token string, and a store's bytes, per byte (safetensors
#: serialisation and the atomic folder's fsyncs; measured on this machine's disk: 0.33 GB/s)
VOCAB_S_PER_TOKEN = 4e-6
WRITE_BYTES_PER_S = 0.35e9
#: the approximate neighbours' products over the probe's matmul time: each cell's is thin
#: (its members are ~sqrt(d_sae / 8) rows); measured 1.8x at 65,536 and 2.3x at 1,048,576
#: features x 2304 (benchmarks/bench_neighbours.py, one core)
APPROX_MATMUL_FACTOR = 2.0
#: seconds to start a run (store lock, corpus, first windows, opening the finished store)
START_S = 0.5

def _stop_layers(model: ModelShape, saes: Sequence[SAEShape]) -> int:
    """Blocks `capture` runs: up to the deepest SAE's block (0 for the embedding alone)."""
    return min(model.n_layers, max(s.layer for s in saes) + 1)


def _backward_blocks(sae: SAEShape, saes: Sequence[SAEShape]) -> int:
    """Blocks a feature row of `sae` runs backward through: down to the nearest shallower SAE
    that rewrites the residual stream (its write is a leaf), else to the embedding."""
    below = [s.layer for s in saes if s.residual and s.layer < sae.layer]
    return sae.layer - max(below, default=-1)


def _block_flops(model: ModelShape, ctx: int) -> float:
    """FLOP per token of one block: its weights once, eager attention over `ctx` keys."""
    return 2 * model.layer_params + 4 * ctx * model.n_heads * model.d_head


def _forward_block_elements(model: ModelShape, ctx: int) -> float:
    """Elementwise work per token of one block (in passes over one float each)."""
    return (FORWARD_MLP_PASSES * model.d_mlp + FORWARD_MODEL_PASSES * model.d_model
            + FORWARD_SCORE_PASSES * model.n_heads * ctx)


def neighbour_mode(dev: DeviceInfo, sae: SAEShape) -> str:
    """The mode `decoder_tables(neighbours="auto")` will choose (`neighbour_mode`'s rule)."""
    return auto_mode(sae.d_sae, sae.d_out or sae.d_in, dev.device.startswith("cuda"))


def neighbour_costs(dev: DeviceInfo, sae: SAEShape, mode: str) -> tuple[float, float]:
    """`(FLOP, seconds)` of one SAE's neighbour table in `mode` ("exact" or "approximate")."""
    d = sae.d_out or sae.d_in
    if mode == "exact":  # symmetric cosines, each tile ranked both ways
        return sae.d_sae**2 * d, sae.d_sae**2 * d / dev.flops + sae.d_sae**2 * dev.topk_s
    flop, scanned = approximate_cost(sae.d_sae, d)
    return flop, (APPROX_MATMUL_FACTOR * flop / dev.flops
                  + scanned * (dev.topk_s + 2 * dev.elementwise_s))  # ranked and masked


def _stats_seconds(saes: Sequence[SAEShape], ctx: int, top_k: int, ew: float) -> float:
    """One checkpoint's snapshot of every SAE's state (`BlockedAccumulator.stats`)."""
    per = M.accumulator_bytes_per_feature(ctx, top_k) / 4 * ew
    return sum(s.d_sae * per * (STATS_PASSES + (CONCAT_PASSES if s.d_sae > FEATURE_BLOCK else 0))
               for s in saes)


def _backward_block_flops(model: ModelShape, ctx: int, mlp_replaced: bool) -> float:
    """FLOP per token of one block in a graph's backward pass: gradients of activations only
    (no weight gradients), attention patterns frozen (no Q/K path), and no MLP where a
    transcoder's write (a leaf) replaces it. The weights' products only: the attention over
    `ctx` keys is `_backward_attention_flops` (with the patterns frozen, one product)."""
    d, h = model.d_model, model.d_head
    qk = 2 * d * h * (model.n_heads + model.n_kv_heads)
    mlp = 2 * 3 * d * model.d_mlp if mlp_replaced else 0
    return 2 * model.layer_params - qk - mlp


def _backward_attention_flops(model: ModelShape, ctx: int) -> float:
    """FLOP per token of one block's attention in a graph's backward pass: the frozen
    pattern's transpose times the gradient over `ctx` keys (one large product, at the
    device's matmul rate: no elementwise kernels beside it)."""
    return 2 * ctx * model.n_heads * model.d_head


def extract_costs(model: ModelShape, saes: list[SAEShape], dev: DeviceInfo, tokens: int, ctx: int,
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
    table_flops, table_s = 0.0, 0.0
    for s in saes:  # neighbours: exact or approximate, as decoder_tables' "auto" will choose
        flop, secs = neighbour_costs(dev, s, neighbour_mode(dev, s))
        table_flops, table_s = table_flops + flop, table_s + secs
    logit_flops = sum(2 * s.d_sae * model.d_model * model.d_vocab for s in saes) if logits else 0
    table_flops += logit_flops
    st = M.store_bytes(model, saes, n_windows, ctx, top_k)
    ew = dev.elementwise_s
    t = {"forward": fwd_flops / dev.flops
         + n_tok * layers * _forward_block_elements(model, ctx) * ew,
         "encode": enc_flops / dev.flops + n_tok * F * ENCODE_PASSES * ew,
         "accumulate": (n_tok * F * FEATURE_PASSES + n_batches * F * batch_size * KEY_PASSES) * ew,
         "overhead": n_batches * (layers * LAYER_OVERHEAD_S + BATCH_OVERHEAD_S),
         "tables": (logit_flops / dev.flops + table_s
                    + st.tables / WRITE_BYTES_PER_S),
         "vocab": model.d_vocab * VOCAB_S_PER_TOKEN,
         "setup": START_S + F * M.accumulator_bytes_per_feature(ctx, top_k) / 4 * ew}
    loop = sum(t.values())
    n_ckpt = 1 + int(loop // max(checkpoint_every, 1e-9))
    t["checkpoints"] = n_ckpt * (_stats_seconds(saes, ctx, top_k, ew)
                                 + st.generation / WRITE_BYTES_PER_S)
    flops = fwd_flops + enc_flops + table_flops
    return memory, t, flops, st, min(n_ckpt, 2), fixed


def attribute_costs(model: ModelShape, saes: list[SAEShape], dev: DeviceInfo, n_pos: int,
               batch_size: int, max_logits: int, max_feature_nodes: int | None
               ) -> tuple[dict, dict, float, M.GraphBytes]:
    g = M.graph_bytes(model, saes, n_pos, batch_size, max_logits, max_feature_nodes)
    memory = {"runtime": M.RUNTIME_BYTES, "weights": model.params * model.bytes_per_param,
              "sae_weights": sum(s.params * 4 for s in saes), "edges": g.edges,
              "autograd": g.autograd, "sites": g.sites,
              "logits": n_pos * model.d_vocab * 4}  # the clean run's, kept for the check
    B = max(1, min(batch_size, max(g.active_features, max_logits)))
    # feature rows run in rounds of B per SAE, chosen by influence (attribution/build.py):
    # each round runs every SAE's share in batches of B, each batch a backward pass that
    # crosses only the blocks below that SAE's read site (the logit rows cross every block).
    # The shares are uneven, so an SAE's last batch of a round is on average (B - 1) / 2B
    # short of full: measured 52 passes for the bundled transcoders' graph and 44 for the four
    # demo SAEs', where whole batches alone would be 34 and 33
    n_saes, feature_rows = max(1, len(saes)), g.rows - max_logits
    rounds = -(-feature_rows // (B * n_saes))
    per_sae = feature_rows / (B * n_saes) + rounds * (B - 1) / (2 * B)  # passes per SAE
    logit_passes = -(-max_logits // B)
    passes = logit_passes + per_sae * n_saes
    depth = sum(_backward_blocks(s, saes) / model.n_layers for s in saes)
    full = logit_passes + per_sae * depth  # backward passes, in whole-model units
    per_tok = model.n_layers * _block_flops(model, n_pos)
    fwd = n_pos * per_tok * 3 + B * n_pos * per_tok  # clean, splice check, plain; the graph pass
    replaced = {s.layer for s in saes if not s.residual}  # blocks whose MLP a transcoder replaces
    bwd_per_tok = sum(_backward_block_flops(model, n_pos, L in replaced)
                      for L in range(model.n_layers))
    bwd = full * B * n_pos * (BACKWARD_FLOP_FACTOR * bwd_per_tok
                              + model.n_layers * _backward_attention_flops(model, n_pos))
    fill = passes * B * g.active_features * 2 * max(s.d_out or s.d_in for s in saes)
    # ranking before each round: (distinct layers + 1) products of the influence vector with the
    # rows filled so far (on average half the feature rows), and each row normalised once (|.|
    # into a fresh row, then divided in place)
    iters = len({s.layer for s in saes}) + 1
    ranked = rounds * iters * (max_logits + (g.rows - max_logits) / 2) * g.nodes
    fwd_ew = (3 + B) * n_pos * model.n_layers * _forward_block_elements(model, n_pos)
    t = {"forward": fwd / dev.flops + fwd_ew * dev.elementwise_s,
         "backward": bwd / dev.flops, "edges": fill / dev.flops
         + passes * B * g.active_features * dev.elementwise_s
         + passes * len(saes) * n_pos * PRODUCT_OVERHEAD_S,
         "influence": ranked * dev.matvec_s + g.rows * g.nodes * 2 * dev.elementwise_s,
         "overhead": (3 * model.n_layers + full * 3 * model.n_layers) * LAYER_OVERHEAD_S}
    return memory, t, fwd + bwd + fill, g


def graph_batch(model: ModelShape, saes: list[SAEShape], n_pos: int, batch_size: int,
                max_logits: int, max_feature_nodes: int | None, budget: int) -> int:
    """The batch `attribution_graph(max_memory=budget)` will choose: `rows.memory_plan`'s rule
    on the planned bytes (resident before the passes, edge rows, per copy, the final check).

    Raises:
        AttributionError: the budget cannot hold the graph (the figure and the way out).
    """
    from scope.attribution.rows import memory_plan

    one, two = (M.graph_bytes(model, saes, n_pos, b, max_logits, max_feature_nodes)
                for b in (1, 2))
    per_copy = two.autograd + two.sites - one.autograd - one.sites
    held = (M.RUNTIME_BYTES + model.params * model.bytes_per_param
            + sum(s.params * 4 for s in saes) + one.autograd + one.sites - per_copy
            + n_pos * model.d_vocab * 4)
    return memory_plan(budget, batch_size, per_copy, one.edges, held,
                       2 * n_pos * model.d_vocab * 4)
