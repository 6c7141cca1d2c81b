"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025, arXiv 2503.17547).

The dictionary is split into contiguous groups of sizes s_1…s_M (prefix widths m_j = Σ_{t≤j} s_t).
Activation is one BatchTopK over the whole dictionary (docs/sae-variants.md §5, Bussmann version); every
prefix must reconstruct x on its own:

    x̂⁽ʲ⁾ = Σ_{i<m_j} f_i d_i + b_dec,     L = Σ_{j=1}^{M} ‖x − x̂⁽ʲ⁾‖²   (paper; the trainer adds AuxK)

AuxK uses the residual of the full reconstruction x̂⁽ᴹ⁾. Inference uses BatchTopK's global threshold
θ (EMA of the smallest kept activation, or :meth:`calibrate_threshold`); ``encode_prefix`` keeps
only the first m_j latents, so any prefix is usable as a coarser SAE.

Choices where the sources differ (see docs/sae-variants.md §5):
* Weighting: ``prefix_loss="sum"`` is the paper's Σ_j (each term ‖·‖² summed over d, mean over the
  batch); ``"mean"`` divides by M (dictionary_learning's w_j = 1/M without its extra 1/G). The
  official repo also adds a b_dec-only term; we do not.
* Group sizes come from ``group_fractions`` (default: SAEBench/dictionary_learning
  [1/32, 1/16, 1/8, 1/4, 17/32]) unless ``group_sizes`` is given; the last group takes the rounding
  remainder. Latents are not re-sorted during training (Nabeshima's variant does; Bussmann's does not).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from softsae_lib.ops.hard_topk import batch_topk
from softsae_lib.saes.base import LossOutput, StepContext
from softsae_lib.saes.batch_topk import BatchTopKConfig, BatchTopKSAE

PREFIX_LOSSES = ("sum", "mean")


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    group_fractions: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)
    """Fractions of F in each nested group (used when ``group_sizes`` is None); must sum to 1."""
    group_sizes: tuple[int, ...] | None = None
    """Explicit group sizes s_1…s_M (sum F); overrides ``group_fractions``."""
    prefix_loss: str = "sum"
    """'sum': paper's Σ_j ‖x − x̂⁽ʲ⁾‖²; 'mean': the same divided by the number of groups M."""
    encoder_init_scale: float = 1.0
    """Exactly tied init (BatchTopK's 0.1 is not measured for this architecture)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.group_fractions = tuple(float(f) for f in self.group_fractions)
        if self.group_sizes is not None:
            self.group_sizes = tuple(int(s) for s in self.group_sizes)
        if self.prefix_loss not in PREFIX_LOSSES:
            raise ValueError(f"prefix_loss must be one of {PREFIX_LOSSES}, got {self.prefix_loss!r}")
        sizes = self.resolved_group_sizes()
        if min(sizes) < 1 or sum(sizes) != self.dict_size:
            raise ValueError(f"Matryoshka group sizes {list(sizes)} must be ≥ 1 and sum to "
                             f"dict_size={self.dict_size}")

    def resolved_group_sizes(self) -> tuple[int, ...]:
        """Group sizes s_1…s_M: explicit ``group_sizes`` or floor(f_j·F), the last taking the remainder."""
        if self.group_sizes is not None:
            return self.group_sizes
        fr = self.group_fractions
        if not fr or min(fr) <= 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
            raise ValueError(f"group_fractions must be positive and sum to 1, got {list(fr)}")
        head = [int(math.floor(f * self.dict_size)) for f in fr[:-1]]
        return (*head, self.dict_size - sum(head))


class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"
    config_cls = MatryoshkaConfig

    @property
    def prefix_widths(self) -> tuple[int, ...]:
        """m_1 < … < m_M = F: the widths of the nested dictionaries."""
        widths, total = [], 0
        for s in self.config.resolved_group_sizes():
            total += s
            widths.append(total)
        return tuple(widths)

    def encode_prefix(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Inference codes (B, F) of raw x: (B, d) using only the first m_level latents (level 1…M)."""
        widths = self.prefix_widths
        if not 1 <= level <= len(widths):
            raise ValueError(f"level must be in [1, {len(widths)}], got {level}")
        z = self.encode(x)
        z[:, widths[level - 1]:] = 0
        return z

    def prefix_reconstructions(self, z: torch.Tensor) -> list[torch.Tensor]:
        """[x̂⁽¹⁾, …, x̂⁽ᴹ⁾] in normalised space for codes z: (B, F); each is (B, d).

        Built cumulatively, so the cost is one full decode.
        """
        recons, start = [], 0
        current = self.b_dec.expand(z.shape[0], -1)
        for end in self.prefix_widths:
            current = current + z[:, start:end] @ self.W_dec[start:end]
            recons.append(current)
            start = end
        return recons

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        r = self.pre_activations(x_n).relu_()
        z = batch_topk(r, min(ctx.k, self.dict_size))
        recons = self.prefix_reconstructions(z)
        per_prefix = [self.recon_loss(x_n, rec) for rec in recons]
        total = torch.stack(per_prefix).sum()
        if self.config.prefix_loss == "mean":
            total = total / len(per_prefix)
        terms = {"l2": per_prefix[-1].item(), "threshold": float(self.threshold)}
        terms.update({f"l2_prefix{j + 1}": v.item() for j, v in enumerate(per_prefix[:-1])})
        return LossOutput.from_active(total, recons[-1], r, z > 0, terms)
