"""The measured sweep behind the default steering strength (`scope.steer.defaults`).

On a store of the bundled model and demo SAE (`scope demo` makes one), steers each of ~20
labelled live features alone (not dense, at least `RARE` firings, the most specific first: the
largest share of their firings on one word token) at multiples of its max activation in the
store, continues the default prompt greedily, and measures each text's drift: its loss
(nats/token) under the unsteered model. Prints, per multiple, the median drift, the share of
features whose text changed, the share within `DRIFT_MARGIN` nats of the unsteered text's
loss, the share that is not a loop (`MIN_DISTINCT` of its words distinct) and the share that is
both (fluent), then the multiple the rule picks: the largest one (up to the first that fails)
that keeps more than `MOST` of the features fluent.

    python benchmarks/bench_steer_sweep.py [--store runs/demo] [--features 20] [--texts]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time

import numpy as np
import torch


def pick_features(store, sae: str, n: int) -> list[int]:
    """The n most specific labelled live features (share of firings on one word token)."""
    from scope.explore.feature_list import bulk_fires_on
    from scope.store.labels import DENSE, RARE

    dens, count = store.densities(sae), store.firing_counts(sae)
    fires = bulk_fires_on(store, sae)
    cand = []
    for f in range(len(dens)):
        if not (0 < dens[f] <= DENSE and count[f] >= RARE and fires[f]):
            continue
        tok, share = fires[f][0]
        if sum(c.isalpha() for c in tok) >= 3:  # a word, not punctuation or whitespace
            cand.append((-share, -int(count[f]), f))
    return [f for _, _, f in sorted(cand)[:n]]


def main() -> None:
    from scope.model.load import load_model
    from scope.saes.loading import load_sae
    from scope.steer import defaults as sd
    from scope.steer.drift import distinct_share, sweep
    from scope.store import open_store

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default="runs/demo", help="a store of the bundled model + SAE")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--prompt", default=sd.PROMPT)
    p.add_argument("--tokens", type=int, default=sd.MAX_NEW_TOKENS)
    p.add_argument("--texts", action="store_true", help="print every steered text")
    a = p.parse_args()
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    store = open_store(a.store)
    name = store.sae_names[0]
    model = load_model("bundled")
    sae = load_sae("bundled", model=model)
    feats = pick_features(store, name, a.features)
    peak = store.max_activations(name)
    t = time.time()
    print(f"steering {len(feats)} features x {len(sd.BENCH_MULTIPLES)} multiples...",
          file=sys.stderr)
    res = sweep(model, sae, peak, feats, sd.BENCH_MULTIPLES, a.prompt, max_new_tokens=a.tokens)
    labels = {f: store.feature(name, f).label for f in feats}
    print(f"store {a.store} ({store.manifest.get('tokens'):,} tokens), SAE {name}")
    print(f"prompt {a.prompt!r}, {a.tokens} greedy tokens; {len(feats)} features; "
          f"unsteered loss {res.base:.2f} nats/token")
    print(f"unsteered: {res.default!r}")
    within, changed, fluent = res.within(), res.changed(), res.fluent()
    loops = {m: sum(distinct_share(r.text) >= sd.MIN_DISTINCT for r in res.rows
                    if r.multiple == m) / len(feats) for m in sd.BENCH_MULTIPLES}
    print(f"\n{'x max':>6} {'median drift':>13} {'changed':>8} {'within':>7} {'no loop':>8} "
          f"{'fluent':>7}")
    for m in sd.BENCH_MULTIPLES:
        d = [r.drift for r in res.rows if r.multiple == m]
        print(f"{m:>6g} {statistics.median(d):>13.2f} {changed[m]:>8.0%} {within[m]:>7.0%} "
              f"{loops[m]:>8.0%} {fluent[m]:>7.0%}")
    pick = sd.choose_multiple(fluent)
    print(f"\nrule: largest multiple with more than {sd.MOST:.0%} of features fluent (drift "
          f"within {sd.DRIFT_MARGIN:g} nats of the unsteered loss, >= {sd.MIN_DISTINCT:.0%} of "
          f"words distinct) -> {pick}x (scope.steer.defaults.STRENGTH_X_MAX = "
          f"{sd.STRENGTH_X_MAX:g})")
    print(f"{time.time() - t:.0f} s for {len(res.rows)} texts")
    shown = feats if a.texts else feats[:3]
    for f in shown:
        print(f"\n#{f} {labels[f]} (max {float(peak[f]):.3g})")
        for r in res.rows:
            if r.feature == f and (a.texts or r.multiple in (pick or 1.0, 2.0, 4.0)):
                print(f"  {r.multiple:g}x drift {r.drift:.2f}: {r.text!r}")
    np.set_printoptions(precision=2)


if __name__ == "__main__":
    main()
