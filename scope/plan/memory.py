"""Byte counts of what extraction, the store and attribution graphs hold, from shapes alone.

Each figure follows the code that allocates it: `FeatureAccumulator` (count, fixed-point sum,
max, histogram, token sketch and `Slots` of top-k and band contexts per feature), the batch
temporaries of `capture` + `JumpReLUSAE.encode` + `FeatureAccumulator.update`, the copies
`save_state` makes at a checkpoint, the arrays `write_generation` / `write_tables` put on disk
(names and dtypes from `scope.store.schema`), and the edge matrix and retained autograd graph of
`attribution_graph`. Constants that are not shapes (the runtime's resident size, the number of
live activation copies per layer) were measured on this code and are named here.
"""

from __future__ import annotations

from dataclasses import dataclass

from scope.pipeline.accumulators import (
    BAND_EDGES,
    BAND_SAMPLES,
    HIST_EDGES,
    SKETCH_DEPTH,
    SKETCH_WIDTH,
)
from scope.pipeline.decoder_tables import (
    LOGIT_CHUNK,
    N_LOGITS,
    N_NEIGHBOURS,
    NEIGHBOUR_BLOCK,
    VOCAB_CHUNK,
)
from scope.pipeline.feature_blocks import FEATURE_BLOCK
from scope.pipeline.run import FEATURE_SHARD_SIZE
from scope.plan.shapes import ModelShape, SAEShape

N_BINS = len(HIST_EDGES) - 1
N_BANDS = len(BAND_EDGES) - 1
SKETCH_CELLS = SKETCH_DEPTH * SKETCH_WIDTH
#: resident size of a Python process with torch, transformers and TransformerLens imported and a
#: model bridged (measured: 440-470 MiB on CPU); a CUDA context adds about this much on the device
RUNTIME_BYTES = 470 << 20
CUDA_CONTEXT_BYTES = 500 << 20
#: live [tokens, width] float tensors of one block in a no-grad forward (residual, norm outputs,
#: attention in/out; the MLP's gate, up and product count at d_mlp)
FORWARD_D_MODEL_COPIES = 6
FORWARD_D_MLP_COPIES = 3
#: floats per element of the batch's [tokens, d_sae] that `encode` holds at its peak (the
#: product, the pre-activations, the bool mask and its float promotion), and that every SAE's
#: features hold until the accumulators have read them
ENCODE_PEAK_FLOATS = 3.25
#: saved-for-backward tensors per block of the attribution pass, as counts of [B, pos, width]
GRAD_D_MODEL_COPIES = 14
GRAD_D_MLP_COPIES = 5
GRAD_ATTN_COPIES = 10  # at n_heads * d_head
GRAD_SCORE_COPIES = 4  # at n_heads * pos (scores, capped scores, probabilities, mask)
#: the edge matrix plus one normalised copy (the build ranks rows on a buffer it fills row by
#: row; scores and pruning normalise in place)
EDGE_COPIES = 2
#: bytes per token string in vocab.json (JSON-escaped strings of Gemma's vocabulary, measured)
VOCAB_JSON_BYTES = 11
#: safetensors header bytes per array (name, dtype, shape, offsets)
ST_HEADER = 96


def slot_bytes(ctx: int) -> int:
    """One kept context of one feature: key, window (int64), value (f32), pos (i32), acts f16."""
    return 8 + 8 + 4 + 4 + 2 * ctx


def accumulator_bytes_per_feature(ctx: int, top_k: int) -> int:
    """Bytes of `FeatureAccumulator` state per feature (all on the SAE's device)."""
    scalars = 8 + 8 + 4 + 8  # count, fixed-point sum, max, the feature index
    return (scalars + 8 * N_BINS + 8 * SKETCH_CELLS
            + slot_bytes(ctx) * (top_k + N_BANDS * BAND_SAMPLES))


def checkpoint_copy_bytes_per_feature(ctx: int, top_k: int) -> tuple[int, int]:
    """Extra bytes per feature while `save_state` snapshots it: `(kept, transient)`.

    Kept until the generation is written: the key-sorted copy of the top-k slots (with its
    argsort order), the bands stacked into one array, mean, density and top_token. Transient,
    for one SAE at a time: the key-sorted copy of every band before it is stacked.
    """
    kept = ((slot_bytes(ctx) + 8) * top_k + (slot_bytes(ctx) - 8) * N_BANDS * BAND_SAMPLES
            + 8 + 8 + 4 * top_k * 3)
    return kept, (slot_bytes(ctx) + 8) * N_BANDS * BAND_SAMPLES


def feature_disk_bytes(ctx: int, top_k: int) -> int:
    """Bytes per feature of one generation: `features_*.safetensors` + `summary.safetensors`."""
    s = N_BANDS * BAND_SAMPLES
    per = (8 * N_BINS + top_k * (8 + 4 + 4 + 2 * ctx) + s * (8 + 4 + 4 + 2 * ctx)
           + 8 * SKETCH_CELLS)
    summary = 8 + 8 + 4 + 4 + 8 + top_k * (4 + 4)
    return per + summary


def table_disk_bytes_per_feature() -> int:
    """Bytes per feature of the once-per-run tables: logit ids/values +/- and neighbours."""
    return 2 * N_LOGITS * (4 + 4) + N_NEIGHBOURS * (4 + 4)


@dataclass(frozen=True)
class StoreBytes:
    """What a store holds on disk, by part."""

    generation: int
    """One data generation (per-feature files, summaries, the window tokens)."""
    tables: int
    vocab: int
    windows: int
    """Windows whose tokens the generation keeps (upper bound: every window or every slot)."""

    def total(self, generations: int = 1) -> int:
        return generations * self.generation + self.tables + self.vocab + 4096  # + manifest


def store_bytes(model: ModelShape, saes: list[SAEShape], n_windows: int, ctx: int,
                top_k: int) -> StoreBytes:
    """Disk of the store `extract` writes for these shapes over `n_windows` windows."""
    slots = top_k + N_BANDS * BAND_SAMPLES
    windows = min(n_windows, sum(s.d_sae for s in saes) * slots)
    files = sum(-(-s.d_sae // FEATURE_SHARD_SIZE) for s in saes)
    gen = sum(s.d_sae for s in saes) * feature_disk_bytes(ctx, top_k) + windows * (8 + 4 * ctx)
    gen += ST_HEADER * (files * 10 + 8 * len(saes) + 2)
    tables = (sum(s.d_sae for s in saes) * table_disk_bytes_per_feature()
              + ST_HEADER * files * 6)
    return StoreBytes(generation=gen, tables=tables, vocab=VOCAB_JSON_BYTES * model.d_vocab,
                      windows=windows)


@dataclass(frozen=True)
class ExtractionBytes:
    """Resident bytes of one extraction run, by part (device = where the model and SAEs live)."""

    weights: int
    sae_weights: int
    accumulators: int
    batch: int
    """Peak of one batch: forward temporaries, every SAE's features, one encode's temporaries."""
    checkpoint: int
    """Extra while a checkpoint snapshots the statistics (host memory)."""
    tables: int
    """Peak of the once-per-run decoder tables (logits, neighbours)."""
    window_pool: int


def extraction_bytes(model: ModelShape, saes: list[SAEShape], ctx: int, batch_size: int,
                     top_k: int, n_windows: int) -> ExtractionBytes:
    """The resident bytes of `extract` for these shapes (see the module docstring)."""
    n_tok = batch_size * ctx
    act = 4  # the SAEs encode in float32 unless loaded in another dtype
    forward = n_tok * (FORWARD_D_MODEL_COPIES * model.d_model
                       + FORWARD_D_MLP_COPIES * model.d_mlp) * model.bytes_per_param
    forward += 2 * batch_size * model.n_heads * ctx * ctx * 4  # eager scores + probabilities
    feats = [n_tok * s.d_sae * act for s in saes]
    batch = forward + sum(feats) + max(int((ENCODE_PEAK_FLOATS - 1) * f) for f in feats)
    batch += 2 * sum(batch_size * s.d_sae * 8 for s in saes) * 6  # [d_sae, batch] int64 keys
    acc = sum(s.d_sae for s in saes) * accumulator_bytes_per_feature(ctx, top_k)
    kept, transient = checkpoint_copy_bytes_per_feature(ctx, top_k)
    largest = max(s.d_sae for s in saes)
    ckpt = sum(s.d_sae for s in saes) * kept + min(largest, FEATURE_BLOCK) * transient
    # an SAE of several feature blocks: one block's snapshot beside the whole-SAE arrays
    ckpt += max((FEATURE_BLOCK * kept for s in saes if s.d_sae > FEATURE_BLOCK), default=0)
    shard = min(largest, FEATURE_SHARD_SIZE) * feature_disk_bytes(ctx, top_k)
    ckpt += 2 * shard  # safetensors serialises one feature file at a time
    neighbours = (largest * max(s.d_out or s.d_in for s in saes) * 4
                  + 3 * NEIGHBOUR_BLOCK**2 * 4 + largest * 16 * 12)
    logits = min(largest, LOGIT_CHUNK) * (VOCAB_CHUNK * 4 * 2 + model.d_model * 8)
    slots = top_k + N_BANDS * BAND_SAMPLES
    pool = min(n_windows, sum(s.d_sae for s in saes) * slots) * (4 * ctx + 200)
    return ExtractionBytes(
        weights=model.params * model.bytes_per_param,
        sae_weights=sum(s.params * 4 for s in saes), accumulators=acc, batch=batch,
        checkpoint=ckpt, tables=max(neighbours, logits), window_pool=pool)


@dataclass(frozen=True)
class GraphBytes:
    """Resident bytes of one attribution graph, by part."""

    active_features: int
    rows: int
    nodes: int
    edges: int
    """The `[rows, nodes]` float32 edge matrix, with the copies ranking influence makes."""
    autograd: int
    """The batched forward pass kept for every backward (B copies of the prompt)."""
    sites: int
    """Per site: dense activations, error, leaf writes and their gradients."""


def graph_bytes(model: ModelShape, saes: list[SAEShape], n_pos: int, batch_size: int,
                max_logits: int, max_feature_nodes: int | None) -> GraphBytes:
    """The resident bytes of `attribution_graph` for a prompt of `n_pos` tokens."""
    n_f = int(sum(s.l0 for s in saes) * n_pos)
    rows = max_logits + (n_f if max_feature_nodes is None else min(n_f, max_feature_nodes))
    nodes = n_f + len(saes) * n_pos + n_pos + max_logits
    B = max(1, min(batch_size, max(n_f, max_logits)))
    bt = B * n_pos
    per_layer = bt * (GRAD_D_MODEL_COPIES * model.d_model + GRAD_D_MLP_COPIES * model.d_mlp
                      + GRAD_ATTN_COPIES * model.n_heads * model.d_head)
    per_layer += GRAD_SCORE_COPIES * B * model.n_heads * n_pos * n_pos
    autograd = model.n_layers * per_layer * 4 + bt * model.d_vocab * 0  # stops at the final norm
    sites = sum(n_pos * s.d_sae * 4 * 3 + bt * (s.d_out or s.d_in) * 4 * 4 for s in saes)
    return GraphBytes(active_features=n_f, rows=rows, nodes=nodes,
                      edges=EDGE_COPIES * rows * nodes * 4,
                      autograd=autograd, sites=sites)
