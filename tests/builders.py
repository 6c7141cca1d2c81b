"""Builders shared by the tests: seeded data and a training-step context.

Importable from every test folder as ``from builders import ...`` (``tests/`` is on the path through
its ``conftest.py``).
"""

from __future__ import annotations

import torch

from softsae_lib.saes.soft import HARD_PHASE, SoftStepContext


def gaussian(n: int, d: int, seed: int = 0, scale: float = 1.0, shift: float = 0.0,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, d) i.i.d. N(shift, scale²) rows from a private generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) * scale + shift


def step_context(k: float = 4, alpha: float = 1e-2, hard: bool = False, step: int = 0, total: int = 100,
                 sparsity_scale: float = 1.0) -> SoftStepContext:
    """The per-step values the trainer hands to ``SAE.loss`` (target k, LapSum α, hard phase, …);
    SoftSAE's context, which every architecture accepts."""
    return SoftStepContext(step=step, total_steps=total, k=k, sparsity_scale=sparsity_scale,
                           phase=HARD_PHASE if hard else "train", alpha=alpha)
