"""TopK SAE (Gao et al. 2024, arXiv 2406.04093) with AuxK, as in dictionary_learning's trainer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softsae_lib.ops.hard_topk import per_row_topk, per_row_topk_with_firing
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, check_k


@dataclass
class TopKConfig(SAEConfig):
    k: int = 32
    """Active latents per sample at inference (the training k may be annealed from d to k)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.dict_size)


class TopKSAE(SAE):
    """z = TopK_k(ReLU(W_encᵀ(x − b_dec) + b_enc)); ReLU first, then top-k (dictionary_learning order)."""

    arch = "topk"
    config_cls = TopKConfig

    def encode_normalized(self, x_n: torch.Tensor, k: float | None = None) -> torch.Tensor:
        r = self.pre_activations(x_n).relu_()
        return per_row_topk(r, self.config.k if k is None else int(k))

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        r = self.pre_activations(x_n).relu_()
        z, fired, n_fired = per_row_topk_with_firing(r, int(min(ctx.k, self.dict_size)))
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        return LossOutput(l2, recon, r, fired, n_fired, {"l2": l2.item()})
