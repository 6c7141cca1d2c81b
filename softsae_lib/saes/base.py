"""Shared base class of every sparse autoencoder in the library.

Conventions (``docs/sae-variants.md`` §0):

* Parameters ``W_enc: (d, F)``, ``b_enc: (F,)``, ``W_dec: (F, d)`` (row i is atom d_i) and
  ``b_dec: (d,)``; ``x̂ = z @ W_dec + b_dec``.
* Dataset normalisation lives in the model as buffers (``norm_shift: (d,)``, ``norm_scale``), so
  ``encode``/``forward`` take raw activations and ``forward`` returns raw reconstructions. The
  training loss is computed in normalised space, as in the reference trainers.
* Unit-norm decoder rows, kept by removing the gradient component parallel to each atom before
  the optimiser step and renormalising after it (architectures may opt out).
* Tied initialisation ``W_enc = W_decᵀ``, ``b_enc = 0``; ``b_dec`` is set to the geometric
  median of the first normalised batch by the trainer.
* Initialisation is drawn from a generator seeded by ``config.seed``, so a config fully
  determines the initial weights whatever the global RNG state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from softsae_lib.ops.geometric_median import geometric_median

NORMALIZATIONS = ("scale", "scale_shift", "none")


@dataclass
class SAEConfig:
    """Fields shared by every architecture."""

    d_model: int
    """Width d of the activations the SAE reads."""
    dict_size: int
    """Number of latents F."""
    normalization: str = "scale"
    """'scale': x/c with E‖x‖² = 1 (Gemma Scope N1); 'scale_shift': (x − mean)/c; 'none'."""
    seed: int = 0
    """Seed of the parameter initialisation."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.dict_size < 1:
            raise ValueError(f"d_model and dict_size must be ≥ 1, got {self.d_model}, {self.dict_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")


def check_k(k: int, dict_size: int) -> None:
    """Top-k-style configs: the budget must lie in [1, dict_size]."""
    if not 1 <= k <= dict_size:
        raise ValueError(f"k must be in [1, dict_size={dict_size}], got {k}")


@dataclass
class StepContext:
    """What the trainer tells a model about the current optimisation step."""

    step: int
    """Index of the step being taken (0-based)."""
    total_steps: int
    """Number of steps in the whole run."""
    k: float
    """Current (annealed) sparsity target for top-k-style models."""
    alpha: float
    """Current LapSum scale (SoftSAE)."""
    hard: bool
    """True in the final hard phase (SoftSAE: hard top-⌊k̂⌋, frozen k-estimator)."""
    sparsity_scale: float = 1.0
    """Warm-up factor in [0, 1] for penalty coefficients (L1, L0)."""


@dataclass
class LossOutput:
    """Result of :meth:`SAE.loss` on a normalised batch x_n: (B, d)."""

    loss: torch.Tensor
    """Scalar total loss of the architecture (AuxK is added by the trainer)."""
    recon: torch.Tensor
    """(B, d) reconstruction in normalised space."""
    pre_acts: torch.Tensor
    """(B, F) non-negative pre-selection activations (used by AuxK for dead latents)."""
    active: torch.Tensor | None
    """(B, F) bool: which latents count as having fired (dead-latent tracking and the logged L0);
    None when the architecture gives the two reductions below instead."""
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    """Named loss components and diagnostics for the training history."""
    fired: torch.Tensor | None = None
    """(F,) bool: latents that fired anywhere in the batch; default ``active.any(0)``."""
    n_fired: torch.Tensor | None = None
    """Scalar: number of (sample, latent) firings in the batch; default ``count_nonzero(active)``.
    Giving ``fired`` and ``n_fired`` from a compact selection saves two passes over (B, F)."""

    def fired_latents(self) -> torch.Tensor:
        """(F,) bool: which latents fired in this batch."""
        return self.active.any(dim=0) if self.fired is None else self.fired

    def firing_count(self) -> torch.Tensor:
        """Scalar tensor: Σ_b L0_b over the batch (count_nonzero avoids an int64 (B, F) cast)."""
        return torch.count_nonzero(self.active) if self.n_fired is None else self.n_fired


class SAE(nn.Module):
    """Base class: encode / decode / forward in raw activation space, shared constraints."""

    arch: ClassVar[str] = ""
    config_cls: ClassVar[type[SAEConfig]] = SAEConfig
    pre_encoder_bias: ClassVar[bool] = True
    """Subtract b_dec before encoding (TopK family, SoftSAE); GDM JumpReLU and April-update ReLU do not."""
    constrain_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm (parallel-gradient removal + renormalisation)."""
    uses_auxk: ClassVar[bool] = True
    """Whether the trainer adds the AuxK dead-latent loss."""
    synced_buffers: ClassVar[tuple[str, ...]] = ()
    """Running statistics that data-parallel training averages across ranks after every step."""

    def __init__(self, config: SAEConfig | None = None, /, **overrides) -> None:
        super().__init__()
        if config is None:
            config = self.config_cls(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        if not isinstance(config, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config
        d = config.d_model
        gen = torch.Generator().manual_seed(config.seed)
        self._init_dictionary(gen)
        self.register_buffer("norm_shift", torch.zeros(d))
        self.register_buffer("norm_scale", torch.ones(()))
        self.register_buffer("norm_fitted", torch.tensor(config.normalization == "none"))
        self.register_buffer("b_dec_initialized", torch.tensor(False))
        self._init_extra(gen)

    # ------------------------------------------------------------------ hooks for subclasses
    def _init_dictionary(self, gen: torch.Generator) -> None:
        """Create the linear SAE's parameters W_enc (d, F), b_enc (F,), W_dec (F, d), b_dec (d,).

        nn.Linear's default init of an F→d layer, then unit-norm atoms, encoder tied to the decoder's
        transpose at the start (docs/method.md §1.1). An architecture with other parameters overrides
        this (the shared code reads W_enc / W_dec / b_dec, which it may provide as properties).
        """
        d, F = self.config.d_model, self.config.dict_size
        bound = 1.0 / math.sqrt(F)
        w_dec = (torch.rand(F, d, generator=gen) * 2 - 1) * bound
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12) * self._init_decoder_norm()
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(F))
        self.b_dec = nn.Parameter(torch.zeros(d))

    def _init_decoder_norm(self) -> float:
        return 1.0

    def _init_extra(self, gen: torch.Generator) -> None:
        """Create architecture-specific parameters and buffers (called at the end of __init__)."""

    def encode_normalized(self, x_n: torch.Tensor) -> torch.Tensor:
        """Inference codes z: (B, F) from normalised inputs x_n: (B, d)."""
        raise NotImplementedError

    def loss(self, x_n: torch.Tensor, ctx: StepContext) -> LossOutput:
        """Training loss on a normalised batch x_n: (B, d)."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, out: LossOutput, ctx: StepContext) -> None:
        """Update non-gradient state (e.g. inference thresholds) after an optimiser step."""

    # ------------------------------------------------------------------ shared building blocks
    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def dict_size(self) -> int:
        return self.config.dict_size

    def centred_affine(self, x_n: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(x_n − b_dec) @ W + b: (B, F) for x_n: (B, d), W: (d, F), b: (F,).

        b_dec's gradient is routed through the bias as −Σ_b g_b Wᵀ, a vector-matrix product,
        instead of autograd's (B, F)×(F, d) matmul for the input gradient (the inputs need none).
        Values and gradients are unchanged; a training step saves one d×F matmul per layer.
        """
        if not self.pre_encoder_bias:
            return torch.addmm(b, x_n, W)
        b_dec_delta = self.b_dec - self.b_dec.detach()  # zero, but carries b_dec's gradient
        return torch.addmm(b - b_dec_delta @ W, x_n - self.b_dec.detach(), W)

    def pre_activations(self, x_n: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations W_encᵀ(x_n − b_dec) + b_enc: (B, F), before any nonlinearity."""
        return self.centred_affine(x_n, self.W_enc, self.b_enc)

    def decode_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """x̂_n = z @ W_dec + b_dec: (B, d) from codes z: (B, F)."""
        return z @ self.W_dec + self.b_dec

    @staticmethod
    def recon_loss(x_n: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """mean_b ‖x_n − x̂_n‖² (sum over d, mean over the batch), the reference's l2 term."""
        return (x_n - recon).pow(2).sum(dim=-1).mean()

    # ------------------------------------------------------------------ normalisation
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (…, d) → normalised (…, d)."""
        return (x - self.norm_shift) / self.norm_scale

    def denormalize(self, x_n: torch.Tensor) -> torch.Tensor:
        """Normalised (…, d) → raw (…, d)."""
        return x_n * self.norm_scale + self.norm_shift

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the normalisation from a raw sample x: (N, d).

        'scale' uses c = sqrt(E‖x‖²) (so E‖x_n‖² = 1); 'scale_shift' subtracts the mean first and
        computes c on the centred data (the official CLIP code computes c on the un-centred x).
        """
        x = x.detach().to(self.norm_shift.device, torch.float64)
        mode = self.config.normalization
        if mode == "none":
            self.norm_fitted.fill_(True)
            return
        shift = x.mean(dim=0) if mode == "scale_shift" else torch.zeros_like(x[0])
        scale = (x - shift).pow(2).sum(dim=-1).mean().sqrt()
        if not torch.isfinite(scale) or scale <= 0:
            raise ValueError(f"cannot fit normalisation: sample scale is {scale.item()} "
                             f"(all-zero or non-finite activations)")
        self.norm_shift.copy_(shift)
        self.norm_scale.copy_(scale)
        self.norm_fitted.fill_(True)

    @torch.no_grad()
    def init_b_dec(self, x_n: torch.Tensor) -> None:
        """b_dec ← geometric median of a normalised batch x_n: (B, d) (docs/method.md §1.1)."""
        self.b_dec.copy_(geometric_median(x_n.float()).to(self.b_dec.dtype))
        self.b_dec_initialized.fill_(True)

    # ------------------------------------------------------------------ decoder constraint
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """g_i ← g_i − (g_i·d̂_i) d̂_i for every atom, so the step does not change its norm to first order."""
        if not self.constrain_decoder or self.W_dec.grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g = self.W_dec.grad
        g.sub_((g * unit).sum(dim=1, keepdim=True) * unit)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise every atom to unit norm."""
        if self.constrain_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    # ------------------------------------------------------------------ public API (raw space)
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects x of shape (batch, {self.d_model}), "
                             f"got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference codes z: (B, F) for raw activations x: (B, d)."""
        self._check_input(x)
        return self.encode_normalized(self.normalize(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Raw reconstruction (B, d) from codes z: (B, F)."""
        return self.denormalize(self.decode_normalized(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw reconstruction x̂: (B, d) of raw x: (B, d) on the inference path."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sparsity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample number of active latents on the inference path: (B,) float."""
        return (self.encode(x) != 0).sum(dim=-1).float()
