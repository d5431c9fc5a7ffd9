"""SAE load time: first load (npz -> native cache) and second load (memory-mapped cache).

Builds a synthetic Gemma Scope 1 SAE at real size (d_in 2304, d_sae 16384, ~302 MB fp32) in a
temporary offline Hugging Face cache, loads it by release name twice through `scope.load_sae`,
and prints each time plus the ratio of the cached load to the floor: a bare
`safetensors.torch.load_file` of the same cached file. Target: second load < 0.5 s.

    python benchmarks/bench_sae_load.py [--d-in 2304] [--d-sae 16384] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RELEASE = "gemma-scope-2b-pt-res"
SAE_ID = "layer_20/width_16k/average_l0_71"
REPO = "google/gemma-scope-2b-pt-res"
REV = "0" * 40


def _write_npz(hub: Path, d_in: int, d_sae: int) -> Path:
    snap = hub / f"models--{REPO.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text(REV)
    dest = snap / "snapshots" / REV / SAE_ID / "params.npz"
    dest.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((d_sae, d_in), dtype=np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    with open(dest, "wb") as fh:
        np.savez(fh, W_enc=np.ascontiguousarray(W_dec.T), W_dec=W_dec,
                 b_enc=np.zeros(d_sae, np.float32), b_dec=np.zeros(d_in, np.float32),
                 threshold=np.full(d_sae, 0.1, np.float32))
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3, help="cached loads to time (best of)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scope-bench-sae-") as tmp:
        hub = Path(tmp) / "hf" / "hub"
        os.environ.update(HF_HOME=str(hub.parent), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
                          SCOPE_CACHE=str(Path(tmp) / "scope"))
        if args.d_in != 2304 or args.d_sae != 16384:
            print("note: registry shapes are 2304x16384; other sizes load as a local npz")
        npz = _write_npz(hub, args.d_in, args.d_sae)
        size_mb = npz.stat().st_size / 1e6
        import torch  # noqa: F401  (import cost kept out of the timings)
        from safetensors.torch import load_file

        import scope

        spec = (RELEASE, SAE_ID) if (args.d_in, args.d_sae) == (2304, 16384) else (str(npz),)
        kw = {} if len(spec) == 2 else {"hook_name": "blocks.20.hook_resid_post"}
        t0 = time.perf_counter()
        first = scope.load_sae(*spec, **kw)
        t_first = time.perf_counter() - t0
        del first
        seconds = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            sae = scope.load_sae(*spec, **kw)
            seconds.append(time.perf_counter() - t0)
            float(sae.W_dec[-1].sum())  # touch the weights
            del sae
        t_second = min(seconds)
        cached = next((Path(tmp) / "scope").rglob("sae_weights.safetensors"))
        floors = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tensors = load_file(str(cached))
            floors.append(time.perf_counter() - t0)
            float(tensors["W_dec"][-1].sum())
            del tensors
        t_floor = min(floors)
        print(f"SAE {args.d_in}x{args.d_sae} ({size_mb:.0f} MB npz, fp32)")
        print(f"first load  (npz + write cache): {t_first:8.3f} s")
        print(f"second load (memory-mapped cache): {t_second:8.3f} s  (target < 0.5 s: "
              f"{'OK' if t_second < 0.5 else 'MISSED'})")
        print(f"floor (safetensors load_file):   {t_floor:8.3f} s")
        print(f"ratio second/floor: {t_second / max(t_floor, 1e-9):.2f}x   "
              f"first/second: {t_first / max(t_second, 1e-9):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
