"""ReLU SAE with decoder-norm-weighted L1 (Anthropic "April 2024 update"; docs/sae-variants.md §1b).

f = ReLU(W_encᵀx + b_enc) (no pre-encoder bias), x̂ = f W_dec + b_dec,
L = E‖x − x̂‖² + λ Σ_i f_i‖d_i‖. Decoder norms are free (initialised at 0.1) and there is no
AuxK; :meth:`ReLUSAE.fold_decoder_norms` rescales to unit atoms without changing x̂.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext


@dataclass
class ReLUConfig(SAEConfig):
    l1_coeff: float = 5.0
    """λ of the decoder-norm-weighted L1 penalty (warmed up by the trainer)."""


class ReLUSAE(SAE):
    arch = "relu"
    config_cls = ReLUConfig
    pre_encoder_bias = False
    constrain_decoder = False
    uses_auxk = False

    def _init_decoder_norm(self) -> float:
        return 0.1

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x_n).relu_()

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        f = self.pre_activations(x_n).relu_()
        recon = self.decode_normalized(f)
        l2 = self.recon_loss(x_n, recon)
        l1 = (f * self.W_dec.norm(dim=1)).sum(dim=-1).mean()
        loss = l2 + self.config.l1_coeff * ctx.sparsity_scale * l1
        return LossOutput.from_active(loss, recon, f, f > 0, {"l2": l2.item(), "l1": l1.item()})

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """W_enc[:, i], b_enc[i] ← ·‖d_i‖ and d_i ← d_i/‖d_i‖ (SAELens fold_W_dec_norm)."""
        norms = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_enc.mul_(norms)
        self.b_enc.mul_(norms)
        self.W_dec.div_(norms.unsqueeze(1))
