"""Tests of scope.train: the JumpReLU estimators, folding, the buffer and cache, resume, the
known-answer recovery of planted sparse directions, the `scope train` pipeline on a tiny model,
and the shipped demo SAE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scope.train.buffer import ActivationCache, ShuffleBuffer, shuffled_batches
from scope.train.config import OptimConfig, TrainConfig
from scope.train.jumprelu import JumpReLUTrainingSAE, jumprelu, step
from scope.train.trainer import (
    FitState,
    fit,
    heldout_report,
    l0_coefficient_at,
    lr_at,
    make_optimizer,
    to_inference,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "scope" / "bundled" / "demo_sae"


# --------------------------------------------------------------------------------------------
# estimators
# --------------------------------------------------------------------------------------------


def test_jumprelu_forward_is_exact_and_threshold_gets_rectangle_gradient():
    eps = 0.1
    z = torch.tensor([[0.00, 0.96, 1.04, 2.0]])
    theta = torch.full((4,), 1.0, requires_grad=True)
    z_ = z.clone().requires_grad_(True)
    out = jumprelu(z_, theta, eps)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.04, 2.0]]))
    out.sum().backward()
    # dz: 1 where it fires; dtheta: -(theta/eps) inside the window |z - theta| < eps/2
    assert torch.equal(z_.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert torch.allclose(theta.grad, torch.tensor([0.0, -10.0, -10.0, 0.0]))


def test_step_has_no_input_gradient_and_minus_one_over_eps_for_threshold():
    eps = 0.1
    z = torch.tensor([[0.97, 1.2], [1.01, 0.5]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0], requires_grad=True)
    h = step(z, theta, eps)
    assert torch.equal(h, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    h.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))
    assert torch.allclose(theta.grad, torch.tensor([-20.0, 0.0]))  # two hits in column 0


def test_decoder_gradient_projection_and_unit_norm():
    sae = JumpReLUTrainingSAE(8, 16, generator=torch.Generator().manual_seed(0))
    x = torch.randn(32, 8)
    sae(x, 0.01).loss.backward()
    sae.project_decoder_grad()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)


def test_sparse_step_matches_the_autograd_reference():
    torch.manual_seed(0)
    sae = JumpReLUTrainingSAE(64, 256, bandwidth=0.05, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(256) * 0.3)
        sae.b_dec.copy_(torch.randn(64) * 0.1)
        sae.b_enc.copy_(torch.randn(256) * 0.05)
    x = torch.randn(128, 64) * 0.2
    dead = torch.zeros(256, dtype=torch.bool)
    dead[:20] = True
    ref = sae(x, 0.01, dead, 0.003)
    ref.loss.backward()
    grads = {n: p.grad.clone() for n, p in sae.named_parameters()}
    fast = sae.sparse_step(x, 0.01, dead, 0.003)
    assert torch.allclose(fast.loss, ref.loss.detach(), rtol=1e-6)
    assert torch.allclose(fast.x_hat, ref.x_hat.detach(), atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-5), name
        assert grads[name].abs().max() > 0, name


def test_schedules():
    cfg = OptimConfig(lr=1.0, lr_warmup_steps=10, lr_decay_fraction=0.5, l0_coefficient=2.0,
                      l0_warmup_steps=4)
    assert lr_at(0, 100, cfg) == pytest.approx(0.1)
    assert lr_at(10, 100, cfg) == pytest.approx(1.0)
    assert lr_at(75, 100, cfg) == pytest.approx(0.5)
    assert l0_coefficient_at(0, cfg) == pytest.approx(0.5)
    assert l0_coefficient_at(100, cfg) == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------
# folding the normalisation into the saved weights
# --------------------------------------------------------------------------------------------


def test_folded_sae_reads_raw_activations_exactly():
    torch.manual_seed(0)
    d_in, d_sae, scale = 12, 40, 1 / 37.0
    sae = JumpReLUTrainingSAE(d_in, d_sae, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a non-trivial trained-looking state
        sae.b_dec.copy_(torch.randn(d_in) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae) * 0.1)
        sae.threshold.copy_(torch.rand(d_sae) * 0.3)
        sae.W_enc.add_(torch.randn(d_in, d_sae) * 0.2)
    raw = torch.randn(256, d_in) * 37.0 + 5.0
    x = raw * scale
    with torch.no_grad():
        pre = sae.encode_pre(x)
        f_norm = pre * (pre > sae.threshold)
        x_hat_norm = f_norm @ sae.W_dec + sae.b_dec
    cfg = TrainConfig.from_flat({"d_sae": d_sae, "hook_name": "blocks.0.hook_resid_post"})
    inference = to_inference(sae, scale, cfg, d_in=d_in).double()
    f_raw = inference.encode(raw.double())
    assert torch.equal(f_raw != 0, f_norm != 0)  # identical firing decisions
    assert torch.allclose(f_raw * scale, f_norm.double(), atol=1e-5)
    assert torch.allclose(inference.decode(f_raw) * scale, x_hat_norm.double(), atol=1e-5)
    assert torch.allclose(inference.W_dec.norm(dim=1), torch.ones(d_sae, dtype=torch.float64),
                          atol=1e-6)


# --------------------------------------------------------------------------------------------
# cache and buffer
# --------------------------------------------------------------------------------------------


def _filled_cache(folder: Path, n: int = 1000, d: int = 8, shard: int = 150) -> ActivationCache:
    cache = ActivationCache(folder, key={"test": 1}, d_in=d)
    rows = torch.arange(n)
    data = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    data[:, 0], data[:, 1] = rows // 64, rows % 64  # the row id, exact in bfloat16
    for start in range(0, n, 50):
        cache.append(data[start:start + 50], windows=1, flush_tokens=shard)
    cache.finish()
    return cache


def _row_ids(acts: torch.Tensor) -> torch.Tensor:
    return (acts[:, 0] * 64 + acts[:, 1]).long()


def test_cache_roundtrip_resume_point_and_stale_key(tmp_path):
    cache = _filled_cache(tmp_path / "c")
    again = ActivationCache.open(tmp_path / "c")
    assert again.complete and again.tokens == 1000 and again.windows_done == 20
    assert torch.equal(_row_ids(again.all()), torch.arange(1000))
    assert again.sample(100).shape == (100, 8)
    assert cache.n_shards == 7  # whole windows only: six of 150 tokens, then the last 100
    fresh = ActivationCache(tmp_path / "c", key={"test": 2}, d_in=8)
    assert fresh.tokens == 0 and not list((tmp_path / "c").glob("shard_*.npy"))


def test_hostile_cache_meta_is_never_followed(tmp_path):
    """A meta.json naming shards outside the folder, or not JSON, starts a fresh cache."""
    from scope.errors import CheckpointError

    _filled_cache(tmp_path / "c")
    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    outside = tmp_path / "secret.npy"
    outside.write_bytes(b"x")
    meta["shards"][0]["file"] = "../secret.npy"
    meta_path.write_text(json.dumps(meta))
    assert ActivationCache.open(tmp_path / "c") is None
    meta_path.write_text("{not json")
    assert ActivationCache.open(tmp_path / "c") is None
    fresh = ActivationCache(tmp_path / "c", key={"test": 1}, d_in=8)
    assert fresh.tokens == 0 and outside.read_bytes() == b"x"
    cache = _filled_cache(tmp_path / "d")  # a corrupt shard is a named error
    (tmp_path / "d" / cache.meta["shards"][0]["file"]).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable activation shard"):
        cache.shard(0)


def test_shuffle_buffer_is_a_permutation():
    data = torch.arange(1000).float()[:, None]
    gen = torch.Generator().manual_seed(0)
    out = torch.cat(list(ShuffleBuffer(256, 10, gen)(data.split(64))))
    assert len(out) == 1000
    assert torch.equal(out.sort(dim=0).values, data)
    assert not torch.equal(out, data)


def test_shuffled_batches_skip_matches_replay(tmp_path):
    cache = _filled_cache(tmp_path / "c")
    full = shuffled_batches(cache, 32, seed=3, capacity=256)
    first = [next(full) for _ in range(70)]  # crosses an epoch boundary (31 batches/epoch)
    resumed = shuffled_batches(cache, 32, seed=3, capacity=256, start_step=45)
    for i in range(45, 70):
        assert torch.equal(next(resumed), first[i])
    epoch = torch.cat(first[:31])
    assert len(torch.unique(_row_ids(epoch))) == len(epoch)  # no activation twice in an epoch


# --------------------------------------------------------------------------------------------
# the known-answer test: planted sparse directions are recovered
# --------------------------------------------------------------------------------------------


def _planted(n_true=48, d_in=64, p=0.04, seed=0):
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_true, d_in, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    offset = torch.randn(d_in, generator=gen) * 0.5

    def batches():
        while True:
            on = torch.rand(1024, n_true, generator=gen) < p
            size = torch.rand(1024, n_true, generator=gen) * 1.5 + 0.5
            yield (on * size) @ directions + offset

    return directions, batches


def test_known_answer_recovers_planted_directions():
    torch.set_num_threads(1)
    directions, batches = _planted()
    n_true, d_in = directions.shape
    stream = batches()
    sample = torch.cat([next(stream) for _ in range(4)])
    scale = float(1 / sample.pow(2).sum(dim=-1).mean().sqrt())
    cfg = OptimConfig(d_sae=n_true, lr=3e-3, l0_coefficient=1e-3, l0_warmup_steps=100,
                      lr_warmup_steps=20, batch_size=1024)
    sae = JumpReLUTrainingSAE(d_in, n_true, generator=torch.Generator().manual_seed(0))
    sae.init_b_dec(sample.mean(dim=0) * scale)
    state = fit(sae, stream, cfg, 400, scale=scale, progress=False, log_every=100)
    cos = (sae.W_dec.detach() @ directions.T).max(dim=0).values  # best match per true direction
    assert (cos >= 0.9).float().mean() >= 0.9, cos
    assert state.history[-1]["l0"] == pytest.approx(n_true * 0.04, rel=0.25)
    assert state.history[-1]["fvu"] < 0.05


def test_target_l0_controller_moves_lambda_towards_the_target():
    torch.set_num_threads(1)

    def run(target: float) -> tuple[float, float]:
        directions, batches = _planted(n_true=16, d_in=16, p=0.2)
        cfg = OptimConfig(d_sae=16, lr=3e-3, l0_coefficient=0.05, l0_warmup_steps=10,
                          batch_size=1024, target_l0=target)
        sae = JumpReLUTrainingSAE(16, 16, generator=torch.Generator().manual_seed(0))
        state = fit(sae, batches(), cfg, 300, scale=0.5, progress=False, log_every=50)
        return state.history[-1]["l0"], state.l0_scale

    plain_l0, plain_scale = run(0.0)
    ctrl_l0, ctrl_scale = run(8.0)
    assert plain_scale == 1.0 and ctrl_scale < 0.5
    assert ctrl_l0 > plain_l0 and abs(ctrl_l0 - 8.0) < abs(plain_l0 - 8.0)


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    from scope.train.trainer import load_checkpoint, save_checkpoint

    cache = _filled_cache(tmp_path / "c", n=2000, d=8)
    cfg = TrainConfig.from_flat({"d_sae": 16, "batch_size": 64, "lr": 1e-2, "l0_warmup_steps": 5,
                                 "lr_warmup_steps": 2, "hook_name": "blocks.0.hook_resid_post"})
    scale = 0.01

    def fresh():
        sae = JumpReLUTrainingSAE(8, 16, generator=torch.Generator().manual_seed(0))
        return sae, make_optimizer(sae, cfg.optim)

    sae_a, opt_a = fresh()
    fit(sae_a, shuffled_batches(cache, 64, seed=0), cfg.optim, 40, scale=scale, optimizer=opt_a,
        progress=False)
    sae_b, opt_b = fresh()
    ckpt = tmp_path / "checkpoint.safetensors"
    fit(sae_b, shuffled_batches(cache, 64, seed=0), cfg.optim, 40, scale=scale, optimizer=opt_b,
        state=FitState(), progress=False, checkpoint_every=17,
        on_checkpoint=lambda s: s.step == 17 and save_checkpoint(ckpt, sae_b, opt_b, s, scale, cfg))
    sae_c, opt_c = fresh()
    state, got_scale = load_checkpoint(ckpt, sae_c, opt_c, cfg)
    assert state.step == 17 and got_scale == scale
    fit(sae_c, shuffled_batches(cache, 64, seed=0, start_step=17), cfg.optim, 40, scale=scale,
        optimizer=opt_c, state=state, progress=False)
    for name, p in sae_a.named_parameters():
        assert torch.equal(p, dict(sae_c.named_parameters())[name]), name
    other = TrainConfig.from_flat({**cfg.to_flat(), "l0_coefficient": 0.5})
    assert load_checkpoint(ckpt, *fresh(), other) is None  # different settings: no resume


class _Payload:
    """Unpickling this creates a marker file: proof that a loader ran code from the file."""

    marker = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _crafted_pickle(path: Path, marker: Path) -> None:
    import pickle

    _Payload.marker = str(marker)
    path.write_bytes(pickle.dumps({"sae": _Payload(), "step": 1}))
    marker.unlink(missing_ok=True)


def test_crafted_pickle_checkpoint_is_refused_without_running_it(tmp_path):
    """A pickle in place of the checkpoint is a named error, and its payload never runs."""
    from scope.errors import CheckpointError
    from scope.train.trainer import load_checkpoint

    cfg = TrainConfig.from_flat({"d_sae": 16, "hook_name": "blocks.0.hook_resid_post"})
    sae = JumpReLUTrainingSAE(8, 16, generator=torch.Generator().manual_seed(0))
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint.safetensors"
    _crafted_pickle(ckpt, marker)
    with pytest.raises(CheckpointError, match="not a safetensors file.*Delete it"):
        load_checkpoint(ckpt, sae, make_optimizer(sae, cfg.optim), cfg)
    assert not marker.exists()
    # a real safetensors file without scope's header (e.g. an SAE's weights) is refused too
    from safetensors.torch import save_file

    save_file({"sae.W_enc": torch.zeros(8, 16)}, str(ckpt))
    with pytest.raises(CheckpointError, match="header"):
        load_checkpoint(ckpt, sae, make_optimizer(sae, cfg.optim), cfg)


def test_checkpoint_with_wrong_shapes_is_a_named_error(tmp_path):
    from scope.errors import CheckpointError
    from scope.train.trainer import load_checkpoint, save_checkpoint

    cfg = TrainConfig.from_flat({"d_sae": 16, "hook_name": "blocks.0.hook_resid_post"})
    small = JumpReLUTrainingSAE(4, 16, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "checkpoint.safetensors"
    save_checkpoint(ckpt, small, make_optimizer(small, cfg.optim),
                    FitState(steps_since_fired=torch.zeros(16, dtype=torch.long)), 1.0, cfg)
    sae = JumpReLUTrainingSAE(8, 16, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(ckpt, sae, make_optimizer(sae, cfg.optim), cfg)


# --------------------------------------------------------------------------------------------
# config, CLI, layering
# --------------------------------------------------------------------------------------------


def test_config_validation_and_flat_roundtrip():
    cfg = TrainConfig.from_flat({"d-sae": 128, "lr": "3e-4", "adam_betas": [0.0, 0.99]})
    assert cfg.optim.d_sae == 128 and cfg.optim.lr == 3e-4 and cfg.optim.adam_betas == (0.0, 0.99)
    assert TrainConfig.from_flat(cfg.to_flat()) == cfg
    json.dumps(cfg.to_flat())
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_flat({"widht": 3})
    with pytest.raises(ValueError, match="d_sae"):
        TrainConfig.from_flat({"d_sae": 0})
    with pytest.raises(ValueError, match="hook_name"):
        TrainConfig.from_flat({"hook_name": "layer 9"})
    with pytest.raises(ValueError, match="save_dtype"):
        TrainConfig.from_flat({"save_dtype": "int8"})


def test_demo_config_file_is_valid():
    import yaml

    data = yaml.safe_load((REPO / "configs" / "train" / "demo.yaml").read_text())
    cfg = TrainConfig.from_flat(data)
    assert cfg.data.model == "bundled" and cfg.data.hook_name == "blocks.9.hook_resid_post"
    assert cfg.data.train_tokens >= 2_000_000 and 4096 <= cfg.optim.d_sae <= 8192


def test_cli_train_end_to_end_on_a_tiny_model(tmp_path):
    """`scope train --config` captures, fits, checkpoints, evaluates and saves a native SAE."""
    import yaml
    from builders import _cached_dir
    from corpus_helpers import word_corpus

    from scope.cli.main import main
    from scope.saes.sae import JumpReLUSAE

    corpus = word_corpus(tmp_path / "corpus")
    config = {"model": str(_cached_dir("gemma3")), "hook_name": "blocks.1.hook_resid_post",
              "corpus": str(corpus), "ctx": 32, "train_tokens": 1500, "eval_tokens": 100,
              "d_sae": 32, "batch_size": 128, "epochs": 2, "lr": 1.0e-3, "l0_warmup_steps": 5,
              "lr_warmup_steps": 2, "log_every": 5, "checkpoint_every": 5,
              "run_dir": str(tmp_path / "run"), "out": str(tmp_path / "sae"),
              "save_dtype": "float16", "eval_lm_windows": 2, "release": "test", "sae_id": "x"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "train.yaml")]) == 0
    sae = JumpReLUSAE.load(tmp_path / "sae")
    assert sae.cfg.d_in == 64 and sae.cfg.d_sae == 32 and sae.dtype == torch.float16
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.extra["training"]["d_sae"] == 32
    report = json.loads((tmp_path / "sae" / "report.json").read_text())
    for key in ("l0", "fvu", "dead_fraction", "delta_lm_loss"):
        assert key in report["heldout"]
    assert report["train_sample"]["n_tokens"] == report["training"]["train_activations"]
    assert (tmp_path / "sae" / "training_config.json").is_file()
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    # a rerun resumes from the final checkpoint and the caches: no new step, same weights; a
    # pickle checkpoint of an older scope (or an attacker) lying beside it is never unpickled
    marker = tmp_path / "pwned"
    _crafted_pickle(tmp_path / "run" / "checkpoint.pt", marker)
    assert main(["train", "--config", str(tmp_path / "train.yaml")]) == 0
    assert not marker.exists()
    again = JumpReLUSAE.load(tmp_path / "sae")
    assert torch.equal(again.W_enc, sae.W_enc) and torch.equal(again.threshold, sae.threshold)
    progress = (tmp_path / "run" / "progress.jsonl").read_text().splitlines()
    assert json.loads(progress[-1])["step"] == report["training"]["steps"]


# --------------------------------------------------------------------------------------------
# the shipped demo SAE
# --------------------------------------------------------------------------------------------

needs_bundled = pytest.mark.skipif(not (BUNDLED / "cfg.json").is_file(),
                                   reason="demo SAE not trained yet")


@needs_bundled
def test_bundled_demo_sae_loads_small_and_meets_its_recorded_targets():
    import scope

    sae = scope.load_sae("bundled")
    assert sae.cfg.hook_name == "blocks.9.hook_resid_post"
    assert sae.cfg.d_in == 640 and 4096 <= sae.cfg.d_sae <= 8192
    assert torch.allclose(sae.W_dec.float().norm(dim=1), torch.ones(sae.cfg.d_sae), atol=1e-2)
    size = sum(p.stat().st_size for p in BUNDLED.iterdir())
    assert size < 25 * 2**20
    held = json.loads((BUNDLED / "report.json").read_text())["heldout"]
    assert 20 <= held["l0"] <= 80 and held["fvu"] <= 0.3
    assert {"delta_lm_loss", "dead_fraction"} <= set(held)  # reported (see report.json)
    training = json.loads((BUNDLED / "training_config.json").read_text())
    assert training["train_tokens"] >= 2_000_000


@needs_bundled
@pytest.mark.slow
def test_bundled_demo_sae_on_heldout_text_of_the_bundled_model():
    import scope
    from scope.model.activations import site_width
    from scope.pipeline.corpus import Corpus
    from scope.pipeline.evals import evaluate

    model = scope.load_model("bundled", device="cpu", dtype=torch.float32)
    sae = scope.load_sae("bundled", model=model).float()
    assert site_width(model, sae.cfg.hook_name) == sae.cfg.d_in
    report = evaluate(model, sae, Corpus(split="heldout"), ctx=128, max_tokens=16 * 128,
                      batch_size=8, progress=False)
    assert 20 <= report.l0 <= 80, report
    assert report.fvu <= 0.3, report


def test_heldout_report_counts_dead_features():
    cfg = TrainConfig.from_flat({"d_sae": 4, "hook_name": "blocks.0.hook_resid_post"})
    sae = JumpReLUTrainingSAE(4, 4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.threshold.fill_(0.5)
    inference = to_inference(sae, 1.0, cfg, d_in=4)
    acts = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])
    rep = heldout_report(inference, acts)
    assert rep["l0"] == 1.0 and rep["dead_fraction"] == 0.5 and rep["fvu"] == pytest.approx(0.0)
