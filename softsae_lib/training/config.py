"""Training configuration shared by every architecture."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Optimiser, schedules, logging and checkpointing for :func:`train_sae`."""

    steps: int = 1000
    """Number of optimiser steps."""
    batch_size: int = 4096
    """Samples per step when the data is an array (iterables supply their own batches)."""
    lr: float | None = None
    """Adam learning rate; None means 2e-4/sqrt(F/2^14) (dictionary_learning's default)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (β1, β2); the JumpReLU paper uses (0, 0.999)."""
    warmup_steps: int = 1000
    """Linear learning-rate warm-up from 0."""
    decay_start: int | None = None
    """Step where the learning rate starts its linear decay to 0 at the end (None: no decay)."""
    grad_clip: float | None = 1.0
    """Maximum total gradient norm (None disables clipping)."""
    k_anneal_steps: int | None = None
    """Anneal the sparsity target k from d_model down to the model's k over this many steps."""
    alpha_anneal_steps: int | None = None
    """Anneal SoftSAE's α linearly from 1 to the model's α over this many steps."""
    hard_topk_steps: int | None = None
    """SoftSAE: train the last N steps with hard top-⌊k̂⌋ and a frozen k-estimator."""
    sparsity_warmup_steps: int = 0
    """Linear warm-up of L1/L0 penalty coefficients (ReLU, JumpReLU)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss (architectures that use it)."""
    k_aux: int | None = None
    """Dead latents per sample in AuxK; None means d_model // 2."""
    dead_threshold: int = 10_000_000
    """A latent is dead after this many consecutive training samples without firing."""
    normalization_batches: int = 100
    """Batches used to fit the model's dataset normalisation when it is not fitted yet."""
    seed: int = 0
    """Seed of the data order."""
    device: str | None = None
    """Device to train on; None keeps the model's device."""
    autocast_bf16: bool = False
    """bf16 autocast on CUDA (ignored on CPU); k̂ is always kept in float32."""
    log_every: int = 10
    """Record a history row every N steps (and at the last step)."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint (None: no checkpoints)."""
    checkpoint_every: int = 500
    """Write the checkpoint every N steps and at the end."""
    resume: bool = False
    """Continue from checkpoint_dir's checkpoint if there is one."""
    divergence_factor: float = 100.0
    """Stop with an error when the reconstruction loss exceeds this multiple of the batch variance."""
    progress: bool | None = None
    """tqdm progress bar: True, False, or None for 'only when stderr is a terminal'."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be ≥ 1, got {self.steps}, {self.batch_size}")
        for name in ("k_anneal_steps", "alpha_anneal_steps", "hard_topk_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be ≥ 0 or None, got {value}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be ≥ 1")
        self.adam_betas = tuple(self.adam_betas)
