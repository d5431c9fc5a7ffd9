"""Decoder neighbours on this CPU: the approximate mode's time and recall@10, and the exact pass's.

A random decoder of `--features` x `--d-in` (bfloat16 by default, as wide SAEs ship) with
feature families (tests/test_neighbours.py `planted`: members share cosines of ~0.25-0.9), and
with `--gaussian` one with no structure (every neighbour at the noise level: the worst case).
Prints the approximate mode's wall and CPU seconds, its recall@10 against exact neighbours of
`--sample` random features, the exact pass's time measured on that sample and scaled to all
pairs (each pair once), and peak RSS; then the same two times scaled to 1,048,576 features by
the cost model of scope/pipeline/neighbours.py.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/bench_neighbours.py --features 65536
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

WIDE = 1_048_576


def main() -> int:
    import torch
    from test_neighbours import planted

    from scope.pipeline import neighbours as N
    from scope.pipeline.decoder_tables import exact_flop

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=65_536)
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--sample", type=int, default=300, help="features checked against exact")
    p.add_argument("--gaussian", action="store_true", help="a decoder with no families")
    args = p.parse_args()
    F, d = args.features, args.d_in
    W = (torch.randn(F, d, generator=torch.Generator().manual_seed(0)) if args.gaussian
         else planted(F, d, dtype=getattr(torch, args.dtype))).to(getattr(torch, args.dtype))
    t0, c0 = time.perf_counter(), time.process_time()
    table = N.approximate_neighbours(W, 10)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    r = N.recall(W, table["neighbour_index"], sample=args.sample)
    # the sample's exact pass is sample x F pairs; the full pass is F * (F + 1) / 2 of them
    exact_s = r.seconds_exact * (F + 1) / 2 / r.sample
    cells = round(math.sqrt(N.PROBE * F))
    flop, wide = N.approximate_cost(F, d)[0], N.approximate_cost(WIDE, d)[0]
    planned = approximate_seconds(F, d)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    kind = "Gaussian (no families)" if args.gaussian else "with feature families"
    print(f"decoder {F:,} x {d} {args.dtype}, {kind}; full rows, {cells} cells, probe "
          f"{N.PROBE}, {N.CANDIDATES} candidates")
    print(f"  approximate: {wall:.1f} s wall, {cpu:.1f} s CPU, {flop:.2g} FLOP; recall@10 "
          f"{r.recall:.3f} (worst feature {r.worst:.1f}) over {r.sample} features; the "
          f"planner's estimate / measured CPU time {planned / cpu:.2f}")
    print(f"  exact (from {r.sample} rows x all, {r.seconds_exact:.1f} s): ~{exact_s:.0f} s "
          f"for all pairs, {exact_flop(F, d):.2g} FLOP; approximate / exact time "
          f"{wall / exact_s:.3f}")
    print(f"  scaled to {WIDE:,} features by FLOP: approximate ~{wall * wide / flop / 60:.0f} min, "
          f"exact ~{exact_s * exact_flop(WIDE, d) / exact_flop(F, d) / 3600:.0f} h; peak RSS "
          f"{rss:.2f} GiB")
    return 0


def approximate_seconds(F: int, d: int) -> float:
    """What `scope plan` estimates for this decoder's approximate tables on this CPU."""
    from scope.plan.costs import neighbour_costs
    from scope.plan.device import device_info
    from scope.plan.shapes import SAEShape

    return neighbour_costs(device_info("cpu"), SAEShape(name="bench", d_in=d, d_sae=F, layer=0),
                           "approximate")[1]


if __name__ == "__main__":
    sys.exit(main())
