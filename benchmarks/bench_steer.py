"""Steered generation time as a ratio to plain generation (target <= 1.15x with one feature).

Loads the bundled Gemma 3 270M and the demo SAE (or a random JumpReLU SAE of the same shape at
the same hook when --random-sae is given), then times `scope.generate` greedily for the same
prompt with and without `scope.steering` on one feature, alternating the two so that machine
noise hits both alike, and prints the median of each and their ratio.

    python benchmarks/bench_steer.py [--tokens 32] [--repeats 5] [--mode add|clamp]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import scope


def random_sae_like(model, hook: str, d_sae: int = 4096):
    from scope.saes.sae import JumpReLUSAE, SAEConfig

    d = model.cfg.d_model
    W_dec = torch.randn(d_sae, d)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(d_in=d, d_sae=d_sae, hook_name=hook, model_name=model.cfg.model_name)
    return JumpReLUSAE(cfg, W_dec.T.clone(), W_dec, torch.zeros(d_sae), torch.zeros(d),
                       torch.full((d_sae,), 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mode", choices=["add", "clamp"], default="add")
    parser.add_argument("--random-sae", action="store_true", help="skip the bundled SAE")
    args = parser.parse_args()

    model = scope.load_model("bundled")
    sae = (random_sae_like(model, "blocks.9.hook_resid_post") if args.random_sae
           else scope.load_sae("bundled", model=model))
    prompt = "The history of the city begins in the twelfth century, when"
    kw = dict(max_new_tokens=args.tokens, temperature=0, stop_at_eos=False)
    scope.generate(model, prompt, **kw)  # warm-up
    plain, steered = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        scope.generate(model, prompt, **kw)
        plain.append(time.perf_counter() - t)
        with scope.steering(model, sae, {7: 4.0}, mode=args.mode):
            t = time.perf_counter()
            scope.generate(model, prompt, **kw)
            steered.append(time.perf_counter() - t)
    p, s = statistics.median(plain), statistics.median(steered)
    print(f"device: {next(model.parameters()).device}, threads: {torch.get_num_threads()}, "
          f"{args.tokens} new tokens, mode={args.mode}, d_sae={sae.cfg.d_sae}")
    print(f"plain generation   {p:8.3f} s  ({args.tokens / p:6.1f} tok/s)  = floor")
    print(f"steered generation {s:8.3f} s  ({args.tokens / s:6.1f} tok/s)")
    print(f"ratio steered / plain: {s / p:.3f}x  (target <= 1.15x)")


if __name__ == "__main__":
    main()
