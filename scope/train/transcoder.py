"""The training-time JumpReLU transcoder (optionally with a linear skip), Gemma Scope 2 style.

A transcoder reads one site and predicts another: for Gemma Scope 2, the MLP's input
(`blocks.L.ln2.hook_normalized_with_gain`) -> the MLP's output after its post-norm
(`blocks.L.hook_mlp_out`). In the normalised training scale (inputs times `scale_in`, targets
times `scale_out`, each with E||.||^2 = 1):

    pre = x @ W_enc + b_enc,   f = JumpReLU(pre; threshold),
    y_hat = f @ W_dec + b_dec (+ x @ W_skip for a skip transcoder)

with the same straight-through estimators and L0 penalty as the SAE (`scope.train.jumprelu`).
`folded_tensors` rewrites the weights to read raw activations and predict raw targets, in the
layout `scope.saes.sae.JumpReLUSAE` loads (`affine_skip` = W_skip). Never imported by inference code.

Shapes: `x [batch, d_in]`, `y [batch, d_out]`, `pre, f [batch, d_sae]`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from scope.train.jumprelu import JumpReLUTrainingSAE, TrainStepOutput, jumprelu, step


class JumpReLUTrainingTranscoder(JumpReLUTrainingSAE):
    """JumpReLU transcoder in the normalised scale; decoder rows kept at unit norm by the trainer.

    Reuses the SAE's decoder-norm and threshold maintenance; there is no pre-encoder bias (the
    input and output live at different sites) and no sparse-product step (dense autograd only).
    """

    def __init__(self, d_in: int, d_sae: int, d_out: int | None = None, *, skip: bool = False,
                 threshold_init: float = 1e-3, bandwidth: float = 1e-3,
                 generator: torch.Generator | None = None) -> None:
        """Initialise: random unit decoder rows, encoder columns along the same directions
        (W_enc = W_dec^T when d_in = d_out), zero biases, zero skip, every threshold at
        `threshold_init`.

        Args:
            d_in: input width; d_sae: number of features; d_out: output width (default d_in).
            skip: learn a linear skip `x @ W_skip` [d_in, d_out] beside the features.
            threshold_init, bandwidth: as for the SAE (normalised scale).
            generator: torch generator for the initialisation (determinism).
        """
        d_out = d_in if d_out is None else d_out
        nn.Module.__init__(self)
        W_dec = torch.randn(d_sae, d_out, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if d_out == d_in:
            W_enc = W_dec.T.clone().contiguous()
        else:
            W_enc = torch.randn(d_in, d_sae, generator=generator)
            W_enc /= W_enc.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_out]
        self.W_enc = nn.Parameter(W_enc)  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        self.threshold = nn.Parameter(torch.full((d_sae,), float(threshold_init)))
        self.W_skip = nn.Parameter(torch.zeros(d_in, d_out)) if skip else None
        self.bandwidth = float(bandwidth)

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [batch, d_sae] of normalised inputs x [batch, d_in]."""
        return x @ self.W_enc + self.b_enc

    def forward(self, x: torch.Tensor, l0_coefficient: float = 0.0,
                dead_mask: torch.Tensor | None = None, dead_coefficient: float = 0.0, *,
                target: torch.Tensor) -> TrainStepOutput:
        """One training forward pass.

        Args:
            x: normalised inputs [batch, d_in].
            l0_coefficient: lambda of the L0 penalty for this step.
            dead_mask: bool [d_sae], features that count as dead (auxiliary loss).
            dead_coefficient: weight of `sum_dead relu(threshold - pre)`.
            target: normalised targets [batch, d_out].

        Returns:
            A `TrainStepOutput` (`x_hat` is the prediction of the target).
        """
        pre = self.encode_pre(x)
        f = jumprelu(pre, self.threshold, self.bandwidth)
        y_hat = f @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip
        mse = (y_hat - target).pow(2).sum(dim=-1).mean()
        l0 = step(pre, self.threshold, self.bandwidth).sum(dim=-1).mean()
        loss = mse + l0_coefficient * l0
        if dead_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            pre_dead = x @ self.W_enc[:, dead_mask] + self.b_enc[dead_mask]
            gap = torch.relu(self.threshold.detach()[dead_mask] - pre_dead)
            loss = loss + dead_coefficient * gap.sum(dim=-1).mean()
        return TrainStepOutput(y_hat, pre, (f != 0).detach(), loss, mse.detach(), l0.detach())

    def sparse_step(self, *args, **kwargs):  # pragma: no cover - guarded by the Fitter
        raise NotImplementedError("transcoders train with the dense autograd step")

    @torch.no_grad()
    def folded_tensors(self, scale: float, scale_out: float | None = None
                       ) -> dict[str, torch.Tensor]:
        """Weights that read raw inputs r and predict raw targets, as `JumpReLUSAE` loads them.

        With x = s_in r and y = s_out t: dividing pre, threshold and features by s_out keeps
        every firing decision and W_dec's unit rows, and gives
        `pre_raw = r @ (W_enc s_in / s_out) + b_enc / s_out`, `theta_raw = theta / s_out`,
        `t_hat = f_raw @ W_dec + b_dec / s_out + r @ (W_skip s_in / s_out)` (= y_hat / s_out).

        Args:
            scale: s_in; scale_out: s_out (default s_in).

        Returns:
            float32 W_enc, W_dec, b_enc, b_dec, threshold, and affine_skip [d_in, d_out] when
            the transcoder has a skip.
        """
        s_in = float(scale)
        s_out = s_in if scale_out is None else float(scale_out)
        for value in (s_in, s_out):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"scales must be positive finite numbers, got {value!r}")
        out = {
            "W_enc": self.W_enc.detach().float() * (s_in / s_out),
            "W_dec": self.W_dec.detach().float().clone(),
            "b_enc": self.b_enc.detach().float() / s_out,
            "b_dec": self.b_dec.detach().float() / s_out,
            "threshold": self.threshold.detach().float() / s_out,
        }
        if self.W_skip is not None:
            out["affine_skip"] = self.W_skip.detach().float() * (s_in / s_out)
        return out
