"""SoftSAE (Stępień et al. 2026, arXiv 2605.06610): a per-input budget k̂(x) and LapSum soft top-k.

Forward (``docs/method.md`` §1.2), with x̃ = x_n − b_dec:

    r  = ReLU(W_encᵀx̃ + b_enc)                                  (B, F)
    k̂  = clamp(k_max · σ(w₂ᵀ ReLU(A x̃ + c) + b₂), 1, F)           (B,)  "Dynamic Sparsity MLP"
    soft (training): z = r ⊙ soft_topk(r, k̂, α)
    hard (inference, final training phase): z = per-row top-⌊k̂⌋ of r, k̂ under no_grad

Loss (docs/method.md §1.3): ‖x_n − x̂_n‖² + λ_k · softplus_β(mean_b k̂ − k(t)), β = 5, plus AuxK (trainer).

Choices, relative to the official code:
* k_max = 2k as in the LLM copy (the CLIP copy's k-annealing makes it 2d; we do not follow that).
* Inference floors k̂ (the official ``.long()``), in the hard training phase and at inference alike.
* The k-estimator's last layer and sigmoid run in float32 even under bf16 autocast, so k̂ is not
  quantised: the official LLM runs put k̂ on the bf16 grid (step 0.25 near k = 40, 4 near 640),
  which we regard as a bug. (Its wide hidden layer may still run in bf16.)
* Dead-latent tracking (and the logged L0) counts a latent as fired in the soft phase when it is
  in the hard top-⌊k̂⌋ of its row, i.e. when inference would select it. The official code counts
  any r·p > 0, which marks almost everything alive at large α; "p > ½" would mark everything
  dead at large α (then t lies above every r), switching AuxK on for the whole dictionary.
* The k-estimator reads the normalised, centred input x̃ in training and inference alike (the
  official SAEBench "Patched" class does the same; the unpatched class mutates its input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F_

from softsae_lib.collectives import global_mean
from softsae_lib.ops.hard_topk import per_row_topk
from softsae_lib.ops.relu_mlp_head import relu_mlp_head
from softsae_lib.ops.soft_topk import soft_topk_gate
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext, check_k


@dataclass
class SoftSAEConfig(SAEConfig):
    k: int = 32
    """Target mean budget K of the k-loss."""
    k_max: float | None = None
    """Upper end of k̂ before clamping to [1, F]; None means 2·k (official LLM code)."""
    alpha: float = 1e-4
    """Final LapSum scale α (the trainer may anneal from 1 down to it)."""
    k_loss_weight: float = 1.0
    """λ_k of the budget loss."""
    k_loss_beta: float = 5.0
    """β of the softplus budget loss (hard-coded 5 in the official code)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_k(self.k, self.dict_size)
        if self.k_max is not None and self.k_max < 1:
            raise ValueError(f"k_max must be ≥ 1, got {self.k_max}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")

    @property
    def effective_k_max(self) -> float:
        return float(2 * self.k if self.k_max is None else self.k_max)


class SoftSAE(SAE):
    arch = "soft"
    config_cls = SoftSAEConfig

    def _init_extra(self, gen: torch.Generator) -> None:
        F = self.dict_size
        # First layer cloned from the encoder, bias 0; second layer nn.Linear(F, 1)'s default init.
        self.k_est_W1 = torch.nn.Parameter(self.W_enc.detach().clone())
        self.k_est_b1 = torch.nn.Parameter(torch.zeros(F))
        bound = 1.0 / math.sqrt(F)
        self.k_est_w2 = torch.nn.Parameter((torch.rand(F, generator=gen) * 2 - 1) * bound)
        self.k_est_b2 = torch.nn.Parameter((torch.rand((), generator=gen) * 2 - 1) * bound)

    def k_estimator_parameters(self) -> list[torch.nn.Parameter]:
        return [self.k_est_W1, self.k_est_b1, self.k_est_w2, self.k_est_b2]

    def predict_k_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Continuous budget k̂: (B,) float32 in [1, F] for normalised x_n: (B, d)."""
        logit = relu_mlp_head(x_n, self.b_dec, self.k_est_W1, self.k_est_b1, self.k_est_w2, self.k_est_b2)
        with torch.autocast(x_n.device.type, enabled=False):
            k_hat = torch.sigmoid(logit) * self.config.effective_k_max
            return k_hat.clamp(1.0, float(self.dict_size))

    def predict_k(self, x: torch.Tensor) -> torch.Tensor:
        """k̂(x): (B,) for raw activations x: (B, d)."""
        self._check_input(x)
        return self.predict_k_normalized(self.normalize(x))

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        r = self.pre_activations(x_n).relu_()
        with torch.no_grad():
            k_hat = self.predict_k_normalized(x_n)
        return per_row_topk(r, k_hat)

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        cfg = self.config
        r = self.pre_activations(x_n).relu_()
        if ctx.hard:
            with torch.no_grad():  # frozen estimator: its grads stay None and Adam skips it
                k_hat = self.predict_k_normalized(x_n)
            z = per_row_topk(r, k_hat)
            active, fired, n_fired = z > 0, None, None
            k_loss = r.new_zeros(())
        else:
            k_hat = self.predict_k_normalized(x_n)
            gate = soft_topk_gate(r, k_hat.unsqueeze(1), ctx.alpha)  # r ⊙ p, fused backward
            z = gate.z
            # Fired = selected by the hard top-⌊k̂⌋ that inference would use (and positive); read
            # off the gate's sorted window, (B, K), instead of comparing all of r: (B, F).
            with torch.no_grad():
                rank = torch.arange(gate.top.shape[1], device=r.device)
                chosen = (rank < k_hat.detach().floor().unsqueeze(1)) & (r.gather(1, gate.top) > 0)
                fired = torch.zeros(self.dict_size, dtype=torch.bool, device=r.device)
                fired[gate.top[chosen]] = True
                active, n_fired = None, chosen.sum()
            # the batch mean spans all ranks under data-parallel training (exact multi-GPU gradient)
            k_loss = F_.softplus(global_mean(k_hat) - ctx.k, beta=cfg.k_loss_beta)
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        loss = l2 + cfg.k_loss_weight * k_loss
        terms = {"l2": l2.item(), "k_loss": k_loss.item(), "k_hat_mean": k_hat.mean().item(),
                 "k_hat_std": k_hat.std().item() if k_hat.numel() > 1 else 0.0}
        return LossOutput(loss, recon, r, active, terms, fired=fired, n_fired=n_fired)

