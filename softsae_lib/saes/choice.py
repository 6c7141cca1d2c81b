"""Mutual Choice and Feature Choice SAEs (Ayonrinde 2024, arXiv 2411.02124).

Both solve a token–feature allocation with a total budget of k·B matches per batch of B samples,
on the affinities r = ReLU(W_encᵀ(x − b_dec) + b_enc) ("Monotonic Importance Heuristic": a larger
affinity is a more important match):

* **Mutual Choice** (MC): only the global budget, S = top-(k·B) of the batch (the BatchTopK rule).
  Inference: BatchTopK's global threshold θ.
* **Feature Choice** (FC): feature j matches at most m_j tokens, its top-m_j in the batch, with
  Σ_j m_j = k·B. Capacities are uniform (m_j = kB/F, rounded by largest remainder) or Zipf-shaped.
  Tokens get a variable number of features. Inference [ours, docs/sae-variants.md §6]: per-feature
  thresholds θ_j = EMA of the smallest activation feature j kept per batch; f_j = r_j·1[r_j > θ_j].

Both replace AuxK by the aux-Zipf **variant** of :mod:`softsae_lib.saes.zipf` (their
:meth:`~MutualChoiceSAE.auxiliary_loss`; the paper's exact
``aux_zipf_loss`` formula is not publicly retrievable; see that module). Choices of ours:
* Zipf capacities rank features by an EMA of their mean affinity mean_b r_bj (not by their realised
  density, which under FC just mirrors the capacity it was given); before the first update all
  affinities are equal and ranks follow the feature index.
* Running densities (for the aux-Zipf targets) are EMAs of per-batch firing rates, β = 0.99.
* The budget follows the trainer's annealed k (ctx.k), like BatchTopK.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from softsae_lib.ops.hard_topk import batch_topk
from softsae_lib.saes.base import LossOutput, StepContext, TrainSchedule
from softsae_lib.saes.batch_topk import BatchTopKConfig, BatchTopKSAE
from softsae_lib.saes.zipf import allocate_integer, aux_zipf_variant_loss, water_fill, zipf_targets

CAPACITIES = ("zipf", "uniform")


@dataclass
class MutualChoiceConfig(BatchTopKConfig):
    aux_alpha: float = 1 / 32
    """Weight of the aux-Zipf variant loss (replaces the trainer's AuxK)."""
    k_aux: int | None = None
    """Features per sample in the auxiliary reconstruction; None means d_model // 2."""
    zipf_exponent: float = 1.0
    """Exponent s of the Zipf profile r^(−s) (targets and Zipf capacities)."""
    underuse_gamma: float = 0.1
    """A feature is underused when its density is below γ × its Zipf target."""
    density_beta: float = 0.99
    """EMA decay of the per-feature firing density."""
    encoder_init_scale: float = 1.0
    """Exactly tied init (BatchTopK's 0.1 is not measured for this architecture)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_alpha < 0 or self.zipf_exponent < 0 or self.underuse_gamma < 0:
            raise ValueError("aux_alpha, zipf_exponent and underuse_gamma must be ≥ 0")
        if not 0 <= self.density_beta < 1:
            raise ValueError(f"density_beta must be in [0, 1), got {self.density_beta}")


@dataclass
class FeatureChoiceConfig(MutualChoiceConfig):
    capacity: str = "zipf"
    """Per-feature token capacities: 'zipf' (rank^(−s) by affinity) or 'uniform' (kB/F each)."""
    affinity_beta: float = 0.99
    """EMA decay of the mean affinity that ranks features for Zipf capacities."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity not in CAPACITIES:
            raise ValueError(f"capacity must be one of {CAPACITIES}, got {self.capacity!r}")


def feature_choice(r: torch.Tensor, capacities: torch.Tensor) -> torch.Tensor:
    """Every feature keeps its top-m_j entries of its column; r: (B, F) ≥ 0, capacities: (F,) ≤ B.

    Returns codes (B, F); gradients reach the kept entries. Ties are broken by ``torch.topk``.
    """
    B, F = r.shape
    if capacities.shape != (F,) or int(capacities.min()) < 0 or int(capacities.max()) > B:
        raise ValueError(f"capacities must have shape ({F},) with values in [0, batch={B}]")
    m = int(capacities.max())
    if m == 0:
        return torch.zeros_like(r)
    vals, idx = r.topk(m, dim=0)  # (m, F): each column's best tokens
    keep = torch.arange(m, device=r.device).unsqueeze(1) < capacities.to(r.device).unsqueeze(0)
    return torch.zeros_like(r).scatter(0, idx, vals * keep)


class MutualChoiceSAE(BatchTopKSAE):
    """Global top-(k·B) selection (the BatchTopK rule) trained with the aux-Zipf variant loss."""

    arch = "mutual_choice"
    config_cls = MutualChoiceConfig
    uses_auxk = False  # the aux-Zipf variant replaces AuxK
    synced_buffers = ("threshold", "density")

    def _init_extra(self, gen: torch.Generator) -> None:
        super()._init_extra(gen)
        self.register_buffer("density", torch.zeros(self.dict_size))
        self.register_buffer("density_steps", torch.zeros((), dtype=torch.long))

    def select(self, r: torch.Tensor, k: float) -> torch.Tensor:
        """Training selection on affinities r: (B, F) with mean budget k per sample."""
        return batch_topk(r, k)

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        r = self.pre_activations(x_n).relu_()
        z = self.select(r, min(ctx.k, self.dict_size))
        recon = self.decode_normalized(z)
        l2 = self.recon_loss(x_n, recon)
        return LossOutput.from_active(l2, recon, r, z > 0, {"l2": l2.item()})

    def auxiliary_loss(self, out: LossOutput, x_n: torch.Tensor, ctx: StepContext,
                       dead: torch.Tensor | None,
                       train: TrainSchedule) -> tuple[torch.Tensor, dict[str, float]] | None:
        """``aux_alpha`` · the aux-Zipf variant on the underused features (from the second step)."""
        cfg = self.config
        if not (cfg.aux_alpha > 0 and int(self.density_steps) > 0):
            return None
        k_aux = cfg.k_aux if cfg.k_aux is not None else self.d_model // 2
        aux, n_under = aux_zipf_variant_loss(out.pre_acts, x_n - out.recon, self.density, self.W_dec,
                                             min(ctx.k, self.dict_size), k_aux, cfg.zipf_exponent,
                                             cfg.underuse_gamma)
        return cfg.aux_alpha * aux, {"aux_zipf": aux.item(), "underused_fraction": n_under / self.dict_size}

    @torch.no_grad()
    def update_density(self, active: torch.Tensor) -> None:
        """EMA of the per-feature firing rate of a (B, F) bool selection."""
        rate = active.float().mean(dim=0)
        beta = self.config.density_beta
        if int(self.density_steps) == 0:
            self.density.copy_(rate)
        else:
            self.density.mul_(beta).add_((1 - beta) * rate)
        self.density_steps.add_(1)

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        super().after_step(out, ctx)
        self.update_density(out.active)


class FeatureChoiceSAE(MutualChoiceSAE):
    """Per-feature capacities m_j (Σ m_j = k·B); per-feature inference thresholds θ_j."""

    arch = "feature_choice"
    config_cls = FeatureChoiceConfig
    # Data-parallel averaging of θ_j can mix a rank's "unset" (−1) with another's value during the
    # first threshold steps; the EMA then recovers.
    synced_buffers = ("threshold", "density", "affinity")

    def _init_extra(self, gen: torch.Generator) -> None:
        super()._init_extra(gen)
        # Per-feature θ_j replaces BatchTopK's scalar θ (same buffer name); < 0 means "not estimated".
        self.threshold = torch.full((self.dict_size,), -1.0)
        self.register_buffer("affinity", torch.zeros(self.dict_size))

    def capacities(self, batch_size: int, k: float) -> torch.Tensor:
        """Token capacities m_j: (F,) long for a batch of ``batch_size``; Σ m_j = ⌊k·batch_size⌋, m_j ≤ B."""
        cfg = self.config
        total = int(k * batch_size)
        if cfg.capacity == "uniform":
            alloc = water_fill(torch.ones(self.dict_size, dtype=torch.float64), total, batch_size)
        else:
            alloc = zipf_targets(self.affinity.cpu(), cfg.zipf_exponent, total, batch_size)
        return allocate_integer(alloc.cpu(), total).to(self.threshold.device)

    def select(self, r: torch.Tensor, k: float) -> torch.Tensor:
        return feature_choice(r, self.capacities(r.shape[0], k))

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        if bool((self.threshold < 0).all()):
            raise RuntimeError("FeatureChoiceSAE has no inference thresholds yet: train it past "
                               "threshold_start_step or call calibrate_threshold(batches)")
        r = self.pre_activations(x_n).relu_()
        # A feature that never kept a token has no θ_j and stays off at inference.
        theta = torch.where(self.threshold < 0, torch.full_like(self.threshold, float("inf")), self.threshold)
        return r * (r > theta)

    @staticmethod
    def _kept_minimum(r: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per feature: smallest kept activation (F,) and whether it kept anything (F,) bool."""
        kept = z > 0
        mins = torch.where(kept, r, torch.full_like(r, float("inf"))).min(dim=0).values
        return mins, kept.any(dim=0)

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        cfg = self.config
        self.update_density(out.active)
        mean_affinity = out.pre_acts.mean(dim=0)
        if int(self.density_steps) == 1:
            self.affinity.copy_(mean_affinity)
        else:
            self.affinity.mul_(cfg.affinity_beta).add_((1 - cfg.affinity_beta) * mean_affinity)
        start = cfg.threshold_start_step
        start = min(1000, ctx.total_steps // 2) if start is None else start
        if ctx.step < start:
            return
        mins, any_kept = self._kept_minimum(out.pre_acts, out.pre_acts * out.active)
        beta = cfg.threshold_beta
        fresh = any_kept & (self.threshold < 0)
        blend = any_kept & (self.threshold >= 0)
        self.threshold.copy_(torch.where(fresh, mins, self.threshold))
        self.threshold.copy_(torch.where(blend, beta * self.threshold + (1 - beta) * mins, self.threshold))

    @torch.no_grad()
    def calibrate_threshold(self, batches, k: float | None = None) -> float:
        """θ_j = mean over raw batches (B, d) of feature j's smallest kept activation (batches where
        it kept one); features that never keep a token get no θ. Returns the mean θ over features."""
        k = self.config.k if k is None else k
        total = torch.zeros(self.dict_size, dtype=torch.float64, device=self.threshold.device)
        count = torch.zeros(self.dict_size, dtype=torch.long, device=self.threshold.device)
        for x in batches:
            r = torch.relu(self.pre_activations(self.normalize(x)))
            mins, any_kept = self._kept_minimum(r, self.select(r, k))
            total += torch.where(any_kept, mins, torch.zeros_like(mins)).double()
            count += any_kept.long()
        if int(count.sum()) == 0:
            raise ValueError("calibrate_threshold: no batch had a positive activation")
        theta = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, -1.0))
        self.threshold.copy_(theta.to(self.threshold.dtype))
        return float(theta[count > 0].mean())
