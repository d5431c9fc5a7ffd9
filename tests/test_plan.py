"""The planner: named errors before anything is loaded, and estimates within 25% of real runs.

The measured runs execute in a fresh subprocess (`python tests/test_plan.py child SPEC`) so that
VmHWM in /proc/self/status is that run's peak resident memory; disk is the size of the store it
wrote, seconds the wall time of the `scope.extract` / `scope.attribution_graph` call alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scope.errors import (
    ConfigError,
    DeviceError,
    ShapeMismatchError,
    UnknownModelError,
    UnknownSAEError,
    WontFitError,
)
from scope.plan import memory as M
from scope.plan import model_shape, plan, sae_shape

HERE = Path(__file__).resolve().parent
TOLERANCE = 0.25
GEMMA_2_2B = {"layers": 26, "d_model": 2304, "vocab": 256000, "d_mlp": 9216, "n_heads": 8,
              "n_kv_heads": 4, "d_head": 256}


# -- shapes and arithmetic ---------------------------------------------------------------------------


def test_known_model_matches_transformers_parameter_count():
    """Gemma 2 2B's parameter count from our table equals transformers' own model's (built on
    the meta device from its published config: nothing is allocated or downloaded)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216,
                       num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=256)
    with torch.device("meta"):
        hf = Gemma2ForCausalLM(cfg)
    n = sum(p.numel() for p in hf.parameters())  # tied lm_head counted once
    shape = model_shape("gemma-2-2b")
    assert shape.params - 2 * 256 * 26 == n  # Gemma 2 has no q/k norms (Gemma 3 does)
    assert model_shape("google/gemma-2-2b") == shape
    assert model_shape(dict(GEMMA_2_2B)).params == shape.params


def test_accumulator_bytes_match_a_real_accumulator():
    """Bytes per feature equal the sum of the tensors a FeatureAccumulator allocates."""
    from scope.pipeline.accumulators import FeatureAccumulator

    acc = FeatureAccumulator(512, ctx=24, top_k=7)
    tensors = [acc.count, acc.act_sum, acc.max, acc.hist, acc.sketch, acc._feat]
    for slots in (acc.top, *acc.bands):
        tensors += [slots.key, slots.window, slots.value, slots.pos, slots.acts]
    total = sum(t.numel() * t.element_size() for t in tensors)
    assert total == 512 * M.accumulator_bytes_per_feature(24, 7)


def test_registry_sae_shape():
    s = sae_shape("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71")
    assert (s.d_in, s.d_sae, s.layer, s.l0) == (2304, 16384, 20, 71)
    assert sae_shape("bundled").d_in == 640


# -- refusals before anything is loaded --------------------------------------------------------------


def test_unknown_model_and_sae_are_named_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="gemma-2-2b"):
        plan("gemma-2-2bb", [{"d_in": 2304, "d_sae": 16384, "layer": 3}], tokens=1000)
    with pytest.raises(UnknownSAEError, match="Did you mean"):
        plan("gemma-2-2b", ["gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_7"], tokens=1)
    with pytest.raises(UnknownSAEError):
        plan("gemma-2-2b", ["no-such-release/layer_1"], tokens=1)
    with pytest.raises(ShapeMismatchError, match="2304"):
        plan("gemma-3-270m", ["gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"],
             tokens=1000)
    with pytest.raises(ConfigError, match="tokens"):
        plan("gemma-2-2b", ["gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"])
    assert list(tmp_path.iterdir()) == []


def test_absent_device_is_a_named_error():
    import torch

    if torch.cuda.is_available():
        bad = f"cuda:{torch.cuda.device_count()}"
    else:
        bad = "cuda"
    with pytest.raises(DeviceError, match="cuda"):
        plan("gemma-2-2b", ["gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"],
             tokens=1000, device=bad)
    assert DeviceError.exit_code == 2


def test_max_memory_below_the_weights_is_refused():
    with pytest.raises(WontFitError, match=r"smaller than the weights.*bfloat16"):
        plan("gemma-2-27b", ["gemma-scope-27b-pt-res/layer_22/width_131k/average_l0_82"],
             tokens=10_000, max_memory=20 << 30)


def test_a_million_features_that_cannot_be_held_is_refused_with_the_way_out():
    sae = "gemma-scope-2b-pt-res/layer_12/width_1m/average_l0_107"
    with pytest.raises(WontFitError) as err:
        plan("gemma-2-2b", [sae], tokens=1_000_000, dtype="bfloat16", max_memory=24 << 30)
    msg = str(err.value)
    assert "accumulators" in msg and "fewer features per pass" in msg and "another device" in msg
    # the same plan with room for it: the figures say why (~23.5 KB of state per feature)
    p = plan("gemma-2-2b", [sae], tokens=1_000_000, dtype="bfloat16", strict=False)
    assert p.memory["accumulators"] == 1_048_576 * M.accumulator_bytes_per_feature(128, 20)


def test_the_plan_times_the_neighbour_mode_extraction_will_use():
    """On a CPU, a 1M-feature SAE's neighbours are approximate (decoder_tables' "auto"): the
    plan says so and times that mode (about 17 min here), not the ~14 h exact pass."""
    from scope.pipeline.decoder_tables import exact_flop
    from scope.pipeline.neighbours import approximate_cost

    sae = {"d_in": 2304, "layer": 12, "l0": 64}
    wide = plan(GEMMA_2_2B, [dict(sae, d_sae=1 << 20)], tokens=1000, logits=False, strict=False)
    narrow = plan(GEMMA_2_2B, [dict(sae, d_sae=1 << 16)], tokens=1000, logits=False)
    assert wide.settings["neighbours"] == ["approximate"]
    assert narrow.settings["neighbours"] == ["exact"]
    flops = wide.device["flops"]
    assert wide.time["tables"] > approximate_cost(1 << 20, 2304)[0] / flops
    assert wide.time["tables"] < exact_flop(1 << 20, 2304) / flops / 10
    assert narrow.time["tables"] > exact_flop(1 << 16, 2304) / 2 / flops


def test_a_graph_pass_crosses_the_blocks_down_to_the_nearest_residual_sae():
    """The backward spans of a mixed set (residual SAE at 2, transcoders at 1, 3, 4 of a
    6-block model), derived by hand from the splices: a residual SAE's write is a leaf that
    stops the gradient, a transcoder's lets it run on through the stream."""
    from scope.plan.costs import _backward_span
    from scope.plan.shapes import ModelShape, SAEShape

    m = ModelShape(name="m", n_layers=6, d_model=8, d_vocab=16, d_mlp=16, n_heads=2,
                   n_kv_heads=1, d_head=4)
    r2 = SAEShape(name="r2", d_in=8, d_sae=16, layer=2)
    t1, t3, t4 = (SAEShape(name=f"t{L}", d_in=8, d_sae=16, layer=L, residual=False)
                  for L in (1, 3, 4))
    saes = [r2, t1, t3, t4]
    spans = {("logits" if s is None else s.name): (list(b), [x.name for x in reached])
             for s in [None, *saes] for b, reached in [_backward_span(s, m, saes)]}
    assert spans == {"logits": ([3, 4, 5], ["r2", "t3", "t4"]), "r2": ([0, 1, 2], ["t1"]),
                     "t1": ([0, 1], []), "t3": ([3], ["r2"]), "t4": ([3, 4], ["r2", "t3"])}
    last = SAEShape(name="r5", d_in=8, d_sae=16, layer=5)  # at the last block: logits cross none
    assert _backward_span(None, m, [last]) == (range(6, 6), [last])


def test_disk_too_small_is_refused(tmp_path):
    """A store larger than the free disk under --out (64M features: ~1.5 TB) is refused."""
    saes = [{"d_in": 64, "d_sae": 1 << 26, "layer": 1}]
    model = {"layers": 2, "d_model": 64, "vocab": 512}
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    p = plan(model, saes, tokens=1 << 20, strict=False, out=tmp_path / "store")
    assert p.disk_peak_bytes > free and not p.fits
    assert any("of disk" in w and "another --out" in w for w in p.warnings)
    with pytest.raises(WontFitError, match="disk"):
        plan(model, saes, tokens=1 << 20, out=tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_to_json_keys(tmp_path):
    p = plan("gemma-2-2b", ["gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"],
             tokens=100_000, strict=False)
    p.to_json(tmp_path / "plan.json")
    data = json.loads((tmp_path / "plan.json").read_text())
    for key in ("peak_memory_bytes", "disk_bytes", "seconds", "memory", "time", "fits"):
        assert key in data
    assert data["peak_memory_bytes"] == sum(data["memory"].values())


# -- the command line ----------------------------------------------------------------------------------


def test_scope_plan_prints_writes_json_and_exits_2_when_it_will_not_fit(tmp_path, capsys):
    from scope.cli.main import main

    out = tmp_path / "plan.json"
    assert main(["plan", "--model", "gemma-3-270m", "--sae", "bundled", "--tokens", "100000",
                 "--max-memory", "8GiB", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peak memory" in text and "accumulators" in text and "fits: yes" in text
    data = json.loads(out.read_text())
    expected = plan("gemma-3-270m", ["bundled"], tokens=100_000, max_memory=8 << 30,
                    strict=False)
    assert data["peak_memory_bytes"] == expected.peak_memory_bytes
    assert data["disk_bytes"] == expected.disk_bytes
    big = "gemma-scope-2b-pt-res/layer_12/width_1m/average_l0_107"
    assert main(["plan", "--model", "gemma-2-2b", "--sae", big, "--tokens", "100000",
                 "--max-memory", "16GiB"]) == WontFitError.exit_code
    captured = capsys.readouterr()
    assert "fewer features per pass" in captured.out and "will not fit" in captured.err


def test_extract_and_attribute_dry_run_load_and_write_nothing(tmp_path, capsys):
    from scope.cli.main import main

    store = tmp_path / "store"
    assert main(["extract", "--sae", "bundled", "--out", str(store), "--tokens", "50000",
                 "--dry-run"]) == 0
    assert "plan: extract gemma-3-270m" in capsys.readouterr().out
    assert not store.exists()
    graph = tmp_path / "g.json"
    assert main(["attribute", "--sae", "bundled", "--prompt", "The capital of France is",
                 "--target", " Paris", "--graph", str(graph), "--dry-run"]) == 0
    assert "plan: attribute gemma-3-270m" in capsys.readouterr().out
    assert not graph.exists()
    # without --sae the bundled model is attributed over its transcoders at every layer
    assert main(["attribute", "--prompt", "The capital of France is", "--target", " Paris",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: attribute gemma-3-270m" in out and "sae_weights 90.2 MiB" in out  # 18 x 5.0 MiB


# -- estimates against measured runs -------------------------------------------------------------------


def _measure(spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]),
               HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(Path(__file__)), "child", json.dumps(spec)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plan_for(spec: dict):
    model = spec["model"]
    if model != "bundled":
        model = {"layers": 4, "d_model": 64, "vocab": 384, "d_mlp": 128, "n_heads": 4,
                 "n_kv_heads": 1 if model == "gemma3" else 2, "d_head": 16}
    d_in = 640 if spec["model"] == "bundled" else 64
    layers = spec.get("layers") or [spec["layer"]] * len(spec["widths"])
    saes = [{"d_in": d_in, "d_sae": w, "layer": layer, "l0": spec["l0"]}
            for w, layer in zip(spec["widths"], layers, strict=True)]
    if spec["task"] == "extract":
        return plan(model, saes, tokens=spec["tokens"], ctx=spec["ctx"],
                    batch_size=spec["batch"], top_k=spec["top_k"], logits=spec["logits"],
                    checkpoint_every=1e9, strict=False)
    return plan(model, saes, task="attribute", ctx=spec["n_pos"], batch_size=spec["batch"],
                max_logits=spec["max_logits"], max_feature_nodes=spec["max_feature_nodes"],
                strict=False)


def _within(estimate: float, measured: float, what: str) -> None:
    ratio = estimate / measured
    assert abs(ratio - 1) <= TOLERANCE, f"{what}: planned {estimate:.4g}, measured " \
        f"{measured:.4g} (ratio {ratio:.2f})"


EXTRACT_RUNS = {
    "tiny-wide": dict(task="extract", model="gemma3", widths=[32768], layer=3, l0=64,
                      tokens=4096, ctx=32, batch=16, top_k=20, logits=True),
    "tiny-two-saes": dict(task="extract", model="gemma2", widths=[16384, 16384], layer=2,
                          l0=32, tokens=8192, ctx=64, batch=8, top_k=10, logits=True),
    # two feature blocks at ctx 128: the checkpoint's snapshot and write dominate the loop
    "tiny-two-blocks": dict(task="extract", model="gemma3", widths=[40000], layer=3, l0=64,
                            tokens=1024, ctx=128, batch=4, top_k=20, logits=False),
}


@pytest.mark.parametrize("name", sorted(EXTRACT_RUNS))
def test_extraction_estimates_within_25_percent(name):
    """Plan, then run, in one fresh process (as a user would: the planner's probe sees the
    machine as loaded as the run does); compare peak RSS, store bytes and seconds."""
    measured = _measure(EXTRACT_RUNS[name])
    p = measured["plan"]
    _within(p["peak_memory_bytes"], measured["peak_rss_bytes"], "peak memory")
    _within(p["disk_bytes"], measured["disk_bytes"], "disk")
    _within(p["seconds"], measured["cpu_seconds"], "seconds")


GRAPH_RUN = dict(task="attribute", model="gemma3", widths=[4096] * 4, layers=[0, 1, 2, 3],
                 l0=48, n_pos=96, batch=32, max_logits=10, max_feature_nodes=2048)


@pytest.fixture(scope="module")
def graph_run() -> dict:
    """One graph of a 96-token prompt through four SAEs (~18k active features, 2,058 rows)."""
    return _measure(GRAPH_RUN)


def test_attribution_graph_memory_within_25_percent(graph_run):
    _within(graph_run["plan"]["peak_memory_bytes"], graph_run["peak_rss_bytes"], "peak memory")


def test_attribution_graph_seconds_within_25_percent(graph_run):
    _within(graph_run["plan"]["seconds"], graph_run["cpu_seconds"], "seconds")


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_and_prints_its_table():
    """benchmarks/gpu_check.sh --cpu-smoke: every step of the GPU check at toy shapes."""
    env = dict(os.environ, SCOPE_PYTHON=sys.executable)
    out = subprocess.run(["bash", str(HERE.parent / "benchmarks" / "gpu_check.sh"),
                          "--cpu-smoke"], capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert "| step | vs reference | throughput | memory | time |" in lines
    rows = [line for line in lines if line.startswith("| ") and "step" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| extract 1k", "| extract 4k", "| generate",
                                                "| attribution graph"]
    assert all("x floor" in r for r in rows[:2]) and "x transformers" in rows[2]


# -- the measured child ----------------------------------------------------------------------------


def _vmhwm() -> int:
    from scope.base.resident import peak_resident_bytes

    return peak_resident_bytes()


def _random_sae(model, d_sae: int, layer: int, l0: float, seed: int):
    """A random JumpReLU SAE whose thresholds give about `l0` features per token."""
    import torch

    from scope.model.activations import capture
    from scope.pipeline.corpus import iter_batches
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    hook = f"blocks.{layer}.hook_resid_post"
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    _, calib = next(iter_batches(None, model.tokenizer, 32, 4, 128))
    with torch.no_grad():
        x = capture(model, calib, [hook])[hook][:, 1:].reshape(-1, d)
        threshold = torch.quantile(x @ W_dec.T, 1 - l0 / d_sae, dim=0)
    cfg = SAEConfig(d_in=d, d_sae=d_sae, hook_name=hook)
    return JumpReLUSAE(cfg, W_enc=W_dec.T.contiguous(), W_dec=W_dec, b_enc=torch.zeros(d_sae),
                       b_dec=torch.zeros(d), threshold=threshold)


def _prompt(model, n_pos: int):
    from scope.pipeline.corpus import iter_batches

    return next(iter_batches(None, model.tokenizer, n_pos, 1, n_pos))[1]


def _prompt_l0(model, saes, n_pos: int) -> float:
    """Mean active features per token and SAE on the test prompt (as a registry's L0 is)."""
    from scope.model.activations import capture

    tokens = _prompt(model, n_pos)
    acts = capture(model, tokens, [s.cfg.hook_name for s in saes])
    return sum(float((s.encode(acts[s.cfg.hook_name]) > 0).sum()) for s in saes) / (
        n_pos * len(saes))


def child(spec: dict) -> dict:
    import tempfile

    import torch

    torch.set_num_threads(int(os.environ.get("SCOPE_PLAN_THREADS", "1")))
    if spec["model"] == "bundled":
        from scope.model.load import load_model

        model = load_model("bundled", device="cpu", dtype=torch.float32)
    else:
        from builders import tiny_hooked_model

        model = tiny_hooked_model(spec["model"])
    layers = spec.get("layers") or [spec["layer"]] * len(spec["widths"])
    saes = [_random_sae(model, w, layer, spec["l0"], i)
            for i, (w, layer) in enumerate(zip(spec["widths"], layers, strict=True))]
    if spec["task"] == "attribute":  # the planner's L0 input: this prompt's, BOS included
        spec = dict(spec, l0=_prompt_l0(model, saes, spec["n_pos"]))
    p = _plan_for(spec)
    result: dict = {"plan": {k: getattr(p, k) for k in ("peak_memory_bytes", "disk_bytes",
                                                        "seconds", "memory", "time")}}
    if spec["task"] == "extract":
        from scope.pipeline.extract import extract

        with tempfile.TemporaryDirectory() as tmp:
            start, cpu = time.perf_counter(), time.process_time()
            extract(model, saes, None, Path(tmp) / "store", tokens=spec["tokens"],
                    ctx=spec["ctx"], batch_size=spec["batch"], top_k=spec["top_k"],
                    progress=False, checkpoint_every=1e9, logits=spec["logits"])
            result["seconds"] = time.perf_counter() - start
            result["cpu_seconds"] = time.process_time() - cpu
            result["disk_bytes"] = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*")
                                       if f.is_file())
    else:
        from scope.attribution.build import attribution_graph

        prompt = _prompt(model, spec["n_pos"])
        # the best of three graphs: the planner's probes are best-of-five, what the work takes
        # undisturbed; one graph's fresh pages (its edge rows and their normalised copy) cost
        # 2-13 us each on this kind of virtual machine, from one run to the next
        result["seconds"] = result["cpu_seconds"] = float("inf")
        for _ in range(3):
            start, cpu = time.perf_counter(), time.process_time()
            g = attribution_graph(model, saes, prompt, batch_size=spec["batch"],
                                  max_logits=spec["max_logits"],
                                  max_feature_nodes=spec["max_feature_nodes"])
            result["seconds"] = min(result["seconds"], time.perf_counter() - start)
            result["cpu_seconds"] = min(result["cpu_seconds"], time.process_time() - cpu)
            result["active_features"] = int(g.stats["active_features"])
            del g  # freed before the next: the peak is one graph's
    result["peak_rss_bytes"] = _vmhwm()
    return result


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    print(json.dumps(child(json.loads(sys.argv[2]))))
