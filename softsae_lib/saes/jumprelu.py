"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435) trained with an L0 penalty.

f_i = z_i·H(z_i − θ_i) with a learnable per-latent threshold θ = exp(log θ). The step function
gets straight-through pseudo-derivatives with a rectangle kernel K(u) = 1[|u| < ½] of bandwidth
ε (paper Eq. 11): ðf/ðθ = −(θ/ε)K((z−θ)/ε), ðH/ðθ = −(1/ε)K((z−θ)/ε), ðH/ðz = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = g * (z > theta)
        grad_theta = (-(theta / eps) * _rectangle((z - theta) / eps) * g).sum(dim=0)
        return grad_z, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: torch.Tensor, theta: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((z - theta) / eps) * g).sum(dim=0)
        return torch.zeros_like(z), grad_theta, None


@dataclass
class JumpReLUConfig(SAEConfig):
    sparsity_coeff: float = 1e-3
    """λ of the L0 penalty (warmed up by the trainer's sparsity_warmup_steps); inputs have E‖x‖² = 1."""
    target_l0: float | None = None
    """If set, use dictionary_learning's controller λ(L0/target − 1)² instead of the paper's λ·L0."""
    bandwidth: float = 1e-3
    """Rectangle-kernel width ε of the straight-through estimator."""
    threshold_init: float = 1e-3
    """Initial θ for every latent."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bandwidth <= 0 or self.threshold_init <= 0:
            raise ValueError("bandwidth and threshold_init must be > 0")


class JumpReLUSAE(SAE):
    """No pre-encoder bias (GDM formulation); no AuxK; unit-norm decoder."""

    arch = "jumprelu"
    config_cls = JumpReLUConfig
    pre_encoder_bias = False
    uses_auxk = False

    def _init_extra(self, gen: torch.Generator) -> None:
        self.log_threshold = torch.nn.Parameter(
            torch.full((self.dict_size,), math.log(self.config.threshold_init)))

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        z = self.pre_activations(x_n)
        return z * (z > self.log_threshold.exp())

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        z = self.pre_activations(x_n)
        theta = self.log_threshold.exp()
        f = _JumpReLU.apply(z, theta, cfg.bandwidth)
        recon = self.decode_normalized(f)
        l2 = self.recon_loss(x_n, recon)
        l0 = _Step.apply(z, theta, cfg.bandwidth).sum(dim=-1).mean()
        penalty = l0 if cfg.target_l0 is None else (l0 / cfg.target_l0 - 1).pow(2)
        loss = l2 + cfg.sparsity_coeff * ctx.sparsity_scale * penalty
        return LossOutput.from_active(loss, recon, torch.relu(z), f != 0,
                                      {"l2": l2.item(), "l0_penalty": penalty.item()})
