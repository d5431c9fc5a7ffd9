"""The training-time JumpReLU SAE and its straight-through estimators.

Follows Rajamanoharan et al. 2024 ("Jumping Ahead") and the Gemma Scope report. The forward
pass is exactly JumpReLU; the threshold gets gradients through pseudo-derivatives built on the
rectangle kernel `K(z) = 1{|z| < 1/2}` with bandwidth epsilon:

    d/dtheta JumpReLU(z; theta) = -(theta / eps) K((z - theta) / eps)
    d/dtheta H(z - theta)       = -(1 / eps)     K((z - theta) / eps)

The loss per token is `||x - x_hat||^2 + lambda * sum_i H(pre_i - theta_i)`. The model works in a
normalised scale (inputs multiplied by `scale` so that E||x||^2 = 1) and subtracts `b_dec` before
encoding; `to_inference` folds both into the released layout (docs/saes.md, "JumpReLU") so the saved SAE
reads raw activations. Never imported by inference code.

Shapes: `x [batch, d_in]`, `pre, f [batch, d_sae]`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import nn


def rectangle(z: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel `1{-1/2 < z < 1/2}` in z's dtype."""
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """`z * (z > theta)`; gradient to z where it fires, pseudo-derivative to theta."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_z = grad * (z > theta).to(z.dtype)
        grad_theta = -(theta / eps) * rectangle((z - theta) / eps) * grad
        return grad_z, grad_theta.sum(dim=0), None


class _StepFn(torch.autograd.Function):
    """Heaviside `H(z - theta)`; no gradient to z, pseudo-derivative to theta."""

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        grad_theta = -(1.0 / eps) * rectangle((z - theta) / eps) * grad
        return torch.zeros_like(z), grad_theta.sum(dim=0), None


def jumprelu(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """JumpReLU `z * H(z - theta)` with the straight-through threshold gradient.

    Args:
        z: pre-activations [batch, d_sae].
        theta: thresholds [d_sae].
        eps: kernel bandwidth.

    Returns:
        Feature activations [batch, d_sae].
    """
    return _JumpReLUFn.apply(z, theta, eps)


def step(z: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    """Heaviside `H(z - theta)` with the straight-through threshold gradient; [batch, d_sae]."""
    return _StepFn.apply(z, theta, eps)


def _csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
         size: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix (torch warns that CSR is beta on every construction; we know)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


def _crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers [n_rows + 1] of sorted row indices."""
    crow = torch.zeros(n_rows + 1, dtype=torch.long)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return crow


class TrainStepOutput(NamedTuple):
    """What one forward pass of the training SAE returns (all losses are means over the batch)."""

    x_hat: torch.Tensor
    """Reconstruction [batch, d_in] (normalised scale)."""
    pre: torch.Tensor
    """Pre-activations [batch, d_sae]."""
    fired: torch.Tensor
    """Boolean [batch, d_sae]: which features are nonzero."""
    loss: torch.Tensor
    """mse + l0_coefficient * l0_loss + dead_loss."""
    mse: torch.Tensor
    """Mean over the batch of ||x - x_hat||^2."""
    l0: torch.Tensor
    """Mean number of firing features per token (through the step STE, so it has a gradient)."""


class JumpReLUTrainingSAE(nn.Module):
    """JumpReLU SAE in the normalised training scale, with pre-encoder bias.

    `pre = (x - b_dec) @ W_enc + b_enc`, `f = JumpReLU(pre; threshold)`,
    `x_hat = f @ W_dec + b_dec`, where x has already been multiplied by the run's scale.
    Decoder rows are kept at unit norm by the trainer (see `project_decoder_grad` and
    `normalize_decoder`).
    """

    def __init__(self, d_in: int, d_sae: int, *, threshold_init: float = 1e-3,
                 bandwidth: float = 1e-3, generator: torch.Generator | None = None) -> None:
        """Initialise as in the Gemma Scope report: random unit decoder rows, W_enc = W_dec^T,
        zero biases, every threshold at `threshold_init`.

        Args:
            d_in: input width; d_sae: number of features.
            threshold_init: initial threshold; bandwidth: STE kernel width (normalised scale).
            generator: torch generator for the initialisation (determinism).
        """
        super().__init__()
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)  # [d_sae, d_in]
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())  # [d_in, d_sae]
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.threshold = nn.Parameter(torch.full((d_sae,), float(threshold_init)))
        self.bandwidth = float(bandwidth)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode_pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations [batch, d_sae] of normalised inputs x [batch, d_in]."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def forward(self, x: torch.Tensor, l0_coefficient: float = 0.0,
                dead_mask: torch.Tensor | None = None,
                dead_coefficient: float = 0.0) -> TrainStepOutput:
        """One training forward pass.

        Args:
            x: normalised activations [batch, d_in].
            l0_coefficient: lambda of the L0 penalty for this step (after warmup).
            dead_mask: bool [d_sae], features that count as dead (for the auxiliary loss).
            dead_coefficient: weight of `sum_dead relu(threshold - pre)`, which pulls the
                pre-activations of dead features up towards their thresholds (it moves only those
                features' encoder weights and biases).

        Returns:
            A `TrainStepOutput`.
        """
        pre = self.encode_pre(x)
        f = jumprelu(pre, self.threshold, self.bandwidth)
        x_hat = f @ self.W_dec + self.b_dec
        mse = (x_hat - x).pow(2).sum(dim=-1).mean()
        l0 = step(pre, self.threshold, self.bandwidth).sum(dim=-1).mean()
        loss = mse + l0_coefficient * l0
        if dead_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            # only the dead features' encoder moves: b_dec and the thresholds are left alone
            pre_dead = (x - self.b_dec.detach()) @ self.W_enc[:, dead_mask] + self.b_enc[dead_mask]
            gap = torch.relu(self.threshold.detach()[dead_mask] - pre_dead)
            loss = loss + dead_coefficient * gap.sum(dim=-1).mean()
        return TrainStepOutput(x_hat, pre, (f != 0).detach(), loss, mse.detach(), l0.detach())

    @torch.no_grad()
    def sparse_step(self, x: torch.Tensor, l0_coefficient: float = 0.0,
                    dead_mask: torch.Tensor | None = None,
                    dead_coefficient: float = 0.0) -> TrainStepOutput:
        """`forward` + `backward` with sparse products: the same loss and gradients, faster.

        Only the encoder product is dense. The decoder product, both weight gradients and the
        feature gradient touch just the entries that fire or lie inside the STE window
        (`|pre - theta| < eps/2`), so once L0 is small a step costs about a third of the dense
        one. Sets `.grad` of every parameter (replacing it); `forward` is the reference, and a
        test checks that the two agree.

        Args: as `forward`.

        Returns:
            A `TrainStepOutput` (its `loss` carries no graph).
        """
        n, d_sae = x.shape[0], self.d_sae
        eps, theta = self.bandwidth, self.threshold
        xc = x - self.b_dec  # [batch, d_in]
        pre = torch.addmm(self.b_enc, xc, self.W_enc)  # [batch, d_sae]
        mask = pre > theta
        z = (pre - theta) / eps
        window = (z > -0.5) & (z < 0.5)
        rows, cols = (mask | window).nonzero(as_tuple=True)  # row-major order
        fires, in_window = mask[rows, cols], window[rows, cols]
        f_vals = pre[rows, cols] * fires
        crow = _crow(rows, n)
        f = _csr(crow, cols, f_vals, (n, d_sae))
        x_hat = (f @ self.W_dec) + self.b_dec  # [batch, d_in]
        resid = x_hat - x
        mse = resid.pow(2).sum(dim=-1).mean()
        l0 = mask.sum(dim=-1).to(x.dtype).mean()
        loss = mse + l0_coefficient * l0
        g = resid * (2.0 / n)  # d loss / d x_hat

        pattern = _csr(crow, cols, torch.zeros_like(f_vals), (n, d_sae))
        df = torch.sparse.sampled_addmm(pattern, g, self.W_dec.T, beta=0.0).values()
        dpre = df * fires
        wcols = cols[in_window]
        dtheta = torch.zeros(d_sae, dtype=x.dtype).index_add_(
            0, wcols, -(theta[wcols] / eps) * df[in_window] - l0_coefficient / (eps * n))
        order = torch.argsort(cols * n + rows)  # column-major: the transposed pattern
        crow_t, rows_t = _crow(cols[order], d_sae), rows[order]
        f_t = _csr(crow_t, rows_t, f_vals[order], (d_sae, n))
        dpre_t = _csr(crow_t, rows_t, dpre[order], (d_sae, n))
        grad_W_dec = f_t @ g  # [d_sae, d_in]
        grad_W_enc = (dpre_t @ xc).T  # [d_in, d_sae]
        grad_b_enc = torch.zeros(d_sae, dtype=x.dtype).index_add_(0, cols, dpre)
        grad_b_dec = g.sum(dim=0) - self.W_enc @ grad_b_enc
        if dead_coefficient > 0 and dead_mask is not None and bool(dead_mask.any()):
            dead = dead_mask.nonzero(as_tuple=True)[0]
            gap = theta[dead] - pre[:, dead]  # [batch, n_dead]
            loss = loss + dead_coefficient * gap.clamp_min(0).sum(dim=-1).mean()
            dgap = (gap > 0).to(x.dtype) * (-dead_coefficient / n)
            grad_W_enc[:, dead] += xc.T @ dgap
            grad_b_enc[dead] += dgap.sum(dim=0)
        for param, grad in ((self.W_enc, grad_W_enc.contiguous()), (self.W_dec, grad_W_dec),
                            (self.b_enc, grad_b_enc), (self.b_dec, grad_b_dec),
                            (self.threshold, dtheta)):
            param.grad = grad
        return TrainStepOutput(x_hat, pre, mask, loss, mse, l0)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove from W_dec's gradient the part parallel to each (unit) row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad -= parallel * self.W_dec

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm (after each optimiser step)."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def clamp_threshold(self, minimum: float = 1e-6) -> None:
        """Keep thresholds positive so that a feature never outputs a negative value."""
        self.threshold.clamp_(min=minimum)

    @torch.no_grad()
    def init_b_dec(self, mean: torch.Tensor) -> None:
        """Start the decoder bias at the data mean [d_in] (normalised scale)."""
        self.b_dec.copy_(mean)

    @torch.no_grad()
    def folded_tensors(self, scale: float) -> dict[str, torch.Tensor]:
        """Weights that read raw activations, in the released layout (docs/saes.md, "JumpReLU").

        With raw input r and normalised input x = scale * r, the training SAE computes
        `pre = (x - b_dec) @ W_enc + b_enc`. Dividing pre, threshold and features by `scale`
        keeps every firing decision and gives, with W_dec untouched (unit rows):
        `pre_raw = r @ W_enc + (b_enc - b_dec @ W_enc) / scale`, `theta_raw = theta / scale`,
        `r_hat = f_raw @ W_dec + b_dec / scale` (= x_hat / scale).

        Args:
            scale: the factor the run multiplied raw activations by.

        Returns:
            float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, threshold [d_sae], b_dec [d_in].
        """
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        W_enc = self.W_enc.detach().float()
        b_enc = (self.b_enc.detach().float() - self.b_dec.detach().float() @ W_enc) / scale
        return {
            "W_enc": W_enc.clone(),
            "W_dec": self.W_dec.detach().float().clone(),
            "b_enc": b_enc,
            "b_dec": self.b_dec.detach().float() / scale,
            "threshold": self.threshold.detach().float() / scale,
        }
