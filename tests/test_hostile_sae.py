"""Hostile SAE files through `scope eval`: NaN/inf weights, wrong dtypes, broken configs, device
files and pickles are each a named error naming the file (and the tensor or field); nothing is
written anywhere (see tests/hostile.py for the harness)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import TINY_TEXT, _cached_dir
from hostile import Case, params, run_case
from sae_builders import gs2_config, jumprelu_weights, write_gs2, write_npz, write_saelens_folder
from safetensors.torch import save_file

from scope.errors import (
    PickleWeightsError,
    SAEBenchPathError,
    SAEFormatError,
    ShapeMismatchError,
    UnknownSAEError,
)

D_IN, D_SAE, HOOK = 64, 32, "blocks.1.hook_resid_post"  # the tiny Gemma 3's residual width


def _eval(sae: str | None = None):
    def argv(root: Path) -> list[str]:
        return ["eval", "--model", str(_cached_dir("gemma3")), "--sae", sae or str(root / "sae"),
                "--corpus", str(root / "doc.txt"), "--ctx", "16", "--tokens", "64",
                "--batch-size", "2"]
    return argv


def _weights(**changes) -> dict[str, np.ndarray]:
    w = jumprelu_weights(D_IN, D_SAE, seed=1)
    for key, fn in changes.items():
        w[key] = fn(w[key].copy())
    return w


def _nan(a):
    a.flat[5] = np.nan
    return a


def _inf(a):
    a.flat[-1] = -np.inf
    return a


def _native(cfg_changes: dict | None = None, weights: dict | None = None, raw_cfg=None,
            tensors: dict | None = None):
    """A native folder (SAELens 6 layout) with optional edits to cfg.json or the tensors."""
    def setup(root: Path) -> None:
        (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
        folder = write_saelens_folder(root / "sae", weights or _weights(), hook_name=HOOK)
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.update(cfg_changes or {})
        text = json.dumps(cfg) if raw_cfg is None else raw_cfg
        (folder / "cfg.json").write_text(text)
        if tensors is not None:
            save_file(tensors, str(folder / "sae_weights.safetensors"))
    return setup


def _gs2(weights=None, config=None, raw_config=None):
    def setup(root: Path) -> None:
        (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
        cfg = config or gs2_config("model.layers.1.output", "model.layers.1.output",
                                   width=D_SAE, model_name="gemma-3-tiny")
        write_gs2(root / "sae", weights or _weights(), cfg)
        if raw_config is not None:
            (root / "sae" / "config.json").write_text(raw_config)
    return setup


GS_NPZ = "gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_10/params.npz"


def _eval_npz(root: Path) -> list[str]:
    return _eval(str(root / GS_NPZ))(root)


def _npz(weights):
    def setup(root: Path) -> None:
        (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
        write_npz(root / GS_NPZ, weights)
    return setup


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["HOSTILE_MARKER"]),))


def _pickled_weights(root: Path) -> None:
    _native()(root)
    os.environ["HOSTILE_MARKER"] = str(root / "pwned")
    (root / "sae" / "sae_weights.safetensors").write_bytes(pickle.dumps({"W_enc": _Payload()}))


def _device_weights(root: Path) -> None:
    _native()(root)
    (root / "sae" / "sae_weights.safetensors").unlink()
    (root / "sae" / "sae_weights.safetensors").symlink_to("/dev/zero")


def _truncated(root: Path) -> None:
    _native()(root)
    p = root / "sae" / "sae_weights.safetensors"
    p.write_bytes(p.read_bytes()[:-100])


def _bad_header(root: Path) -> None:
    _gs2()(root)
    header = json.dumps({"w_enc": {"dtype": "F32", "shape": "big", "data_offsets": [0, 4]}})
    blob = header.encode()
    (root / "sae" / "params.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob)


def _t(w: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in w.items()}


def _no_pwn(root: Path) -> None:
    assert not (root / "pwned").exists(), "the pickle payload ran"


def _eval_model(model: str):
    def argv(root: Path) -> list[str]:
        return ["eval", "--model", str(root / model), "--sae", "bundled", "--corpus",
                str(root / "doc.txt"), "--ctx", "16", "--tokens", "64"]
    return argv


def _pickle_model(root: Path) -> None:
    """A Hugging Face checkpoint folder whose only weights are a pickle `pytorch_model.bin`."""
    (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
    folder = shutil.copytree(_cached_dir("gemma3"), root / "model")
    (folder / "model.safetensors").unlink()
    os.environ["HOSTILE_MARKER"] = str(root / "pwned")
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload()}))


def _with_saebench(path: str):
    def argv(root: Path) -> list[str]:
        return [*_eval()(root), "--saebench-json", str(root / path)]
    return argv


def _native_and_folder(root: Path) -> None:
    _native()(root)
    (root / "out").mkdir()


def _saebench_written(root: Path) -> None:
    got = json.loads((root / "core.json").read_text())
    assert got["eval_type_id"] == "core"
    assert got["eval_result_metrics"]["sparsity"]["l0"] > 0
    assert got["sae_cfg_dict"]["metadata"]["hook_name"] == HOOK


def _empty(root: Path) -> None:
    (root / "doc.txt").write_text(" ".join(TINY_TEXT) * 4)
    (root / "sae").mkdir()


ROWS = [
    Case("native-nan-W_enc", _eval(), SAEFormatError,
         "sae_weights.safetensors: tensor 'W_enc' holds NaN or inf (first at index [0, 5])",
         setup=_native(weights=_weights(W_enc=_nan))),
    Case("native-inf-threshold", _eval(), SAEFormatError,
         "tensor 'threshold' holds NaN or inf (first at index [31])",
         setup=_native(weights=_weights(threshold=_inf))),
    Case("native-nan-b_dec", _eval(), SAEFormatError, "tensor 'b_dec' holds NaN",
         setup=_native(weights=_weights(b_dec=_nan))),
    Case("gs2-nan-W_dec", _eval(), SAEFormatError,
         "params.safetensors: tensor 'W_dec' holds NaN", setup=_gs2(_weights(W_dec=_nan))),
    Case("gs1-npz-inf-b_enc", _eval_npz, SAEFormatError, "params.npz: key 'b_enc' holds NaN or inf",
         setup=_npz(_weights(b_enc=_inf)),
         ),
    Case("gs1-npz-int32", _eval_npz, SAEFormatError, "key 'W_enc' has dtype int32",
         setup=_npz(_weights(W_enc=lambda a: a.astype(np.int32)))),
    Case("native-int32-weights", _eval(), SAEFormatError,
         "tensor 'W_enc' has dtype torch.int32, expected a float dtype",
         setup=_native(tensors={**_t(_weights()), "W_enc": torch.zeros(D_IN, D_SAE,
                                                                        dtype=torch.int32)})),
    Case("native-float8-weights", _eval(), SAEFormatError, "has dtype torch.float8_e4m3fn",
         setup=_native(tensors={**_t(_weights()), "b_enc": torch.zeros(
             D_SAE).to(torch.float8_e4m3fn)})),
    Case("cfg-d_in-zero", _eval(), SAEFormatError, "cfg.json: 'd_in' must be a positive integer, "
         "got 0", setup=_native({"d_in": 0})),
    Case("cfg-d_in-negative", _eval(), SAEFormatError, "'d_in' must be a positive integer, got -5",
         setup=_native({"d_in": -5})),
    Case("cfg-d_sae-float", _eval(), SAEFormatError, "'d_sae' must be a positive integer, got 32.0",
         setup=_native({"d_sae": 32.0})),
    Case("cfg-d_sae-bool", _eval(), SAEFormatError, "'d_sae' must be a positive integer, got True",
         setup=_native({"d_sae": True})),
    Case("cfg-dtype-int8", _eval(), SAEFormatError, "unsupported dtype 'int8'",
         setup=_native({"dtype": "int8"})),
    Case("cfg-dtype-number", _eval(), SAEFormatError, "dtype 16 is not a dtype name",
         setup=_native({"dtype": 16})),
    Case("cfg-is-a-list", _eval(), SAEFormatError, "cfg.json: expected a JSON object",
         setup=_native(raw_cfg="[1, 2, 3]")),
    Case("cfg-not-json", _eval(), SAEFormatError, "cfg.json: not valid JSON",
         setup=_native(raw_cfg="{d_in: 64")),
    Case("cfg-metadata-string", _eval(), SAEFormatError, "'metadata' must be an object",
         setup=_native({"metadata": "x"})),
    Case("cfg-hook-name-list", _eval(), SAEFormatError, "hook_name ['blocks.1'] (top level",
         setup=_native({"metadata": {"hook_name": ["blocks.1"]}})),
    Case("cfg-scope-d_sae-string", _eval(), SAEFormatError, "SAEConfig.d_sae must be a positive "
         "int, got 'x'", setup=_native({"scope": {"d_in": 64, "d_sae": "x", "hook_name": HOOK}})),
    Case("cfg-scope-extra-list", _eval(), SAEFormatError, "SAEConfig.extra must be a mapping",
         setup=_native({"scope": {"d_in": 64, "d_sae": 32, "hook_name": HOOK, "extra": [1]}})),
    Case("cfg-neuronpedia-id-number", _eval(), SAEFormatError,
         "SAEConfig.neuronpedia_id must be a string or null",
         setup=_native({"metadata": {"hook_name": HOOK, "neuronpedia_id": 7}})),
    Case("weights-symlink-to-dev-zero", _eval(), SAEFormatError, "not a regular file",
         setup=_device_weights),
    Case("sae-path-is-dev-null", _eval("/dev/null"), SAEFormatError,
         "/dev/null: not a regular file or folder", setup=_native()),
    Case("weights-truncated", _eval(), SAEFormatError, "cannot read safetensors",
         setup=_truncated),
    Case("weights-are-a-pickle", _eval(), SAEFormatError, "cannot read safetensors",
         setup=_pickled_weights, check=_no_pwn),
    Case("weights-missing-threshold", _eval(), SAEFormatError, "missing key(s) ['threshold']",
         setup=_native(tensors={k: v for k, v in _t(_weights()).items() if k != "threshold"})),
    Case("weights-wrong-shape", _eval(), SAEFormatError,
         "key 'W_enc' has shape [64, 31], expected [64, 32]",
         setup=_native(tensors={**_t(_weights()), "W_enc": torch.zeros(D_IN, D_SAE - 1)})),
    Case("gs2-config-is-a-list", _eval(), SAEFormatError, "config.json: expected a JSON object",
         setup=_gs2(raw_config="[]")),
    Case("gs2-header-bad-shape", _eval(), SAEFormatError, "unreadable safetensors header",
         setup=_bad_header),
    Case("gs2-unknown-site", _eval(), SAEFormatError, "is not a Gemma Scope 2 site",
         setup=_gs2(config=gs2_config("model.embed", "model.embed", width=D_SAE,
                                      model_name="x"))),
    Case("empty-sae-folder", _eval(), SAEFormatError, "folder holds no SAE", setup=_empty),
    Case("unknown-sae-name", _eval("gemma-scope-2b-pt-rse/layer_1/width_16k/average_l0_10"),
         UnknownSAEError, "Did you mean: gemma-scope-2b-pt-res", setup=_empty),
    Case("release-without-id", _eval("gemma-scope-2b-pt-res"), UnknownSAEError,
         "needs an SAE id", setup=_empty),
    Case("sae-for-another-model", _eval(), ShapeMismatchError, "has d_in=48 but blocks.1."
         "hook_resid_post in", setup=_native(weights=jumprelu_weights(48, D_SAE, seed=1))),
    Case("model-only-pickle-weights", _eval_model("model"), PickleWeightsError,
         "pytorch_model.bin, a pickle format (loading one can run code); scope loads "
         "safetensors only", setup=_pickle_model, check=_no_pwn),
    Case("saebench-json-is-a-folder", _with_saebench("out"), SAEBenchPathError,
         "--saebench-json", setup=_native_and_folder),
    # correct behaviour: odd but finite weights load, with a warning, and evaluate
    Case("saebench-json-written", _with_saebench("core.json"), fragment="SAEBench core eval JSON",
         setup=_native(), writes=("core.json",), check=_saebench_written),
    Case("sae-names-another-model-warns", _eval(), fragment="delta_lm_loss",
         setup=_native({"metadata": {"hook_name": HOOK, "model_name": "gemma-2-9b"}})),
    Case("non-positive-thresholds-warn", _eval(), fragment="delta_lm_loss",
         setup=_native(weights=_weights(threshold=lambda a: -a))),
]


@pytest.mark.parametrize("case", params(ROWS))
def test_hostile_sae(case: Case, tmp_path, capsys, monkeypatch, caplog):
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "scope_cache"))
    run_case(case, tmp_path, capsys, monkeypatch)
    if case.id == "non-positive-thresholds-warn":
        assert "32 of 32 thresholds are <= 0" in caplog.text
    if case.id == "sae-names-another-model-warns":
        assert "was made for gemma-2-9b but is used with tiny-gemma3" in caplog.text

