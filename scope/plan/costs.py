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
#: a graph's backward pass, per token and block it crosses: the weights' activation-gradient
#: FLOP at the probe's matmul rate (no weight gradients, no Q/K path, no MLP where a
#: transcoder's write replaces it), plus elementwise passes (in `elementwise_s`) over d_model
#: (norm scales, residual adds, RoPE, the hooks' casts) and over d_mlp (tanh-GELU's backward and
#: the gate's products). Fitted on per-phase profiles of three graphs: the plan test's tiny one
#: (96 tokens x 32 copies, d_model 64), the bundled model's with its four demo SAEs (a whole
#: block 65 ms per pass at 16 tokens x 32 copies) and with its 18 transcoders (attention only)
BACKWARD_MODEL_PASSES = 3.0
BACKWARD_MLP_PASSES = 1.5
#: more passes over d_model in a block whose MLP a transcoder replaces: the gradient runs on
#: through its write (the hook's add and cast) and its skip, where a residual SAE's leaf stops it
BACKWARD_TRANSCODER_PASSES = 3.0
#: a matmul of M token rows runs at M / (M + SKINNY_ROWS) of the probe's square rate (measured
#: on one core: 0.69 at 16 rows, 0.88 at 64, 0.99 at 512); the unembedding of a short prompt
#: and the logit directions' single row are such products
SKINNY_ROWS = 8
#: elementwise passes over a [tokens, d_vocab] logit block (the float copy, the softmax)
FORWARD_LOGIT_PASSES = 3
#: small ops (in the device's measured `dispatch_s`) per graph row filled (its target's read
#: vector and the row's bookkeeping) and per (position, SAE) product when a batch of rows is
#: filled (the slices, the product, the scatter into the rows); measured 14-16 per product on
#: one core, where `dispatch_s` itself read 1.2-2.4 us from one process to the next
ROW_DISPATCHES = 6
PRODUCT_DISPATCHES = 15
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
#: bands stacked) and, for an SAE of several feature blocks, the copy of each block's rows into
#: the whole-SAE arrays. Mostly fresh pages, whose cost swings ~10x on a VM that hands freed
#: memory back to its host (docs/plan.md): 2.0 each fitted the Gemma-2-2B-shaped run of
#: benchmarks/bench_scale.py with the pages warm; the plan test's two-block run in a fresh
#: clone's CI, pages cold, measured 0.75x of that plan. 3.5 sits between the two
STATS_PASSES = 3.5
CONCAT_PASSES = 3.5
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


def _backward_span(sae: SAEShape | None, model: ModelShape, saes: Sequence[SAEShape]
                   ) -> tuple[range, list[SAEShape]]:
    """What one backward pass of `sae`'s feature rows (None: the logit rows) crosses: the blocks
    down to the nearest shallower SAE that rewrites the residual stream (its write is a leaf),
    else to the embedding; and the sites whose writes it reaches (that SAE's, and transcoders
    within the span), whose active features get edges from it."""
    top = model.n_layers - 1 if sae is None else sae.layer  # the block the read sits in
    leaves = [s.layer for s in saes if s.residual and s is not sae
              and (s.layer < top or (sae is None and s.layer == top))]
    floor = max(leaves, default=-1)
    reached = [s for s in saes if s is not sae and (
        (s.residual and s.layer == floor)
        or (not s.residual and floor < s.layer <= top
            and (sae is None or sae.residual or s.layer < sae.layer)))]
    return range(floor + 1, top + 1), reached


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


def _backward_block(model: ModelShape, ctx: int, mlp_replaced: bool, dev: DeviceInfo
                    ) -> tuple[float, float]:
    """`(FLOP, seconds)` per token of one block in a graph's backward pass: gradients of
    activations only (no weight gradients), attention patterns frozen (no Q/K path: one product
    with the pattern's transpose over `ctx` keys), and no MLP where a transcoder's write (a
    leaf) replaces it; plus the elementwise kernels (`BACKWARD_*_PASSES`)."""
    d, h = model.d_model, model.d_head
    qk = 2 * d * h * (model.n_heads + model.n_kv_heads)
    mlp = 2 * 3 * d * model.d_mlp if mlp_replaced else 0
    flop = 2 * model.layer_params - qk - mlp + 2 * ctx * model.n_heads * h
    ew = d * (BACKWARD_MODEL_PASSES + (BACKWARD_TRANSCODER_PASSES if mlp_replaced else 0)) + (
        0 if mlp_replaced else BACKWARD_MLP_PASSES * model.d_mlp)
    return flop, flop / dev.flops + ew * dev.elementwise_s


def _skinny(rows: int) -> float:
    """The share of the probe's matmul rate a product of `rows` token rows reaches."""
    return rows / (rows + SKINNY_ROWS)


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
               batch_size: int, max_logits: int, max_feature_nodes: int | None,
               probe: bool = False) -> tuple[dict, dict, float, M.GraphBytes]:
    """Memory, seconds by part, FLOP and bytes of one graph; `probe`: a `max_memory` budget
    is set, so one extra forward copy measures what a copy of the pass keeps."""
    g = M.graph_bytes(model, saes, n_pos, batch_size, max_logits, max_feature_nodes)
    memory = {"runtime": M.RUNTIME_BYTES, "weights": model.params * model.bytes_per_param,
              "sae_weights": sum(s.params * 4 for s in saes), "edges": g.edges,
              "autograd": g.autograd, "sites": g.sites,
              "logits": n_pos * model.d_vocab * 4}  # the clean run's, kept for the check
    B = max(1, min(batch_size, max(g.active_features, max_logits)))
    ew, L = dev.elementwise_s, model.n_layers
    # forward: the clean run (with its SAE encodes) and the final splice check, one copy each
    # through the unembedding over the whole vocabulary; the logit directions (one row through
    # the unembedding, and back once per logit row and once for the mean); the budget's probe
    # copy; then the graph pass of B copies, which stops at the final norm
    vocab = 2 * model.d_model * model.d_vocab  # FLOP per row of the unembedding
    one = n_pos * L * _block_flops(model, n_pos)  # one copy of the prompt through the blocks
    encode = n_pos * sum(2 * s.d_sae * (s.d_in + (s.d_out or s.d_in)) for s in saes)
    short = (2 + probe) * one + 2 * n_pos * vocab + encode  # products of n_pos rows
    directions = (2 + max_logits) * vocab
    fwd_s = (short / (dev.flops * _skinny(n_pos)) + B * one / (dev.flops * _skinny(B * n_pos))
             + directions / (dev.flops * _skinny(1))
             + ((2 + probe + B) * n_pos * L * _forward_block_elements(model, n_pos)
                + 2 * n_pos * model.d_vocab * FORWARD_LOGIT_PASSES
                + (g.autograd + g.sites) / 4) * ew  # the pass's saved tensors: new pages
             + (3 + probe) * L * LAYER_OVERHEAD_S)
    # backward: feature rows run in rounds of B per SAE, chosen by influence (attribution/
    # build.py): each round runs every SAE's share in batches of B, each batch one backward pass
    # through the blocks below that SAE's read site (`_backward_span`); the logit rows cross the
    # blocks above the deepest residual SAE. The shares are uneven, so an SAE's last batch of a
    # round is on average (B - 1) / 2B short of full
    n_saes, feature_rows = max(1, len(saes)), g.rows - max_logits
    rounds = -(-feature_rows // (B * n_saes))
    per_sae = feature_rows / (B * n_saes) + rounds * (B - 1) / (2 * B)  # passes per SAE
    logit_passes = -(-max_logits // B)
    replaced = {s.layer for s in saes if not s.residual}  # blocks whose MLP a transcoder replaces
    block = {r: _backward_block(model, n_pos, r, dev) for r in (False, True)}
    d_src = max(s.d_out or s.d_in for s in saes)
    bwd_flops = bwd_s = fill = products = 0.0
    for sae, n in [(None, logit_passes)] + [(s, per_sae) for s in saes]:
        blocks, reached = _backward_span(sae, model, saes)
        bwd_flops += n * B * n_pos * sum(block[b in replaced][0] for b in blocks)
        bwd_s += n * B * n_pos * sum(block[b in replaced][1] for b in blocks)
        fill += n * B * n_pos * sum(s.l0 for s in reached) * 2 * d_src
        products += n * len(reached) * n_pos
    # ranking before each round: (distinct layers + 2) products of the influence vector with the
    # rows filled so far (on average half the feature rows): one per layer of the paths from the
    # logits down to the sources, one more that finds nothing left; and each row normalised once
    # (|.| into the buffer, then divided in place)
    iters = len({s.layer for s in saes}) + 2
    ranked = rounds * iters * (max_logits + (g.rows - max_logits) / 2) * g.nodes
    t = {"forward": fwd_s, "backward": bwd_s,
         "edges": fill / dev.flops
         + (products * PRODUCT_DISPATCHES + g.rows * ROW_DISPATCHES) * dev.dispatch_s,
         "influence": ranked * dev.matvec_s + g.rows * g.nodes * ew,
         "overhead": g.rows * g.nodes * ew}  # the zeroed edge rows' fresh pages
    return memory, t, short + B * one + directions + bwd_flops + fill, g


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
