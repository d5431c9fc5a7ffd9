"""Captured segments: every layer's transcoder input and output from ONE forward pass per batch.

A segment is `segment_windows` consecutive token windows of a corpus split, captured in batches
of `capture_batch_size` windows: each batch runs the model once (stopping after the deepest
layer read) with hooks on every layer's input and output site, and keeps the positions that are
neither special tokens (BOS/EOS/pad) nor outliers (`scope.saes.outliers.outlier_positions`).
Segment i is written atomically as `seg_{i:06d}.safetensors` with `x [layers, n, d_in]` and
`y [layers, n, d_out]` in bfloat16; the same positions for every layer. Segments are a pure
function of (config, split, i), so a resumed run re-captures exactly what it lost.

`produce` writes segments (run inline, or in a child process that stays `lookahead` segments
ahead of the trainer); `read_segment` loads one.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scope.base.atomic import atomic_write
from scope.errors import CheckpointError, ConfigError
from scope.train.config import TrainConfig

log = logging.getLogger(__name__)

SEGMENT_DTYPE = torch.bfloat16


def segment_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"seg_{index:06d}.safetensors"


def sites(cfg: TrainConfig, layers: list[int]) -> tuple[list[str], list[str]]:
    """(input sites, output sites) of the run's layers, in layer order."""
    t = cfg.transcoder
    return ([t.hook_in.format(L=L) for L in layers], [t.hook_out.format(L=L) for L in layers])


def kept_positions(model: Any, tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """[batch, pos] bool: positions a transcoder trains on (no special token, no outlier)."""
    from scope.pipeline.corpus import special_token_ids
    from scope.saes.outliers import outlier_positions

    special = special_token_ids(model.tokenizer)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return ~(torch.isin(tokens, special) | outlier_positions(tokens, prefix=prefix,
                                                             bos_token_id=bos))


def window_batches(model: Any, cfg: TrainConfig, split: str, start: int) -> Iterator[torch.Tensor]:
    """[batch, pos] token windows of `split` from segment `start` on (capture_batch_size each)."""
    from scope.pipeline.corpus import token_windows
    from scope.pipeline.demo_corpus import corpus_for

    d = cfg.data
    return token_windows(corpus_for(d.corpus, split), model.tokenizer, ctx=d.ctx,
                         batch_size=d.capture_batch_size, start=start * cfg.transcoder.segment_windows)


def capture_segment(model: Any, cfg: TrainConfig, layers: list[int],
                    batches: Iterator[torch.Tensor], *, skip: bool = False
                    ) -> tuple[dict[str, torch.Tensor] | None, int]:
    """Capture the next segment from `batches`: ({"x", "y"} or None, model forward passes made).

    Reads `segment_windows / capture_batch_size` batches; with `skip` it only consumes them (a
    segment already on disk). None when the split has no window left.
    """
    from scope.model.activations import capture

    t = cfg.transcoder
    ins, outs = sites(cfg, layers)
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    forwards = 0
    for tokens in itertools.islice(batches, t.segment_windows // cfg.data.capture_batch_size):
        if skip:
            xs.append(tokens)
            continue
        with torch.no_grad():
            acts = capture(model, tokens, ins + outs)  # ONE forward for every layer
        forwards += 1
        keep = kept_positions(model, tokens.cpu(), t.outlier_prefix)
        xs.append(torch.stack([acts[h].cpu()[keep] for h in ins]).to(SEGMENT_DTYPE))
        ys.append(torch.stack([acts[h].cpu()[keep] for h in outs]).to(SEGMENT_DTYPE))
    if not xs or skip:
        return None, forwards
    return {"x": torch.cat(xs, dim=1).contiguous(), "y": torch.cat(ys, dim=1).contiguous()}, forwards


def write_segment(folder: Path, index: int, tensors: dict[str, torch.Tensor]) -> Path:
    path = segment_path(folder, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"segment": str(index)}))
    return path


def read_segment(path: Path) -> dict[str, torch.Tensor]:
    """{"x" [layers, n, d_in], "y" [layers, n, d_out]} of a segment file, or CheckpointError."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            out = {k: fh.get_tensor(k) for k in ("x", "y")}
    except Exception as exc:  # safetensors raises its own error types for a corrupt file
        raise CheckpointError(f"{path}: unreadable segment ({exc}); delete it and rerun (it is "
                              "captured again)") from None
    if out["x"].dim() != 3 or out["x"].shape[:2] != out["y"].shape[:2]:
        raise CheckpointError(f"{path}: x {list(out['x'].shape)} / y {list(out['y'].shape)} "
                              "are not [layers, n, d] with the same positions; delete it and rerun")
    return out


def produce(cfg_flat: dict[str, Any], layers: list[int], split: str, start: int, stop: int,
            folder: str, lookahead: int = 0, threads: int = 1, model: Any = None) -> int:
    """Write segments start..stop-1 of `split` into `folder` (skipping ones already there).

    With `lookahead` > 0 (the child-process mode) it waits while that many unconsumed segments
    lie in the folder, so the trainer is never more than `lookahead` segments behind.

    Returns:
        The number of segments written.
    """
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig.from_flat(cfg_flat)
    if model is None:
        from scope.model.load import load_model

        model = load_model(cfg.data.model)
    out = Path(folder)
    batches = window_batches(model, cfg, split, start)
    written = 0
    for index in range(start, stop):
        if segment_path(out, index).is_file():
            capture_segment(model, cfg, layers, batches, skip=True)
            continue
        while lookahead and len(list(out.glob("seg_*.safetensors"))) >= lookahead:
            time.sleep(0.5)
        t0 = time.time()
        tensors, _ = capture_segment(model, cfg, layers, batches)
        if tensors is None:
            raise ConfigError(f"the {split} split of corpus {cfg.data.corpus!r} ran out after "
                              f"{index} segments of {cfg.transcoder.segment_windows} windows; "
                              "lower train_tokens/eval_tokens or give a bigger corpus")
        write_segment(out, index, tensors)
        written += 1
        n, dt = tensors["x"].shape[1], time.time() - t0
        log.info("captured %s segment %d: %d positions x %d layers in %.1f s (%.0f tok/s)",
                 split, index, n, len(layers), dt, n / max(dt, 1e-9))
    return written


def spawn(cfg: TrainConfig, layers: list[int], split: str, start: int, stop: int, folder: Path,
          lookahead: int, threads: int) -> subprocess.Popen:
    """Run `produce` in a child Python process (`python -m scope.train.segments JOB.json`).

    A fresh interpreter rather than multiprocessing: it re-imports nothing of the caller's main
    module, so it works from scripts without a `__main__` guard. Its log goes to our stderr.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.json"
    job.write_text(json.dumps({"config": cfg.to_flat(), "layers": layers, "split": split,
                               "start": start, "stop": stop, "folder": str(folder),
                               "lookahead": lookahead, "threads": threads}))
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the scope package
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, "-m", "scope.train.segments", str(job)], env=env)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: `python -m scope.train.segments JOB.json` (written by `spawn`)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s capture %(message)s")
    args = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(args[0]).read_text())
    produce(job["config"], job["layers"], job["split"], job["start"], job["stop"], job["folder"],
            job["lookahead"], job["threads"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
