"""`scope train`: train a JumpReLU SAE; its flags are the fields of `scope.train.config`.

The four sections of a training config (`DataConfig`, `OptimConfig`, `RunConfig`,
`TranscoderConfig`) are typed
dataclasses with a docstring per field, so they are this command's dataclasses as they stand:
`--d-sae 4096` or `d_sae: 4096` in the YAML file, each range checked by the section's own
`__post_init__`.
"""

from __future__ import annotations

from scope.cli.common import command, say
from scope.train.config import DataConfig, OptimConfig, RunConfig, TranscoderConfig


@command("train", DataConfig, OptimConfig, RunConfig, TranscoderConfig,
         help="Train a JumpReLU SAE (Gemma Scope recipe) on a model's activations: capture the "
         "corpus's train split into a cache, fit, evaluate on held-out text, save a native SAE. "
         "Resumes from its checkpoint when rerun. Flags (and YAML keys) mirror scope.train's "
         "config.",
         example="scope train --config configs/train/demo.yaml   # the shipped demo SAE\n"
         "  scope train --config configs/train/transcoders.yaml   # the bundled transcoders")
def run_train(data: DataConfig, optim: OptimConfig, run: RunConfig,
              transcoder: TranscoderConfig) -> int:
    from scope.train.config import TrainConfig
    from scope.train.trainer import train

    result = train(TrainConfig(data, optim, run, transcoder))
    held = result.report["heldout"]
    say(f"saved {result.out}")
    for layer, rec in result.report.get("layers", {}).items():  # a transcoder run: one per layer
        score = rec.get("ce_loss_score")
        say(f"layer {layer:>3}  FVU {rec['fvu']:.3f}  L0 {rec['l0']:.1f}"
            + ("" if score is None else f"  CE loss score {score:.3f}"))
    for key in ("l0", "fvu", "delta_lm_loss", "dead_fraction", "n_tokens"):
        if key in held:
            say(f"{key:>14}  {held[key]:.6g}")
    return 0
