"""Training configuration shared by every architecture (an architecture's own schedules are fields
of its model config, e.g. SoftSAE's α anneal and hard phase)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

# Fields of TrainConfigs saved before they were renamed or moved: old name -> new name (None: moved to
# the model config, see SAEConfig.migrate).
LEGACY_FIELDS: dict[str, str | None] = {
    "auxk_alpha": "auxk_weight", "alpha_anneal_steps": None, "hard_topk_steps": None,
}


def migrate_train_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved TrainConfig dict with its legacy field names renamed and its moved fields dropped."""
    out = {k: v for k, v in saved.items() if k not in LEGACY_FIELDS}
    for old, new in LEGACY_FIELDS.items():
        if new is not None and old in saved:
            out.setdefault(new, saved[old])
    return out


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
    sparsity_warmup_steps: int = 0
    """Linear warm-up of L1/L0 penalty coefficients (ReLU, JumpReLU)."""
    auxk_weight: float = 1 / 32
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
        """Check every field, so that a wrong value fails here and not as a silently wrong run."""
        def fail(name: str, want: str) -> None:
            raise ValueError(f"TrainConfig.{name} must be {want}, got {getattr(self, name)!r}")

        def is_int(v) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, "an int ≥ 1")
        for name in ("warmup_steps", "sparsity_warmup_steps", "dead_threshold", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, "an int ≥ 0")
        if not is_int(self.normalization_batches) or self.normalization_batches < 1:
            fail("normalization_batches", "an int ≥ 1")
        for name in ("k_anneal_steps", "decay_start"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 0):
                fail(name, "an int ≥ 0 or None")
        if self.k_aux is not None and (not is_int(self.k_aux) or self.k_aux < 1):
            fail("k_aux", "an int ≥ 1 or None")
        if self.lr is not None and (not is_num(self.lr) or self.lr < 0):  # 0: a frozen run (tests)
            fail("lr", "a finite number ≥ 0 or None")
        # grad_clip ≤ 0 would not clip but reverse (< 0: gradient ascent) or zero (= 0) every step.
        if self.grad_clip is not None and (not is_num(self.grad_clip) or self.grad_clip <= 0):
            fail("grad_clip", "a finite number > 0 or None")
        if not is_num(self.auxk_weight) or self.auxk_weight < 0:
            fail("auxk_weight", "a finite number ≥ 0")
        if not is_num(self.divergence_factor) or self.divergence_factor <= 0:
            fail("divergence_factor", "a finite number > 0")
        betas = self.adam_betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(is_num(b) and 0 <= b < 1 for b in betas)):
            fail("adam_betas", "two numbers in [0, 1)")
        self.adam_betas = tuple(float(b) for b in betas)
        for name in ("autocast_bf16", "resume"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")
        if self.progress is not None and not isinstance(self.progress, bool):
            fail("progress", "True, False or None")
        for name in ("device", "checkpoint_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                fail(name, "a string or None")
        if isinstance(self.checkpoint_dir, os.PathLike):
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
