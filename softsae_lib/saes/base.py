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
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from softsae_lib.metrics import l0_per_sample
from softsae_lib.ops.geometric_median import geometric_median
from softsae_lib.saes.auxk import auxk_loss
from softsae_lib.saes.schedules import annealed_k, warmup_scale

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
    encoder_init_scale: float = 1.0
    """The encoder starts as this multiple of the decoder's transpose (1.0: exactly tied)."""

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.dict_size < 1:
            raise ValueError(f"d_model and dict_size must be ≥ 1, got {self.d_model}, {self.dict_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        scale = self.encoder_init_scale
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"encoder_init_scale must be a finite number > 0, got {scale!r}")

    @classmethod
    def migrate(cls, fields: dict[str, Any], train_config: dict[str, Any] | None = None) -> dict[str, Any]:
        """Bring the fields of a config saved by an earlier version (and the TrainConfig it was trained
        with, where known) up to this class: fill fields added since, with the old behaviour."""
        return dict(fields)


def check_k(k: int, dict_size: int) -> None:
    """Top-k-style configs: the budget must lie in [1, dict_size]."""
    if not 1 <= k <= dict_size:
        raise ValueError(f"k must be in [1, dict_size={dict_size}], got {k}")


class TrainSchedule(Protocol):
    """The training-configuration values the model hooks read (``TrainConfig`` has them all)."""

    steps: int
    k_anneal_steps: int | None
    sparsity_warmup_steps: int
    auxk_weight: float
    k_aux: int | None


@dataclass
class StepContext:
    """What the trainer tells a model about the current optimisation step (made by
    :meth:`SAE.step_context`; an architecture with schedules of its own returns a subclass)."""

    step: int
    """Index of the step being taken (0-based)."""
    total_steps: int
    """Number of steps in the whole run."""
    k: float = 0
    """Current (annealed) sparsity target for top-k-style models (0 for models without a k)."""
    sparsity_scale: float = 1.0
    """Warm-up factor in [0, 1] for penalty coefficients (L1, L0)."""
    phase: str = "train"
    """Name of the training phase; anything but 'train' is a special phase (SoftSAE: 'hard')."""

    @property
    def special_phase(self) -> bool:
        """True outside the ordinary 'train' phase."""
        return self.phase != "train"

    def history_values(self) -> dict[str, float | bool | str]:
        """The schedule's columns of a training-history row: k, α (1.0 for models without one),
        hard (= special phase) and phase."""
        return {"k": self.k, "alpha": 1.0, "hard": self.special_phase, "phase": self.phase}


def firing(active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fired (F,) bool, n_fired scalar) of a (B, F) bool selection: the latents that fired anywhere
    in the batch and the number of (sample, latent) firings (count_nonzero avoids an int64 cast)."""
    return active.any(dim=0), torch.count_nonzero(active)


@dataclass
class LossOutput:
    """Result of :meth:`SAE.loss` on a normalised batch x_n: (B, d)."""

    loss: torch.Tensor
    """Scalar total loss of the architecture (its auxiliary loss is added by the trainer)."""
    recon: torch.Tensor
    """(B, d) reconstruction in normalised space."""
    pre_acts: torch.Tensor
    """(B, F) non-negative pre-selection activations (used by AuxK for dead latents)."""
    fired: torch.Tensor
    """(F,) bool: latents that fired anywhere in the batch (dead-latent tracking)."""
    n_fired: torch.Tensor
    """Scalar: number of (sample, latent) firings in the batch (the logged L0 is n_fired / B).
    :func:`firing` builds both from a (B, F) mask; a compact selection can give them directly."""
    terms: dict[str, float] = dataclasses.field(default_factory=dict)
    """Named loss components and diagnostics for the training history."""
    active: torch.Tensor | None = None
    """(B, F) bool selection, kept for the architecture's own :meth:`SAE.after_step` (the trainer
    reads only ``fired`` and ``n_fired``); None when the architecture does not need it."""
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Architecture-private intermediate values for its own hooks (e.g. Tree's per-layer AuxK)."""

    @classmethod
    def from_active(cls, loss: torch.Tensor, recon: torch.Tensor, pre_acts: torch.Tensor,
                    active: torch.Tensor, terms: dict[str, float] | None = None,
                    extras: dict[str, Any] | None = None) -> LossOutput:
        """The output of an architecture whose selection is the (B, F) bool mask ``active``
        (``fired`` and ``n_fired`` are computed from it, and it is kept for ``after_step``)."""
        return cls(loss, recon, pre_acts, *firing(active), terms if terms is not None else {},
                   active=active, extras=extras if extras is not None else {})


class SAE(nn.Module):
    """Base class: encode / decode / forward in raw activation space, shared constraints."""

    arch: ClassVar[str] = ""
    config_cls: ClassVar[type[SAEConfig]] = SAEConfig
    pre_encoder_bias: ClassVar[bool] = True
    """Subtract b_dec before encoding (TopK family, SoftSAE); GDM JumpReLU and April-update ReLU do not."""
    constrain_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm (parallel-gradient removal + renormalisation)."""
    uses_auxk: ClassVar[bool] = True
    """Whether the default :meth:`auxiliary_loss` is AuxK on the trainer's dead latents."""
    recipe_anneals_k: ClassVar[bool] = False
    """Whether the architecture's published recipe anneals k from d down to its k (SoftSAE's does);
    experiments may give the anneal to such architectures only."""
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
        transpose at the start, times ``config.encoder_init_scale`` (docs/method.md §1.1). An
        architecture with other parameters overrides this (the shared code reads W_enc / W_dec /
        b_dec, which it may provide as properties).
        """
        d, F = self.config.d_model, self.config.dict_size
        bound = 1.0 / math.sqrt(F)
        w_dec = (torch.rand(F, d, generator=gen) * 2 - 1) * bound
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12) * self._init_decoder_norm()
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t() * self.config.encoder_init_scale)
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

    # ------------------------------------------------------------------ hooks for the trainer
    def step_context(self, step: int, train: TrainSchedule) -> StepContext:
        """The schedule values of ``step``: k annealed from d to ``config.k`` over
        ``train.k_anneal_steps`` (models with a k; 0 otherwise) and the penalty warm-up.
        Architectures with schedules of their own extend the result."""
        k_target = getattr(self.config, "k", None)
        return StepContext(
            step=step, total_steps=train.steps,
            k=annealed_k(step, self.d_model, k_target, train.k_anneal_steps) if k_target else 0,
            sparsity_scale=warmup_scale(step, train.sparsity_warmup_steps),
        )

    def needs_dead_mask(self, train: TrainSchedule) -> bool:
        """Whether :meth:`auxiliary_loss` reads the trainer's dead mask (the trainer skips its (F,)
        comparison otherwise)."""
        return self.uses_auxk and train.auxk_weight > 0

    def auxiliary_loss(self, out: LossOutput, x_n: torch.Tensor, ctx: StepContext,
                       dead: torch.Tensor | None,
                       train: TrainSchedule) -> tuple[torch.Tensor, dict[str, float]] | None:
        """The weighted auxiliary loss term the trainer adds to ``out.loss``, with its history terms.

        Default (``uses_auxk``): ``train.auxk_weight`` · AuxK on the dead latents, when any is dead.
        Args: out of :meth:`loss` on x_n: (B, d); dead: (F,) bool, or None before any latent can be
        dead (or when :meth:`needs_dead_mask` is False). Returns None for no auxiliary term.
        """
        if not self.uses_auxk or dead is None or not bool(dead.any()):
            return None
        k_aux = train.k_aux if train.k_aux is not None else self.d_model // 2
        aux = auxk_loss(out.pre_acts, x_n - out.recon, dead, self.W_dec, k_aux)
        return train.auxk_weight * aux, {"auxk": aux.item()}

    @classmethod
    def recipe_config(cls, experiment: Any) -> dict[str, Any]:
        """Config fields of the architecture's own training recipe in an experiment (an
        ``SAEExperiment``-like object); merged under the experiment's explicit config."""
        return {}

    # ------------------------------------------------------------------ per-sample statistics
    @torch.no_grad()
    def per_sample_stats(self, x: torch.Tensor, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample sparsity for evaluation: {'l0': (B,) nonzero codes} for raw x: (B, d) and its
        inference codes z: (B, F). Architectures add their own (B,) fields (SoftSAE: 'k_hat')."""
        return {"l0": l0_per_sample(z)}

    def per_sample_summary(self, per_sample: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Evaluation metrics of the architecture's own per-sample fields (all samples, (N,) each)."""
        return {}

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
