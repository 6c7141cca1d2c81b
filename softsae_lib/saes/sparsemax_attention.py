"""Sparsemax cross-attention SAE (Wang, Zhang, Su, Huang 2026, "Improving Sparse Autoencoder with
Dynamic Attention", arXiv 2604.14925; official code qyj-bkjx/Sparsemax-SAE, docs/sae-variants.md §7).

The input is a query against a learned concept dictionary C ∈ ℝ^{F×d} with key and value
projections W_K, W_V ∈ ℝ^{d×d}:

    x̃ = x/‖x‖ (N4)      s = (C W_K) x̃ ∈ ℝ^F  (no 1/√d)      s_i ← 0 where u_i > 0.1 (dense mask)
    𝒮 = sparsemax support of s      a_i = s_i·1[i ∈ 𝒮]      x̂ = ‖x‖ · Σ_{i∈𝒮} a_i (C W_V)_i
    L = 10 · mean_{b,dim}( (x̂ − x)² / ‖x‖ )                (no sparsity penalty, no AuxK)

The support size |𝒮(x)| is the adaptive per-input sparsity; :meth:`sparsity` counts it over the
unmasked latents (a masked latent has score 0 and joins 𝒮 only when τ < 0, contributing nothing).
The support mask is constant for the gradient (the code multiplies raw scores by it). u_i is the
cumulative running mean, over all training batches, of latent i's firing rate (a_i > 0); unlike
the official code it is a registered buffer, so it is saved with the model.

Equivalent SAE view (used by the shared evaluation code): codes z = ‖x‖·a are linear in the
decoder, x̂ = z W_dec with W_dec = C W_V (F, d) and W_enc = (C W_K)ᵀ (d, F), no biases. The base
class's W_enc / b_enc / W_dec / b_dec parameters are not created; ``W_enc`` and ``W_dec`` are read-only
views computed from C, W_K, W_V, and ``b_dec`` is a zero vector.

Choices of ours:
* Inputs first get the library's dataset normalisation; x/‖x‖ makes a global scale irrelevant.
* ``code="probs"`` (not in the paper) uses the sparsemax probabilities p instead of the raw scores,
  with gradients through sparsemax's Jacobian.
* ``target_support`` (not in the paper; off by default) selects the support of sparsemax(β·s)
  instead of sparsemax(s), with β ← β·exp(rate·(mean|𝒮| − target)/target) after each step, so the
  model can be compared at a prescribed mean support size (the support shrinks as β grows). The
  codes keep the raw scores a = s on the support: scaling the codes by β as well made the decoder
  chase a moving scale and cost FVU in our runs. β is a buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from softsae_lib.ops.sparsemax import sparsemax, sparsemax_threshold
from softsae_lib.saes.base import SAE, LossOutput, SAEConfig, StepContext

CODES = ("scores", "probs")


@dataclass
class SparsemaxAttentionConfig(SAEConfig):
    dense_threshold: float = 0.1
    """Latents whose cumulative firing rate u_i exceeds this get score 0 (official: 0.1)."""
    loss_scale: float = 10.0
    """Multiplier of the norm-weighted MSE (official: 10)."""
    code: str = "scores"
    """'scores': a = s on the support (official); 'probs': a = sparsemax(s) [ours]."""
    target_support: float | None = None
    """If set, adapt the score scale β so the mean support size approaches this value [ours]."""
    support_control_rate: float = 0.05
    """Step size of the multiplicative β controller."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.code not in CODES:
            raise ValueError(f"code must be one of {CODES}, got {self.code!r}")
        if self.target_support is not None and not 1 <= self.target_support <= self.dict_size:
            raise ValueError(f"target_support must be in [1, dict_size={self.dict_size}], "
                             f"got {self.target_support}")
        if self.loss_scale <= 0 or self.support_control_rate < 0:
            raise ValueError("loss_scale must be > 0 and support_control_rate ≥ 0")


def _kaiming_uniform(rows: int, cols: int, fan_in: int, gen: torch.Generator) -> torch.Tensor:
    """torch.nn.init.kaiming_uniform_ with its defaults (a = 0): U(±√(6/fan_in)), from ``gen``."""
    bound = math.sqrt(6.0 / fan_in)
    return (torch.rand(rows, cols, generator=gen) * 2 - 1) * bound


class SparsemaxAttentionSAE(SAE):
    arch = "sparsemax_attention"
    config_cls = SparsemaxAttentionConfig
    constrain_decoder = False
    uses_auxk = False
    synced_buffers = ("dense_rate", "score_scale")

    def _init_dictionary(self, gen: torch.Generator) -> None:
        d, F = self.config.d_model, self.config.dict_size
        # The (F, d) draw of the linear SAEs' decoder init, discarded: a seed gives the same model as
        # in earlier versions of this class, whose parameters were drawn after that one.
        torch.rand(F, d, generator=gen)
        # Official init: kaiming-uniform on Cᵀ (fan_in F) and on W_K, W_V (fan_in d).
        self.concepts = nn.Parameter(_kaiming_uniform(d, F, F, gen).t().contiguous())
        self.W_K = nn.Parameter(_kaiming_uniform(d, d, d, gen))
        self.W_V = nn.Parameter(_kaiming_uniform(d, d, d, gen))

    def _init_extra(self, gen: torch.Generator) -> None:
        F = self.dict_size
        self.register_buffer("dense_rate", torch.zeros(F))
        self.register_buffer("dense_batches", torch.zeros((), dtype=torch.long))
        self.register_buffer("score_scale", torch.ones(()))

    # Read-only views of the equivalent linear SAE, for the shared evaluation code.
    @property
    def W_enc(self) -> torch.Tensor:
        """(d, F) = (C W_K)ᵀ."""
        return (self.concepts @ self.W_K).t()

    @property
    def W_dec(self) -> torch.Tensor:
        """(F, d) = C W_V."""
        return self.concepts @ self.W_V

    @property
    def b_dec(self) -> torch.Tensor:
        """(d,) zeros: this architecture has no decoder bias."""
        return self.concepts.new_zeros(self.d_model)

    @property
    def dense_mask(self) -> torch.Tensor:
        """(F,) bool: latents excluded from the attention because they fire too often."""
        return self.dense_rate > self.config.dense_threshold

    def init_b_dec(self, x_n: torch.Tensor) -> None:
        """No decoder bias in this architecture; only mark the model as initialised."""
        self.b_dec_initialized.fill_(True)

    def scores(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked attention scores s: (B, F) and input norms ‖x_n‖: (B, 1) for x_n: (B, d)."""
        norm = x_n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        keys = self.concepts @ self.W_K  # (F, d)
        s = (x_n / norm) @ keys.t()
        return s.masked_fill(self.dense_mask, 0.0), norm

    def support(self, s: torch.Tensor) -> torch.Tensor:
        """(B, F) bool support of sparsemax(β·s) for masked scores s: (B, F) (β = 1 unless controlled)."""
        sel = s.detach() * self.score_scale
        return sel > sparsemax_threshold(sel)[0]

    def _codes(self, x_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes z = ‖x‖·a: (B, F), support mask (B, F) and scores (B, F)."""
        s, norm = self.scores(x_n)
        support = self.support(s)
        a = sparsemax(s * self.score_scale) if self.config.code == "probs" else s * support
        return norm * a, support, s

    def pre_activations(self, x_n: torch.Tensor) -> torch.Tensor:
        """The masked attention scores s: (B, F) (this architecture's pre-activations)."""
        return self.scores(x_n)[0]

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        return self._codes(x_n)[0]

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        z, support, s = self._codes(x_n)
        recon = self.decode_normalized(z)
        norm = x_n.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        loss = self.config.loss_scale * ((recon - x_n).pow(2) / norm).mean()
        l2 = self.recon_loss(x_n, recon)
        used = (support & ~self.dense_mask).sum(dim=-1).float()
        terms = {"l2": l2.item(), "support_mean": used.mean().item(),
                 "dense_latents": int(self.dense_mask.sum()), "score_scale": float(self.score_scale)}
        return LossOutput.from_active(loss, recon, torch.relu(s.detach()), support & (z != 0), terms)

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        # Firing = positive code (the official idf statistic), cumulative mean over all batches.
        rate = (out.active & (out.pre_acts > 0)).float().mean(dim=0)
        n = int(self.dense_batches)
        self.dense_rate.mul_(n / (n + 1)).add_(rate / (n + 1))
        self.dense_batches.add_(1)
        target = self.config.target_support
        if target is not None:
            error = (out.terms["support_mean"] - target) / target
            step = max(-1.0, min(1.0, self.config.support_control_rate * error))
            self.score_scale.mul_(math.exp(step))

    @torch.no_grad()
    def sparsity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample support size over the unmasked latents, |𝒮(x) \\ dense|: (B,) float.

        Dense-masked latents sit at score 0 and join 𝒮 whenever τ < 0 without contributing to x̂,
        so they are not counted; what remains is the number of nonzero codes (up to exact zeros).
        """
        self._check_input(x)
        s, _ = self.scores(self.normalize(x))
        return (self.support(s) & ~self.dense_mask).sum(dim=-1).float()
